"""Reading merchants' catalogue files (CSV, JSON, JSON Lines, Parquet) into validated products.

Rows that cannot become a product are rejected with their row number and reason; the rest go on.
Image paths relative to the catalogue file are resolved against its folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from pipeline.documents import Product

REQUIRED_COLUMNS = ("product_id", "merchant_id", "title")
LIST_SEPARATOR = "|"


class CatalogueError(ValueError):
    """The file as a whole cannot be read (format, missing columns)."""


@dataclass(frozen=True)
class RejectedRow:
    row: int  # 1-based data row (CSV: the line number is row + 1, after the header)
    product_id: str
    reason: str


@dataclass
class Catalogue:
    products: list[Product] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


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
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _as_list(value: Any) -> list[str]:
    if _missing(value):
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(LIST_SEPARATOR) if part.strip()]
    return [str(v) for v in value]


def _resolve_image(image: str, base: Path) -> str:
    if image.startswith(("http://", "https://")) or Path(image).is_absolute():
        return image
    return str((base / image).resolve())


def _row_to_payload(row: dict[str, Any], base: Path) -> dict[str, Any]:
    payload = {k: v for k, v in row.items() if not _missing(v)}
    images = _as_list(payload.pop("images", None)) or _as_list(payload.pop("image", None))
    payload.pop("image", None)
    payload["images"] = [_resolve_image(image, base) for image in images]
    if "tags" in payload:
        payload["tags"] = _as_list(payload["tags"])
    if "in_stock" in payload and isinstance(payload["in_stock"], str):
        payload["in_stock"] = payload["in_stock"].strip().lower() in ("true", "1", "yes", "y")
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
    catalogue = Catalogue()
    seen: set[tuple[str, str]] = set()
    base = path.resolve().parent
    for row_number, row in enumerate(frame.to_dict(orient="records"), start=1):
        payload = _row_to_payload(row, base)
        product_id = str(payload.get("product_id", ""))
        try:
            product = Product.model_validate(payload)
        except ValidationError as exc:
            catalogue.rejected.append(RejectedRow(row_number, product_id, _first_error(exc)))
            continue
        key = (product.merchant_id, product.product_id)
        if key in seen:
            catalogue.rejected.append(RejectedRow(row_number, product_id, "duplicate product_id"))
            continue
        seen.add(key)
        catalogue.products.append(product)
    return catalogue
