"""``POST /v1/embed`` (query image/text -> vector) and ``POST /v1/search`` (every query shape).

Both take ``application/json`` or ``multipart/form-data``:

- ``/v1/embed``: JSON ``EmbedRequest`` (``text``, ``image_url``, ``image_base64``,
  ``image_weight``), or a form with an ``image`` file and/or ``text``, ``image_url``,
  ``image_weight`` fields. Returns ``{"model_id", "dims", "kind", "vector"}``: what a frontend
  passes as ``model_id`` and ``query_vector`` to the stored search templates.
- ``/v1/search``: JSON ``SearchRequest``, or a form with an ``image`` file (the query image)
  and a ``request`` field holding the ``SearchRequest`` as JSON. Returns ``SearchResponse``:
  ``hits`` (one per product), ``facets``, ``total``, ``next_search_after`` and, with
  ``explain``, per-hit list contributions and the template calls that reproduce the search.

Errors are ``{"detail": {"reason", "message"}}``: 400 bad parameters or vector (wrong
dimension, another model; ``text_not_supported`` by an image-only encoder), 404 unknown
product, 413 image too large, 415 other content types, 422 an image that cannot be used (and
request validation errors, FastAPI's format), 500 ``encoder_output_invalid`` (a faulty encoder
plugin), 503 no index / Elasticsearch unreachable / the API's model is not the index's.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from elasticsearch import ApiError, TransportError
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline.api.auth import authorise_image_url
from pipeline.api.deps import ApiState, SearcherDep, State
from pipeline.api.models import (
    EMBED_EXAMPLES,
    SEARCH_EXAMPLES,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from pipeline.encoders import EncoderError, EncoderOutputInvalid
from pipeline.fetch import FetchPolicy
from pipeline.images import (
    ImageError,
    ImageLimits,
    Reason,
    decode_image,
    is_http_url,
    load_image,
)
from pipeline.search.plan import QueryError

router = APIRouter(prefix="/v1", tags=["search"])

QUERY_ERROR_STATUS = {
    "invalid_query": 400,
    "dimension_mismatch": 400,
    "model_mismatch": 400,
    "product_not_found": 404,
    "index_not_found": 503,
    "encoder_model_mismatch": 503,
    "text_not_supported": 400,
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad parameters, base64 or image URL; query vector of another dimension or model; "
        "text_not_supported (a text vector from an image-only encoder)",
        404: "More-like-this product not indexed",
        413: "Query image over the size limit",
        415: "Neither application/json nor multipart/form-data",
        422: "Query image cannot be decoded (reason: corrupt, not_an_image, ...), "
        "or the body fails validation",
        500: "encoder_output_invalid: the encoder returned a vector of the wrong shape, "
        "non-finite or not of unit length",
        503: "No index, Elasticsearch unreachable, or the API's model is not the index's",
    }.items()
}


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with ``$defs`` resolved in place (for ``openapi_extra``)."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


def _body_doc(model: type[BaseModel], form: dict[str, Any], examples: dict) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_schema(model), "examples": examples},
                "multipart/form-data": {"schema": {"type": "object", "properties": form}},
            },
        }
    }


_IMAGE_PART = {"type": "string", "format": "binary", "description": "The query image file."}
EMBED_DOC = _body_doc(
    EmbedRequest,
    {
        "image": _IMAGE_PART,
        "text": {"type": "string"},
        "image_url": {"type": "string"},
        "image_weight": {"type": "number", "default": 0.5},
    },
    EMBED_EXAMPLES,
)
SEARCH_DOC = _body_doc(
    SearchRequest,
    {
        "image": _IMAGE_PART,
        "request": {
            "type": "string",
            "description": "The SearchRequest as JSON (without image_url/image_base64).",
            "example": json.dumps({"text": "in red", "filters": {"in_stock": True}}),
        },
    },
    SEARCH_EXAMPLES,
)


def _error(status: int, reason: str, message: str) -> HTTPException:
    return HTTPException(status, {"reason": reason, "message": message})


def _image_error(exc: ImageError) -> HTTPException:
    if exc.reason == Reason.TOO_LARGE:
        status = 413
    elif exc.reason == Reason.INVALID_SOURCE:
        status = 400
    else:
        status = 422
    return _error(status, exc.reason, exc.message)


def _query_error(exc: QueryError) -> HTTPException:
    return _error(QUERY_ERROR_STATUS.get(exc.reason, 400), exc.reason, exc.message)


async def _read_body(request: Request, state: ApiState) -> tuple[dict[str, Any], bytes | None]:
    """``(fields, uploaded image bytes)`` from a JSON or multipart/form-data body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/json", ""):
        try:
            data = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestValidationError(
                [{"loc": ["body"], "msg": f"not valid JSON: {exc}", "type": "json_invalid"}]
            ) from exc
        if not isinstance(data, dict):
            raise RequestValidationError(
                [{"loc": ["body"], "msg": "must be a JSON object", "type": "dict_type"}]
            )
        return data, None
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise _error(415, "unsupported_media_type", "send application/json or multipart/form-data")
    limit = state.settings.image_max_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + 64 * 1024:
        raise _error(413, Reason.TOO_LARGE, f"request is {int(length):,} bytes, limit {limit:,}")
    form = await request.form(max_files=1, max_fields=10)
    fields: dict[str, Any] = {}
    image: bytes | None = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "image":
                raise _error(400, "invalid_query", f"unexpected file part {name!r}")
            image = await value.read(limit + 1)
            if len(image) > limit:
                raise _error(413, Reason.TOO_LARGE, f"image is over the limit of {limit:,} bytes")
        else:
            fields[name] = value
    return fields, image


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def _query_image(
    state: ApiState, upload: bytes | None, url: str | None, b64: str | None
) -> Image.Image | None:
    """Decode the one query image given (blocking: run in a thread)."""
    given = [x for x in (url, b64) if x] + ([upload] if upload is not None else [])
    if len(given) > 1:
        raise _error(400, "invalid_query", "give one query image (file, image_url or base64)")
    limits = ImageLimits.from_settings(state.settings)
    try:
        if upload is not None:  # an empty file part is an empty image, not "no image"
            return decode_image(upload, limits).image
        if url:
            if not is_http_url(url):
                raise ImageError(Reason.INVALID_SOURCE, "image_url must be an http(s) URL")
            return load_image(url, limits, policy=FetchPolicy.from_settings(state.settings)).image
        if b64:
            payload = b64.split(",", 1)[1] if b64.startswith("data:") else b64
            if len(payload) > (limits.max_bytes + 2) // 3 * 4 + 4:
                raise ImageError(Reason.TOO_LARGE, f"image is over {limits.max_bytes:,} bytes")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _error(400, "invalid_base64", f"image_base64 is not base64: {exc}") from exc
            return decode_image(data, limits).image
    except ImageError as exc:
        raise _image_error(exc) from exc
    return None


async def _call(function: Any, *args: Any) -> Any:
    try:
        return await run_in_threadpool(function, *args)
    except QueryError as exc:
        raise _query_error(exc) from exc
    except (TransportError, ApiError) as exc:
        raise _error(503, "elasticsearch_unavailable", f"Elasticsearch failed: {exc}") from exc
    except EncoderOutputInvalid as exc:
        raise _error(500, exc.reason, str(exc)) from exc
    except EncoderError as exc:
        raise _error(503, "model_unavailable", f"the model cannot be loaded: {exc}") from exc


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Query vector for an image, a text, or both",
    responses=ERRORS,
    openapi_extra=EMBED_DOC,
)
async def embed(
    request: Request,
    state: State,
    searcher: SearcherDep,
) -> EmbedResponse:
    """Embed a query image (``image`` file, ``image_url`` or ``image_base64``) and/or ``text``
    with the API's model. With both, the vector is ``normalise(w*image + (1-w)*text)`` with
    ``w = image_weight``. Send the result to the ``<alias>-knn`` template as ``query_vector``
    and ``model_id``."""
    fields, upload = await _read_body(request, state)
    body: EmbedRequest = _validate(EmbedRequest, fields)

    def work() -> EmbedResponse:
        if body.image_url:
            authorise_image_url(state, request.headers, body.image_url)
        image = _query_image(state, upload, body.image_url, body.image_base64)
        embedding = searcher.embed(image=image, text=body.text, image_weight=body.image_weight)
        return EmbedResponse(**embedding.__dict__)

    return await _call(work)


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search products by image, text, both, a product, or keywords",
    responses=ERRORS,
    openapi_extra=SEARCH_DOC,
)
async def search(
    request: Request,
    state: State,
    searcher: SearcherDep,
) -> dict[str, Any]:
    """Every query shape with filters applied inside kNN, fusion (RRF or linear), one hit per
    product, from/size over the fused list (``search_after`` for keyword searches), facets and
    explanations. See ``SearchRequest`` for the fields and the README's frontend section for the
    equivalent stored-template calls."""
    fields, upload = await _read_body(request, state)
    if "request" in fields:  # multipart: the SearchRequest as a JSON field
        try:
            fields = {**json.loads(fields.pop("request")), **fields}
        except (json.JSONDecodeError, TypeError) as exc:
            raise RequestValidationError(
                [
                    {
                        "loc": ["body", "request"],
                        "msg": f"not valid JSON: {exc}",
                        "type": "json_invalid",
                    }
                ]
            ) from exc
    body: SearchRequest = _validate(SearchRequest, fields)
    images = upload is not None or bool(body.image_url) or bool(body.image_base64)
    if images + (body.vector is not None) + bool(body.product_id) > 1:  # before any fetching
        raise _error(400, "invalid_query", "give at most one of image, vector and product_id")

    def work() -> dict[str, Any]:
        if body.image_url:
            authorise_image_url(state, request.headers, body.image_url)
        image = _query_image(state, upload, body.image_url, body.image_base64)
        return searcher.search(body.to_query(image)).to_dict()

    return await _call(work)
