"""What the merchant upload API does, without HTTP: turn a merchant's metadata and uploaded
image bytes into a validated ``Product`` whose images live in the content store, tell whose job
a job is, and read back what is indexed for a product.

Routes (``pipeline.api.products``) only parse requests, call these and translate the errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError
from pydantic import ValidationError

from pipeline.documents import ImageFields, IndexingFields, Product, ProductFields
from pipeline.es.mappings import product_documents_query
from pipeline.images import ImageLimits, decode_image, is_http_url
from pipeline.storage import ImageStore, StoredImage

# Placeholder image references while the metadata is validated before any file is stored.
_PENDING = "pending-upload-{}"


class MetadataError(ValueError):
    """Metadata that cannot become a product; ``errors`` as ``[{"loc", "msg", "type"}]``."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class ForeignMerchant(PermissionError):
    """Metadata names another merchant than the API key's."""


def _error(loc: tuple, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", "metadata", *loc], "msg": msg, "type": kind}


def _url_images(metadata: dict[str, Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Image URLs given in the metadata (``image_url``, ``image`` or ``images``) and errors for
    anything that is not an http(s) URL: the API never reads paths on the server."""
    given = [k for k in ("image_url", "image", "images") if k in metadata]
    if len(given) > 1:
        return [], [_error((given[1],), f"give only one of {', '.join(given)}")]
    if not given:
        return [], []
    field = given[0]
    value = metadata[field]
    urls = value if isinstance(value, list) else [value]
    errors = []
    for i, url in enumerate(urls):
        if not (isinstance(url, str) and is_http_url(url)):
            loc = (field, i) if isinstance(value, list) else (field,)
            errors.append(
                _error(loc, "must be an http(s) URL; upload image files as multipart 'image' parts")
            )
    return urls, errors


def validate_metadata(
    metadata: Any, *, merchant_id: str, product_id: str | None = None, files: int = 0
) -> Product:
    """Validate upload metadata for ``merchant_id`` with ``files`` uploaded image files.

    ``product_id`` comes from the URL for PUT (the metadata may repeat it, not contradict it).
    The returned product's first ``files`` images are placeholders until ``attach_images``.
    Raises ``MetadataError`` (422) or ``ForeignMerchant`` (403).
    """
    if not isinstance(metadata, dict):
        raise MetadataError([_error((), "metadata must be a JSON object", "dict_type")])
    payload = dict(metadata)
    if payload.get("merchant_id", merchant_id) != merchant_id:
        raise ForeignMerchant(
            f"this API key belongs to merchant {merchant_id!r}, not {payload['merchant_id']!r}"
        )
    payload["merchant_id"] = merchant_id
    errors: list[dict[str, Any]] = []
    if product_id is not None:
        if payload.get("product_id", product_id) != product_id:
            errors.append(_error(("product_id",), "does not match the product id in the URL"))
        payload["product_id"] = product_id
    urls, url_errors = _url_images(payload)
    errors += url_errors
    for key in ("image_url", "image", "images"):
        payload.pop(key, None)
    urls = [u for u in urls if isinstance(u, str) and is_http_url(u)]
    payload["images"] = [_PENDING.format(i) for i in range(files)] + urls
    if not payload["images"] and not url_errors:
        errors.append(
            _error(("image",), "an image is required: a multipart 'image' file or 'image_url'")
        )
    images_reported = bool(url_errors) or not payload["images"]
    try:
        product = Product.model_validate(payload)
    except ValidationError as exc:
        errors += [
            _error(tuple(e["loc"]), e["msg"], e["type"])
            for e in exc.errors()
            if not (images_reported and e["loc"] and e["loc"][0] == "images")
        ]
        raise MetadataError(errors) from exc
    if errors:
        raise MetadataError(errors)
    return product


def store_upload(store: ImageStore, data: bytes, limits: ImageLimits) -> StoredImage:
    """Check that the bytes decode as a supported image (raises ``ImageError``), then store them.

    The content type is decided by decoding, never by file name or declared type.
    """
    decode_image(data, limits)
    return store.put(data)


def attach_images(product: Product, stored: list[StoredImage]) -> Product:
    """Replace the placeholders of ``validate_metadata`` by the stored files' paths."""
    urls = product.images[len(stored) :]
    return product.model_copy(update={"images": [str(s.path) for s in stored] + urls})


@dataclass(frozen=True)
class JobOwnership:
    known: bool
    merchants: list[str]

    def belongs_to(self, merchant_id: str) -> bool:
        return self.known and self.merchants == [merchant_id]


def job_ownership(
    description: dict[str, Any] | None, results: list[dict[str, Any]]
) -> JobOwnership:
    """Whose job it is, from its stored description and (once finished) its results. A job
    belongs to a merchant only if every product in it is that merchant's."""
    if description is None:
        return JobOwnership(False, [])
    merchants = set(description.get("merchants", []))
    merchants |= {r["merchant_id"] for r in results if isinstance(r, dict) and "merchant_id" in r}
    return JobOwnership(True, sorted(merchants))


def public_job_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-product job results as the API shows them (no server paths)."""
    keep = ("product_id", "status", "reason", "message", "documents", "deleted")
    return [{k: r[k] for k in keep if k in r} for r in results]


def indexed_product(
    es: Elasticsearch, alias: str, merchant_id: str, product_id: str
) -> dict[str, Any] | None:
    """What is indexed for a product: its metadata and, per image, hash, size, quality flags,
    auto tags and model; None if nothing is indexed."""
    try:
        response = es.search(
            index=alias,
            query=product_documents_query(merchant_id, product_id),
            sort=[{"image_index": "asc"}],
            size=100,
            source_excludes=["image_vector"],
        )
    except NotFoundError:
        return None
    hits = [h["_source"] for h in response["hits"]["hits"]]
    if not hits:
        return None
    return product_view(hits)


def product_view(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """One product from its image documents' ``_source``s (sorted by image index): the product
    and indexing fields once, the image and indexing fields per image. ``image_url`` is as
    stored (a content-store path for uploaded images; the API turns it into its own URL)."""
    per_image = (*ImageFields.model_fields, *IndexingFields.model_fields)
    first = sources[0]
    view = {f: first.get(f) for f in (*ProductFields.model_fields, *IndexingFields.model_fields)}
    view["auto_tags"] = sorted({t for s in sources for t in s.get("auto_tags", [])})
    view["quality_flags"] = sorted({f for s in sources for f in s.get("quality_flags", [])})
    view["images"] = [{f: s.get(f) for f in per_image} for s in sources]
    return view
