"""The API's one error table, and the translation of lower layers' exceptions through it."""

from __future__ import annotations

import elasticsearch
import pytest
import redis.exceptions
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.api import errors
from pipeline.api.errors import STATUS_BY_REASON, Problem, public_validation_errors, status_for
from pipeline.images import ImageError, Reason
from pipeline.search.plan import QueryError


def test_every_image_reason_has_a_deliberate_row():
    assert {str(r) for r in Reason} <= set(STATUS_BY_REASON)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        # a corrupt image is the same 422 on upload and on search
        (Reason.CORRUPT, 422),
        (Reason.NOT_AN_IMAGE, 422),
        (Reason.EMPTY, 422),
        (Reason.UNSUPPORTED_FORMAT, 422),
        (Reason.FETCH_FAILED, 422),
        (Reason.TOO_LARGE, 413),
        ("body_too_large", 413),
        (Reason.INVALID_SOURCE, 400),
        ("invalid_query", 400),
        ("dimension_mismatch", 400),
        ("unsupported_media_type", 415),
        ("missing_api_key", 401),
        ("foreign_merchant", 403),
        ("product_not_found", 404),
        ("rate_limited", 429),
        ("elasticsearch_unavailable", 503),
        ("redis_unavailable", 503),
        ("index_not_found", 503),
    ],
)
def test_status_comes_from_the_reason(reason, status):
    assert status_for(reason) == status
    problem = Problem(reason, "why")
    assert problem.status_code == status
    assert problem.detail == {"reason": str(reason), "message": "why"}


def test_only_unavailable_dependencies_are_5xx():
    dependencies = {
        "index_not_found",
        "encoder_model_mismatch",
        "elasticsearch_unavailable",
        "redis_unavailable",
        "model_unavailable",
        "encoder_output_invalid",
    }
    assert {r for r, status in STATUS_BY_REASON.items() if status >= 500} == dependencies
    assert status_for("some_new_reason") == 422  # the caller's input, never a 5xx


def test_validation_errors_never_echo_the_input():
    huge = "x" * 1_000_000
    [error] = public_validation_errors(
        [{"loc": ("body", huge), "msg": "bad", "type": "extra_forbidden", "input": huge}]
    )
    assert set(error) == {"loc", "msg", "type"}
    assert len(str(error)) < 500
    many = [{"loc": ("body", i), "msg": "bad", "type": "t"} for i in range(1000)]
    assert len(public_validation_errors(many)) == errors.MAX_ERRORS


def _app(exc: Exception) -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


def _es_api_error(status: int) -> elasticsearch.ApiError:
    meta = ApiResponseMeta(
        status=status,
        http_version="1.1",
        headers=HttpHeaders(),
        duration=0.0,
        node=NodeConfig("http", "10.1.2.3", 9200),
    )
    return elasticsearch.ApiError("secret internal detail", meta, {})


@pytest.mark.parametrize(
    ("exc", "status", "reason"),
    [
        (ImageError(Reason.CORRUPT, "truncated"), 422, "corrupt"),
        (QueryError("product_not_found", "no such product"), 404, "product_not_found"),
        (
            elasticsearch.ConnectionError("Connection refused to 10.1.2.3:9200"),
            503,
            "elasticsearch_unavailable",
        ),
        (_es_api_error(503), 503, "elasticsearch_unavailable"),
        (_es_api_error(400), 400, "invalid_query"),
        (
            redis.exceptions.ConnectionError("Error 111 connecting to 10.1.2.3:6379"),
            503,
            "redis_unavailable",
        ),
    ],
)
def test_lower_layers_exceptions_are_translated_without_internal_details(exc, status, reason):
    response = _app(exc).get("/boom")
    assert response.status_code == status
    assert response.json()["detail"]["reason"] == reason
    assert "10.1.2.3" not in response.text and "secret" not in response.text
