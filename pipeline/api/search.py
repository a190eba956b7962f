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

Errors are ``{"detail": {"reason", "message"}}`` with the status of ``errors.STATUS_BY_REASON``:
400 bad parameters or vector (wrong dimension, another model; ``text_not_supported`` by an
image-only encoder), 401 an unknown API key or an ``image_url`` without one, 404
unknown product, 413 body or image too large, 415 other content types, 422 an image that cannot
be used or JSON that is not valid (and request validation errors, FastAPI's format, without the
input), 429 over the rate limit (per API key, or per client address without one), 503 no index /
Elasticsearch or Redis unreachable / the API's model is not the index's or returns invalid
vectors (``encoder_output_invalid``, a faulty encoder plugin).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from pipeline import metrics
from pipeline.api.auth import SearchCaller, authorise_image_url
from pipeline.api.body import invalid, parse_json, read_body
from pipeline.api.deps import ApiState, SearcherDep, State
from pipeline.api.errors import Problem
from pipeline.api.models import (
    EMBED_EXAMPLES,
    SEARCH_EXAMPLES,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from pipeline.api.public import public_image_url
from pipeline.fetch import FetchPolicy
from pipeline.images import (
    ImageError,
    ImageLimits,
    Reason,
    decode_image,
    is_http_url,
    load_image,
)

router = APIRouter(prefix="/v1", tags=["search"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad parameters, base64 or image URL; query vector of another dimension or model; "
        "text_not_supported (a text vector from an image-only encoder)",
        401: "An API key was sent but is unknown or revoked (searching needs no key), or an "
        "image_url was sent without one (api_key_required)",
        404: "More-like-this product not indexed",
        413: "Body or query image over the size limit",
        415: "Neither application/json nor multipart/form-data",
        422: "Query image cannot be decoded (reason: corrupt, not_an_image, ...), "
        "invalid JSON, or the body fails validation",
        429: "Rate limit reached (per API key, or per client address without one)",
        503: "No index, Elasticsearch or Redis unreachable, the API's model is not the index's, "
        "or it returned an invalid vector (encoder_output_invalid)",
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


def body_limit(state: ApiState) -> int:
    """Largest search or embed body: a query image as base64 (4/3 of its bytes) plus room for
    the other fields."""
    return state.settings.image_max_bytes * 4 // 3 + 64 * 1024


async def _read_body(request: Request, state: ApiState) -> tuple[dict[str, Any], bytes | None]:
    """``(fields, uploaded image bytes)`` from a JSON or multipart/form-data body."""
    body = await read_body(request, max_bytes=body_limit(state), max_files=1)
    if body.is_json:
        if not isinstance(body.json, dict):
            raise invalid(["body"], "must be a JSON object", "dict_type")
        return body.json, None
    unexpected = set(body.files) - {"image"}
    if unexpected:
        raise Problem("invalid_query", "the only file part is 'image'")
    image = body.files["image"][0] if "image" in body.files else None
    limit = state.settings.image_max_bytes
    if image is not None and len(image) > limit:
        raise Problem(Reason.TOO_LARGE, f"image is over the limit of {limit:,} bytes")
    return dict(body.fields), image


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
        raise Problem("invalid_query", "give one query image (file, image_url or base64)")
    limits = ImageLimits.from_settings(state.settings)
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
            raise Problem("invalid_base64", "image_base64 is not valid base64") from exc
        return decode_image(data, limits).image
    return None


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
    caller: SearchCaller,
) -> EmbedResponse:
    """Embed a query image (``image`` file, ``image_url`` or ``image_base64``) and/or ``text``
    with the API's model. With both, the vector is ``normalise(w*image + (1-w)*text)`` with
    ``w = image_weight``. Send the result to the ``<alias>-knn`` template as ``query_vector``
    and ``model_id``."""
    fields, upload = await _read_body(request, state)
    body: EmbedRequest = _validate(EmbedRequest, fields)
    if body.image_url:
        authorise_image_url(state.settings, caller, body.image_url)

    def work() -> EmbedResponse:
        image = _query_image(state, upload, body.image_url, body.image_base64)
        embedding = searcher.embed(image=image, text=body.text, image_weight=body.image_weight)
        return EmbedResponse(**embedding.__dict__)

    return await run_in_threadpool(work)


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
    caller: SearchCaller,
) -> dict[str, Any]:
    """Every query shape with filters applied inside kNN, fusion (RRF or linear), one hit per
    product, from/size over the fused list (``search_after`` for keyword searches), facets and
    explanations. See ``SearchRequest`` for the fields and the README's frontend section for the
    equivalent stored-template calls."""
    fields, upload = await _read_body(request, state)
    if "request" in fields:  # multipart: the SearchRequest as a JSON field
        embedded = parse_json(fields.pop("request"), ["body", "request"])
        if not isinstance(embedded, dict):
            raise invalid(["body", "request"], "must be a JSON object", "dict_type")
        fields = {**embedded, **fields}
    body: SearchRequest = _validate(SearchRequest, fields)
    images = upload is not None or bool(body.image_url) or bool(body.image_base64)
    if images + (body.vector is not None) + bool(body.product_id) > 1:  # before any fetching
        raise Problem("invalid_query", "give at most one of image, vector and product_id")
    if body.image_url:
        authorise_image_url(state.settings, caller, body.image_url)

    def work() -> dict[str, Any]:
        image = _query_image(state, upload, body.image_url, body.image_base64)
        query = body.to_query(image)
        with metrics.SEARCH_SECONDS.labels(query.shape).time():
            return searcher.search(query).to_dict()

    result = await run_in_threadpool(work)
    for hit in result["hits"]:
        hit["image_url"] = public_image_url(request, hit.get("image_url"), hit.get("image_sha256"))
    return result
