"""Products as merchants send them, and the Elasticsearch documents made from them.

One document per product image. Its ``_id`` is derived from merchant, product and image hash, so
re-sending the same product overwrites the same document instead of adding a duplicate, and the
derivation is injective (``stable_id``), so no two merchants' or products' ids can meet however
their ids are spelt.

``ProductDocument`` is the one declaration of a document's fields. Its parts say where a field
is shown: search hits show ``ProductFields`` and ``ImageFields``; a product view shows
``ProductFields`` and ``IndexingFields`` once and ``ImageFields`` and ``IndexingFields`` per
image. ``es_mappings/products_index_template.json`` gives each field its Elasticsearch type;
``tests/unit/test_document_schema.py`` holds the two together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"

# What the index can hold (es_mappings/products_index_template.json), checked here so that an
# upload the index would refuse is a 422 at the API, not a 202 and then a failed job.
#: ``price`` is a scaled_float x100 stored as a long; below 1e13 cents stay exact in a double.
MAX_PRICE = 1e13
#: ``tags``/``category`` are keywords without ignore_above: one term may not exceed 32,766
#: bytes in Lucene; far below that, a tag is a short label.
MAX_TAG_CHARS = 200
#: ``image_url`` is a keyword with ignore_above 2048.
MAX_IMAGE_REF_CHARS = 2048
Tag = Annotated[str, Field(max_length=MAX_TAG_CHARS)]
ImageRef = Annotated[str, Field(max_length=MAX_IMAGE_REF_CHARS)]


class Product(BaseModel):
    """A product and its image(s): the payload of an embedding job."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    product_id: str = Field(pattern=ID_PATTERN)
    merchant_id: str = Field(pattern=ID_PATTERN)
    title: str = Field(min_length=1, max_length=500)
    description: str = Field("", max_length=10_000)
    category: str | None = Field(None, max_length=MAX_TAG_CHARS)
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    price: float | None = Field(None, ge=0, le=MAX_PRICE)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    in_stock: bool = True
    images: list[ImageRef] = Field(
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


def stable_id(*parts: str) -> str:
    """A deterministic id for a tuple of strings: SHA-256 of the length-prefixed parts.

    Joining with a separator is not injective when parts may contain it (merchant ``shop-d:a``
    with product ``b:c`` vs merchant ``shop-d`` with product ``a:b:c``); length prefixes are."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(data))
        digest.update(data)
    return digest.hexdigest()


def document_id(merchant_id: str, product_id: str, image_sha256: str) -> str:
    """The ``_id`` of a product-image document."""
    return stable_id("product-image", merchant_id, product_id, image_sha256)


class ProductFields(BaseModel):
    """What the merchant says about the product (from ``Product``): the same on each of its
    image documents."""

    product_id: str
    merchant_id: str
    title: str
    description: str
    category: str | None
    tags: list[str]
    price: float | None
    currency: str | None
    in_stock: bool


class TagScore(BaseModel):
    """A zero-shot tag (``facet:label``) and its probability."""

    tag: str
    score: float


class ImageFields(BaseModel):
    """The image a document is about, and what the processors found in it."""

    image_url: str
    image_index: int
    image_sha256: str
    width: int
    height: int
    quality_flags: list[str]
    auto_tags: list[str]
    # from the enrichment processors (pipeline.ingest.enrich); empty when they did not run
    auto_category: str | None = None
    auto_category_score: float | None = None
    auto_tag_scores: list[TagScore] = Field(default_factory=list)
    image_text: str | None = None
    phash: str | None = None
    #: Near-duplicate group (pipeline.ingest.duplicates): the document id of the group's first
    #: member; documents of the same item, at one merchant or several, share it.
    duplicate_group: str | None = None
    #: Visual cluster (``vitrine cluster``; the nearest stored centroid at ingest) and its
    #: taxonomy name.
    visual_cluster: str | None = None
    visual_cluster_name: str | None = None


class MatchingFields(BaseModel):
    """What only near-duplicate matching reads: left out of search hits and product views (the
    fingerprint is 9.3 KB of base64, more than the rest of a document's ``_source``)."""

    #: What near-duplicate matching compares (``pipeline.images.Fingerprint``, base64).
    fingerprint: str | None = None
    #: The fingerprint's whole-image hash as band keys (``Fingerprint.bands``), for look-ups.
    phash_bands: list[str] = Field(default_factory=list)


class IndexingFields(BaseModel):
    """How and when the product was indexed: the same on each image document of one write."""

    model_id: str
    content_hash: str
    indexed_at: datetime

    @field_serializer("indexed_at")
    def _iso(self, value: datetime) -> str:
        return value.isoformat()


class ProductDocument(IndexingFields, MatchingFields, ImageFields, ProductFields):
    """The ``_source`` of one product-image document (fields in the order product, image,
    matching, indexing: pydantic takes the last base's fields first)."""

    model_config = ConfigDict(extra="forbid")

    image_vector: list[float]


#: What search hits leave out of a document's ``_source`` besides the vector.
MATCHING_FIELDS = tuple(MatchingFields.model_fields)

#: What a search hit shows of its document, in this order.
HIT_FIELDS = (*ProductFields.model_fields, *ImageFields.model_fields)


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
    extra: Mapping[str, Any] | None = None,
    auto_category: str | None = None,
    auto_category_score: float | None = None,
    auto_tag_scores: Mapping[str, float] | None = None,
    image_text: str | None = None,
    phash: str | None = None,
    fingerprint: str | None = None,
    phash_bands: list[str] | None = None,
    visual_cluster: str | None = None,
    visual_cluster_name: str | None = None,
    duplicate_group: str | None = None,
) -> dict[str, Any]:
    """The ``_source`` of one product-image document (validated against ``ProductDocument``);
    ``extra`` (fields written by plugin processors) never overrides Vitrine's own fields."""
    document = ProductDocument(
        **product.model_dump(include=set(ProductFields.model_fields)),
        image_url=product.images[image_index],
        image_index=image_index,
        image_sha256=image_sha256,
        width=width,
        height=height,
        quality_flags=quality_flags or [],
        auto_tags=auto_tags or [],
        auto_category=auto_category,
        auto_category_score=auto_category_score,
        auto_tag_scores=[TagScore(tag=t, score=v) for t, v in (auto_tag_scores or {}).items()],
        image_text=image_text,
        phash=phash,
        fingerprint=fingerprint,
        phash_bands=phash_bands or [],
        visual_cluster=visual_cluster,
        visual_cluster_name=visual_cluster_name,
        duplicate_group=duplicate_group,
        model_id=model_id,
        content_hash=product.content_hash,
        indexed_at=indexed_at or datetime.now(UTC),
        image_vector=_float32_values(vector),
    )
    return {**(extra or {}), **document.model_dump(mode="json")}


def _float32_values(vector: np.ndarray) -> list[float]:
    """The vector's float32 values as the Python floats nearest their shortest decimal forms,
    which JSON writes as 8-9 digits instead of a float64's 17: the same float32 values reach
    Elasticsearch in 41% less ``_source``, which every hit, re-embed and Kibana view parses
    (5,000 unit vectors: 35.0 against 53.9 MB on disk, a filtered search fetching 10 hits
    1.48 against 1.92 ms p50, measured)."""
    return orjson.loads(
        orjson.dumps(np.asarray(vector, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY)
    )  # type: ignore[no-any-return]
