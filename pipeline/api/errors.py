"""The one error table of the HTTP API: every refusal has a machine-readable ``reason``, and the
reason alone decides the status. Both routers raise ``Problem(reason, message)``; exceptions
from the layers below (image, query, Elasticsearch, Redis, encoder) are translated here by the
application's exception handlers, so no route maps errors by hand.

Bodies are ``{"detail": {"reason", "message", ...}}``; request validation errors keep FastAPI's
list format (422) but never carry the input back (a 50 MB body must not be echoed).

Rules behind the table: 400 a request that is well-formed but asks for something impossible;
413 a body or image over a limit; 415 a content type we do not read; 422 content that cannot be
used (an image that does not decode or cannot be fetched, JSON that is not valid or not
representable, metadata that fails validation): the same reason gives the same status on
upload and on search; 503 a dependency (Elasticsearch, Redis, the model) is unavailable.
"""

from __future__ import annotations

import logging
from typing import Any

import elasticsearch
import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pipeline.encoders import EncoderError, EncoderOutputInvalid
from pipeline.images import ImageError, Reason
from pipeline.search.plan import QueryError

log = logging.getLogger(__name__)

STATUS_BY_REASON: dict[str, int] = {
    # the request as a whole
    "invalid_query": 400,
    "invalid_base64": 400,
    "invalid_content_length": 400,
    "body_too_large": 413,
    "unsupported_media_type": 415,
    # who is asking
    "missing_api_key": 401,
    "invalid_api_key": 401,
    "api_key_required": 401,
    "foreign_merchant": 403,
    "rate_limited": 429,
    # what is asked for
    "product_not_found": 404,
    "job_not_found": 404,
    "image_not_found": 404,
    # images (pipeline.images.Reason), on upload and on search alike
    Reason.INVALID_SOURCE: 400,
    Reason.TOO_LARGE: 413,
    Reason.EMPTY: 422,
    Reason.NOT_AN_IMAGE: 422,
    Reason.CORRUPT: 422,
    Reason.UNSUPPORTED_FORMAT: 422,
    Reason.NOT_FOUND: 422,
    Reason.FETCH_FAILED: 422,
    Reason.FETCH_TIMEOUT: 422,
    Reason.FETCH_REFUSED: 422,
    # query vectors (pipeline.search.plan.QueryError)
    "dimension_mismatch": 400,
    "model_mismatch": 400,
    "text_not_supported": 400,
    # dependencies
    "index_not_found": 503,
    "encoder_model_mismatch": 503,
    "elasticsearch_unavailable": 503,
    "redis_unavailable": 503,
    "model_unavailable": 503,
    "encoder_output_invalid": 503,  # a faulty encoder plugin: the model is not usable
}
#: Status of a reason missing from the table (a new image or query reason): the caller's fault.
DEFAULT_STATUS = 422

MAX_ERRORS = 20  # validation errors listed in one answer
MAX_TEXT = 200  # characters of any message or location part shown


def status_for(reason: str) -> int:
    return STATUS_BY_REASON.get(reason, DEFAULT_STATUS)


class Problem(HTTPException):
    """A refusal with a reason from the table; ``extra`` is added to the detail (e.g. which
    image of an upload)."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        detail = {"reason": str(reason), "message": message, **extra}
        super().__init__(status_for(reason), detail, headers=headers)
        self.reason = str(reason)


def image_problem(exc: ImageError, **extra: Any) -> Problem:
    return Problem(exc.reason, exc.message, **extra)


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "..."
    return value if isinstance(value, int | str) else _short(str(value))


def public_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the input (nor context values derived from it), with
    locations and messages cut short and at most ``MAX_ERRORS`` of them."""
    return [
        {
            "loc": [_short(part) for part in error.get("loc", ())],
            "msg": _short(error.get("msg", "")),
            "type": _short(error.get("type", "value_error")),
        }
        for error in list(errors)[:MAX_ERRORS]
    ]


def _problem_response(reason: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": {"reason": reason, "message": message}}, status_code=status_for(reason)
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": public_validation_errors(exc.errors())}, status_code=422)


async def _image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    return _problem_response(exc.reason, exc.message)


async def _query_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueryError)
    return _problem_response(exc.reason, exc.message)


async def _elasticsearch_error(request: Request, exc: Exception) -> JSONResponse:
    """Connection failures and refusals of Elasticsearch, without its (internal) details: a
    400 from Elasticsearch is a request it cannot run, anything else is unavailability."""
    if isinstance(exc, elasticsearch.ApiError) and exc.meta.status == 400:
        return _problem_response("invalid_query", "Elasticsearch refused the request")
    log.warning("Elasticsearch failed on %s %s: %r", request.method, request.url.path, exc)
    return _problem_response("elasticsearch_unavailable", "Elasticsearch is unavailable")


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis failed on %s %s: %r", request.method, request.url.path, exc)
    return _problem_response("redis_unavailable", "the job queue (Redis) is unavailable")


async def _encoder_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, EncoderOutputInvalid):
        log.error("encoder output invalid: %s", exc)
        return _problem_response(exc.reason, "the encoder returned an invalid vector")
    log.error("model unavailable: %r", exc)
    return _problem_response("model_unavailable", "the model cannot be loaded")


def install(app: FastAPI) -> None:
    """Register the translations of lower layers' exceptions on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(QueryError, _query_error)
    app.add_exception_handler(EncoderError, _encoder_error)
    for es_error in (elasticsearch.TransportError, elasticsearch.ApiError):
        app.add_exception_handler(es_error, _elasticsearch_error)
    for redis_error in (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        kombu.exceptions.OperationalError,
    ):
        app.add_exception_handler(redis_error, _redis_error)
