"""Products as merchants send them, and the Elasticsearch documents made from them.

One document per product image. Its ``_id`` is derived from merchant, product and image hash, so
re-sending the same product overwrites the same document instead of adding a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"


class Product(BaseModel):
    """A product and its image(s): the payload of an embedding job."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    product_id: str = Field(pattern=ID_PATTERN)
    merchant_id: str = Field(pattern=ID_PATTERN)
    title: str = Field(min_length=1, max_length=500)
    description: str = Field("", max_length=10_000)
    category: str | None = Field(None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=100)
    price: float | None = Field(None, ge=0)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    in_stock: bool = True
    images: list[str] = Field(
        min_length=1, max_length=20, description="Image URLs (http/https) or local paths."
    )

    @model_validator(mode="before")
    @classmethod
    def _single_image(cls, data: Any) -> Any:
        """Accept ``image`` (one URL or path) as a shorthand for ``images``."""
        if isinstance(data, dict) and "image" in data and "images" not in data:
            data = {**data, "images": [data["image"]]}
            del data["image"]
        return data

    @field_validator("tags")
    @classmethod
    def _normalise_tags(cls, tags: list[str]) -> list[str]:
        """Lower-case, trimmed, without duplicates: tags are filtered and aggregated exactly."""
        seen: dict[str, None] = {}
        for tag in tags:
            clean = re.sub(r"\s+", " ", tag.strip().lower())
            if clean:
                seen.setdefault(clean, None)
        return list(seen)

    @field_validator("category")
    @classmethod
    def _normalise_category(cls, category: str | None) -> str | None:
        return category.strip().lower() or None if category else None

    @property
    def content_hash(self) -> str:
        """SHA-256 of the product as sent (metadata and image references, canonical JSON).

        Stored with every document so that a catalogue import can skip unchanged products.
        Uploaded and imported local images are referenced by their content-store path, which
        contains their SHA-256, so a changed image changes this hash; for an image URL only the
        URL is covered (the bytes are fetched by the worker, not by the import).
        """
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def document_id(merchant_id: str, product_id: str, image_sha256: str) -> str:
    return f"{merchant_id}:{product_id}:{image_sha256[:16]}"


def build_document(
    product: Product,
    *,
    image_index: int,
    image_sha256: str,
    width: int,
    height: int,
    vector: np.ndarray,
    model_id: str,
    quality_flags: list[str] | None = None,
    auto_tags: list[str] | None = None,
    indexed_at: datetime | None = None,
    auto_category: str | None = None,
    auto_category_score: float | None = None,
    auto_tag_scores: dict[str, float] | None = None,
    image_text: str | None = None,
    phash: str | None = None,
) -> dict[str, Any]:
    """The ``_source`` of one product-image document."""
    enrichment = {  # from pipeline.ingest.enrich; merchant fields are never overwritten
        "auto_category": auto_category,
        "auto_category_score": auto_category_score,
        "auto_tag_scores": [{"tag": t, "score": s} for t, s in (auto_tag_scores or {}).items()],
        "image_text": image_text,
        "phash": phash,
    }
    return {
        "product_id": product.product_id,
        "merchant_id": product.merchant_id,
        "title": product.title,
        "description": product.description,
        "category": product.category,
        "tags": product.tags,
        "auto_tags": auto_tags or [],
        "quality_flags": quality_flags or [],
        "price": product.price,
        "currency": product.currency,
        "in_stock": product.in_stock,
        "image_url": product.images[image_index],
        "image_index": image_index,
        "image_sha256": image_sha256,
        "width": width,
        "height": height,
        "image_vector": [float(x) for x in np.asarray(vector, dtype=np.float32)],
        "model_id": model_id,
        "content_hash": product.content_hash,
        "indexed_at": (indexed_at or datetime.now(UTC)).isoformat(),
        **enrichment,
    }
