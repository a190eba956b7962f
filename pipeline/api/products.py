"""Merchant upload API: products in (multipart image + JSON metadata, or JSON with image URLs),
embedding jobs out, job status and what is indexed back, and the stored original images.

Every route acts for the merchant of the API key. Product ids are that merchant's: another
merchant's product with the same id is a different product, which this key cannot reach.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pipeline.api.auth import Merchant, Writer
from pipeline.api.body import MAX_FIELD_BYTES, invalid, parse_json, read_body
from pipeline.api.deps import Services, State
from pipeline.api.errors import Problem, image_problem
from pipeline.api.public import image_path, public_image_url, without_server_paths
from pipeline.documents import ID_PATTERN, MAX_IMAGE_REF_CHARS, Product
from pipeline.images import ImageError, ImageLimits
from pipeline.jobs import enqueue, enqueue_delete, job_description, job_status
from pipeline.merchants import uploads
from pipeline.merchants.apikeys import ApiKey
from pipeline.storage import SHA256_PATTERN

router = APIRouter(tags=["merchant upload API"])

MAX_FILES = 20
ProductId = Annotated[str, Path(pattern=ID_PATTERN, description="The merchant's product id.")]
JobId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$", description="The job id of a 202 answer.")
]


def _metadata_schema() -> dict[str, Any]:
    """The JSON upload body's schema, from the ``Product`` model (so its limits are documented
    and fuzzed): images are http(s) URLs, given as ``image_url`` or ``images``."""
    schema = Product.model_json_schema()
    schema.pop("title", None)
    properties = schema["properties"]
    url = {"type": "string", "format": "uri", "maxLength": MAX_IMAGE_REF_CHARS}
    properties["images"] = {**properties["images"], "items": url, "description": "Image URLs."}
    properties["image_url"] = {**url, "description": "One image URL (instead of images)."}
    schema["required"] = ["title"]
    return schema


_METADATA_EXAMPLE = {
    "product_id": "sku-123",
    "title": "Red canvas sneaker",
    "description": "Low-top, rubber sole.",
    "category": "shoes",
    "tags": ["red", "sale"],
    "price": 79.0,
    "currency": "EUR",
    "in_stock": True,
}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "description": "The product as a JSON object (fields as in the "
                            "application/json body); image URLs may be added with image_url.",
                            "example": json.dumps(_METADATA_EXAMPLE),
                        },
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Image file(s): JPEG, PNG, WebP, GIF, BMP or TIFF, "
                            "recognised by decoding, not by name or declared type.",
                        },
                    },
                }
            },
            "application/json": {
                "schema": {
                    **_metadata_schema(),
                    "description": "Product metadata with image URLs: image_url (one) or "
                    "images (a list). merchant_id may be omitted (it is the key's); product_id "
                    "too on PUT (it is the URL's).",
                    "example": {**_METADATA_EXAMPLE, "image_url": "https://cdn.example/sku.jpg"},
                }
            },
        },
    }
}


class StoredImageOut(BaseModel):
    sha256: str
    url: str = Field(description="Where the stored original can be fetched.")
    stored: bool = Field(description="False when the same bytes were already stored (free).")


class JobAccepted(BaseModel):
    job_id: str
    status_url: str
    merchant_id: str
    product_id: str
    images: list[StoredImageOut] = Field(default_factory=list)
    image_urls: list[str] = Field(default_factory=list)


class JobView(BaseModel):
    job_id: str
    state: str = Field(description="queued | running | retrying | done | failed | partially_failed")
    products: list[str] = Field(description="Product ids in the job.")
    results: list[dict[str, Any]] = Field(
        default_factory=list, description="Per product: status, reason, message, documents."
    )
    error: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    429: {"description": "Upload rate limit reached (see Retry-After)"},
    503: {"description": "Elasticsearch or Redis unavailable"},
}


async def _read_request(request: Request, limit: int) -> tuple[Any, list[bytes]]:
    """``(metadata, image files)`` from a multipart or JSON request."""
    body = await read_body(
        request, max_bytes=limit, max_json_bytes=MAX_FIELD_BYTES, max_files=MAX_FILES + 1
    )
    if body.is_json:
        return body.json, []
    # metadata may come as a file part too (curl -F metadata=@product.json)
    raw = body.fields.get("metadata") or next(iter(body.files.get("metadata", [])), None)
    if raw is None:
        raise invalid(["body", "metadata"], "Field required", "missing")
    if len(raw) > MAX_FIELD_BYTES:
        raise invalid(["body", "metadata"], f"over {MAX_FIELD_BYTES:,} bytes")
    if "image" in body.fields:
        raise invalid(["body", "image"], "must be a file part, not a text field")
    return parse_json(raw, ["body", "metadata"]), body.files.get("image", [])


async def _upsert(
    request: Request,
    response: Response,
    key: ApiKey,
    state: State,
    services: Services,
    product_id: str | None,
) -> JobAccepted:
    settings = state.settings
    metadata, files = await _read_request(request, settings.upload_max_bytes)
    try:
        product = uploads.validate_metadata(
            metadata, merchant_id=key.merchant_id, product_id=product_id, files=len(files)
        )
    except uploads.ForeignMerchant as exc:
        raise Problem("foreign_merchant", str(exc)) from exc
    except uploads.MetadataError as exc:
        raise RequestValidationError(exc.errors) from exc
    limits = ImageLimits.from_settings(settings)
    stored = []
    for i, data in enumerate(files):
        try:
            stored.append(
                await run_in_threadpool(uploads.store_upload, services.store, data, limits)
            )
        except ImageError as exc:
            raise image_problem(exc, image=i) from exc
    product = uploads.attach_images(product, stored)
    # A merchant who saw the job finish expects to read the product back (read-your-write).
    [job_id] = await run_in_threadpool(enqueue, state.celery, [product], refresh=True)
    return _accepted(
        response,
        job_id,
        product.merchant_id,
        product.product_id,
        images=[
            StoredImageOut(sha256=s.sha256, url=image_path(request, s.sha256), stored=s.created)
            for s in stored
        ],
        image_urls=product.images[len(stored) :],
    )


def _accepted(
    response: Response, job_id: str, merchant_id: str, product_id: str, **extra: Any
) -> JobAccepted:
    """The 202 answer: the job id, where to follow it (body and ``Location``), and ``extra``."""
    body = JobAccepted(
        job_id=job_id,
        status_url=f"/v1/jobs/{job_id}",
        merchant_id=merchant_id,
        product_id=product_id,
        **extra,
    )
    response.headers["Location"] = body.status_url
    return body


UPSERT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {"description": "metadata names another merchant"},
    413: {"description": "body or image too large"},
    415: {"description": "neither multipart/form-data nor application/json"},
    422: {"description": "invalid metadata or JSON; an image that does not decode (reason)"},
}


@router.post(
    "/v1/products",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=UPLOAD_BODY,
    responses=UPSERT_ERRORS,
    summary="Create or replace a product; starts its embedding job",
)
async def create_product(
    request: Request, response: Response, key: Writer, state: State, services: Services
) -> JobAccepted:
    """Stores the image(s) (content-addressed: the same bytes are stored once) and enqueues the
    embedding job. Sending a product id again replaces that product: the call is idempotent."""
    return await _upsert(request, response, key, state, services, product_id=None)


@router.put(
    "/v1/products/{product_id:path}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=UPLOAD_BODY,
    responses=UPSERT_ERRORS,
    summary="Replace a product (new metadata and/or images); starts its embedding job",
)
async def replace_product(
    product_id: ProductId,
    request: Request,
    response: Response,
    key: Writer,
    state: State,
    services: Services,
) -> JobAccepted:
    return await _upsert(request, response, key, state, services, product_id=product_id)


@router.delete(
    "/v1/products/{product_id:path}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses={**ERRORS, 404: {"description": "no such product of this merchant is indexed"}},
    summary="Delete a product; starts the job that removes its documents",
)
def delete_product(
    product_id: ProductId, response: Response, key: Writer, state: State
) -> JobAccepted:
    found = uploads.indexed_product(
        state.es, state.settings.index_alias, key.merchant_id, product_id
    )
    if found is None:
        raise Problem("product_not_found", f"no indexed product {product_id!r}")
    job_id = enqueue_delete(state.celery, key.merchant_id, product_id)
    return _accepted(response, job_id, key.merchant_id, product_id)


@router.get(
    "/v1/products/{product_id:path}",
    responses={**ERRORS, 404: {"description": "no such product of this merchant is indexed"}},
    summary="What is indexed for a product: metadata, tags, auto tags, quality flags, model",
)
def get_product(
    product_id: ProductId, request: Request, key: Merchant, state: State
) -> dict[str, Any]:
    found = uploads.indexed_product(
        state.es, state.settings.index_alias, key.merchant_id, product_id
    )
    if found is None:
        raise Problem("product_not_found", f"no indexed product {product_id!r}")
    for image in found["images"]:
        image["image_url"] = public_image_url(request, image["image_url"], image["image_sha256"])
    return found


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses={**ERRORS, 404: {"description": "no such job of this merchant"}},
    summary="State of an embedding or delete job, with the reason of any failure",
)
def get_job(job_id: JobId, request: Request, key: Merchant, state: State) -> JobView:
    """Jobs of other merchants answer 404, exactly like jobs that do not exist."""
    description = job_description(state.celery, job_id)
    current = job_status(state.celery, job_id)
    ownership = uploads.job_ownership(description, current.results)
    if not ownership.belongs_to(key.merchant_id):
        raise Problem("job_not_found", f"no job {job_id!r}")
    assert description is not None
    own = f"{key.merchant_id}/"  # every product of the job is this merchant's (checked above)
    store = state.settings.images_dir
    results = uploads.public_job_results(current.results)
    for result in results:
        if isinstance(result.get("message"), str):
            result["message"] = without_server_paths(request, result["message"], store)
    return JobView(
        job_id=job_id,
        state=current.state,
        products=[p.removeprefix(own) for p in description.get("products", [])],
        results=results,
        error=without_server_paths(request, current.error, store) if current.error else None,
    )


_MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


@router.get(
    "/v1/images/{sha256}",
    response_class=FileResponse,
    responses={404: {"description": "not in the image store"}},
    summary="An original product image from the content-addressed store (public)",
)
def get_image(sha256: str, services: Services) -> FileResponse:
    """Images are public, as product photos on a shop are; only the store is served."""
    if not SHA256_PATTERN.match(sha256):
        raise Problem("image_not_found", "not a SHA-256")
    path = services.store.get(sha256)
    if path is None:
        raise Problem("image_not_found", "no such image")
    try:
        with Image.open(path) as img:
            media_type = _MEDIA_TYPES.get(img.format or "", "application/octet-stream")
    except OSError:
        media_type = "application/octet-stream"
    return FileResponse(
        path,
        media_type=media_type,
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "ETag": f'"{sha256}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
