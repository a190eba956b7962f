"""Merchant upload API: products in (multipart image + JSON metadata, or JSON with image URLs),
embedding jobs out, job status and what is indexed back, and the stored original images.

Every route acts for the merchant of the API key. Product ids are that merchant's: another
merchant's product with the same id is a different product, which this key cannot reach.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline.api.auth import Merchant, Writer
from pipeline.api.deps import Services, State
from pipeline.documents import ID_PATTERN
from pipeline.images import ImageError, ImageLimits, Reason, is_http_url
from pipeline.jobs import enqueue, enqueue_delete, job_description, job_status
from pipeline.merchants import uploads
from pipeline.merchants.apikeys import ApiKey
from pipeline.storage import SHA256_PATTERN

router = APIRouter(tags=["merchant upload API"])

MAX_FILES = 20
HTTP_413_TOO_LARGE = 413  # Starlette renamed its constant; the number is what matters
ProductId = Annotated[str, Path(pattern=ID_PATTERN, description="The merchant's product id.")]

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
                    "type": "object",
                    "description": "Product metadata with image URLs: image_url (one) or "
                    "images (a list). merchant_id may be omitted (it is the key's).",
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
}


def _validation_error(
    loc: list[Any], msg: str, kind: str = "value_error"
) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


def _check_length(request: Request, limit: int) -> None:
    """Refuse oversized bodies from the declared length, before reading any of it. The server
    (h11/httptools) never delivers more than the declared length."""
    length = request.headers.get("content-length")
    if length is None:
        raise HTTPException(status.HTTP_411_LENGTH_REQUIRED, "Content-Length is required")
    if not length.isdigit():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid Content-Length")
    if int(length) > limit:
        raise HTTPException(
            HTTP_413_TOO_LARGE,
            f"request body is {int(length):,} bytes, the limit is {limit:,}",
        )


def _parse_json(raw: bytes | str, loc: list[Any]) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _validation_error(loc, f"not valid JSON: {exc}", "json_invalid") from exc


async def _read_request(request: Request) -> tuple[Any, list[UploadFile]]:
    """``(metadata, image files)`` from a multipart or JSON request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return _parse_json(await request.body(), ["body"]), []
    if content_type != "multipart/form-data":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data (metadata + image) or application/json (metadata with "
            "image_url)",
        )
    form = await request.form(max_files=MAX_FILES, max_fields=50)
    field = form.get("metadata")
    if field is None:
        raise _validation_error(["body", "metadata"], "Field required", "missing")
    # metadata may come as a file part too (curl -F metadata=@product.json)
    raw: bytes | str = await field.read() if isinstance(field, UploadFile) else field
    metadata = _parse_json(raw, ["body", "metadata"])
    files = []
    for i, part in enumerate(form.getlist("image")):
        if not isinstance(part, UploadFile):
            raise _validation_error(["body", "image", i], "must be a file part, not a text field")
        files.append(part)
    return metadata, files


def image_url(request: Request, sha256: str, stored_as: str = "") -> str:
    """Where clients fetch an image: an http(s) URL as given, else ``GET /v1/images/{sha256}``
    (stored images are known by their hash; server paths are never shown)."""
    if is_http_url(stored_as):
        return stored_as
    return str(request.app.url_path_for("get_image", sha256=sha256))


def _image_http_error(index: int, exc: ImageError) -> HTTPException:
    code = (
        HTTP_413_TOO_LARGE
        if exc.reason == Reason.TOO_LARGE
        else status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    )
    return HTTPException(code, {"reason": exc.reason, "message": exc.message, "image": index})


async def _upsert(
    request: Request,
    response: Response,
    key: ApiKey,
    state: State,
    services: Services,
    product_id: str | None,
) -> JobAccepted:
    settings = state.settings
    _check_length(request, settings.upload_max_bytes)
    metadata, files = await _read_request(request)
    try:
        product = uploads.validate_metadata(
            metadata, merchant_id=key.merchant_id, product_id=product_id, files=len(files)
        )
    except uploads.ForeignMerchant as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    except uploads.MetadataError as exc:
        raise RequestValidationError(exc.errors) from exc
    limits = ImageLimits.from_settings(settings)
    stored = []
    for i, part in enumerate(files):
        data = await part.read()
        try:
            stored.append(
                await run_in_threadpool(uploads.store_upload, services.store, data, limits)
            )
        except ImageError as exc:
            raise _image_http_error(i, exc) from exc
    product = uploads.attach_images(product, stored)
    [job_id] = await run_in_threadpool(enqueue, state.celery, [product])
    return _accepted(
        response,
        job_id,
        product.merchant_id,
        product.product_id,
        images=[
            StoredImageOut(sha256=s.sha256, url=image_url(request, s.sha256), stored=s.created)
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
    415: {"description": "not a supported image (decoded), or wrong content type"},
    422: {"description": "invalid metadata"},
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
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no indexed product {product_id!r}")
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
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no indexed product {product_id!r}")
    for image in found["images"]:
        image["image_url"] = image_url(request, image["image_sha256"], image["image_url"] or "")
    return found


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses={**ERRORS, 404: {"description": "no such job of this merchant"}},
    summary="State of an embedding or delete job, with the reason of any failure",
)
def get_job(job_id: str, key: Merchant, state: State) -> JobView:
    """Jobs of other merchants answer 404, exactly like jobs that do not exist."""
    description = job_description(state.celery, job_id)
    current = job_status(state.celery, job_id)
    ownership = uploads.job_ownership(description, current.results)
    if not ownership.belongs_to(key.merchant_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    assert description is not None
    own = f"{key.merchant_id}/"  # every product of the job is this merchant's (checked above)
    return JobView(
        job_id=job_id,
        state=current.state,
        products=[p.removeprefix(own) for p in description.get("products", [])],
        results=uploads.public_job_results(current.results),
        error=current.error,
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
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not a SHA-256")
    path = services.store.get(sha256)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such image")
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
