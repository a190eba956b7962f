"""Reading merchants' catalogue files (CSV, JSON, JSON Lines, Parquet) into validated products.

Rows that cannot become a product are rejected with their row number and reason; the rest go on.
Image paths relative to the catalogue file are resolved against its folder. Columns that are not
product fields are ignored (and listed), so a merchant's export with extra columns still imports.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from pipeline.documents import Product
from pipeline.images import is_http_url

REQUIRED_COLUMNS = ("product_id", "merchant_id", "title")
LIST_SEPARATOR = "|"


class CatalogueError(ValueError):
    """The file as a whole cannot be read (format, missing columns)."""


# Where a row was turned away: read and validated, image file read at import, or the worker.
VALIDATION = "validation"
IMAGE = "image"
INDEXING = "indexing"


@dataclass(frozen=True)
class RejectedRow:
    row: int  # 1-based data row (CSV: the line number is row + 1, after the header)
    product_id: str
    reason: str
    merchant_id: str = ""
    stage: str = VALIDATION


@dataclass
class Catalogue:
    products: list[Product] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (merchant, product) -> row
    total_rows: int = 0
    ignored_columns: list[str] = field(default_factory=list)

    def row_of(self, product: Product) -> int:
        return self.rows[(product.merchant_id, product.product_id)]


REPORT_COLUMNS = ("row", "merchant_id", "product_id", "stage", "reason")


def write_reject_report(path: Path, rejected: list[RejectedRow]) -> Path:
    """Write rejected rows as CSV (sorted by row), one line per row; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(REPORT_COLUMNS)
        for r in sorted(rejected, key=lambda r: r.row):
            writer.writerow([r.row, r.merchant_id, r.product_id, r.stage, r.reason])
    return path


def reason_code(reason: str) -> str:
    """The short part of a reason, for summaries: ``"price: Input should be..."`` -> ``"price"``."""
    return reason.split(":", 1)[0].strip() or reason


def summarise_rejections(rejected: list[RejectedRow]) -> dict[str, int]:
    """Counts per ``stage/reason code``, most frequent first."""
    counts = Counter(f"{r.stage}/{reason_code(r.reason)}" for r in rejected)
    return dict(counts.most_common())


def _read_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".json":
            return pd.read_json(path, dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError, ImportError) as exc:
        raise CatalogueError(f"cannot read {path}: {exc}") from exc
    raise CatalogueError(f"unsupported catalogue format {suffix!r} (csv, json, jsonl, parquet)")


def _missing(value: Any) -> bool:
    if isinstance(value, list | tuple | np.ndarray):  # list columns (JSON, Parquet)
        return False
    if isinstance(value, str):
        return value == ""
    return value is None or bool(pd.isna(value))


def _plain(value: Any) -> Any:
    """NumPy scalars (Parquet columns) as plain Python values, which pydantic validates."""
    return value.item() if isinstance(value, np.generic) else value


def _as_list(value: Any) -> list[str]:
    if _missing(value):
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(LIST_SEPARATOR) if part.strip()]
    return [str(v) for v in value]


def _resolve_image(image: str, base: Path) -> str:
    if is_http_url(image) or Path(image).is_absolute():
        return image
    return str((base / image).resolve())


def _row_to_payload(row: dict[str, Any], base: Path) -> dict[str, Any]:
    payload = {k: _plain(v) for k, v in row.items() if not _missing(v)}
    images = _as_list(payload.pop("images", None)) or _as_list(payload.pop("image", None))
    payload.pop("image", None)
    payload["images"] = [_resolve_image(image, base) for image in images]
    if "tags" in payload:
        payload["tags"] = _as_list(payload["tags"])
    # in_stock and price stay strings from CSV: pydantic parses "false"/"no"/"0" and "10.5" and
    # rejects anything else with a clear message, instead of guessing.
    for key in ("product_id", "merchant_id"):
        if key in payload:
            payload[key] = str(payload[key])
    return payload


def _first_error(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg']}" for err in exc.errors()
    )


def read_catalogue(path: Path) -> Catalogue:
    """Read and validate a catalogue file; duplicate product ids keep their first row."""
    frame = _read_frame(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if "image" not in frame.columns and "images" not in frame.columns:
        missing.append("image (or images)")
    if missing:
        raise CatalogueError(f"{path.name}: missing column(s): {', '.join(missing)}")
    known = set(Product.model_fields) | {"image"}
    ignored = [str(c) for c in frame.columns if c not in known]
    catalogue = Catalogue(total_rows=len(frame), ignored_columns=ignored)
    frame = frame.drop(columns=ignored)
    base = path.resolve().parent
    for row_number, row in enumerate(frame.to_dict(orient="records"), start=1):
        payload = _row_to_payload(row, base)
        product_id = str(payload.get("product_id", ""))
        merchant_id = str(payload.get("merchant_id", ""))
        try:
            product = Product.model_validate(payload)
        except ValidationError as exc:
            catalogue.rejected.append(
                RejectedRow(row_number, product_id, _first_error(exc), merchant_id)
            )
            continue
        key = (product.merchant_id, product.product_id)
        if key in catalogue.rows:
            reason = f"duplicate product_id: first seen in row {catalogue.rows[key]}"
            catalogue.rejected.append(RejectedRow(row_number, product_id, reason, merchant_id))
            continue
        catalogue.rows[key] = row_number
        catalogue.products.append(product)
    return catalogue
