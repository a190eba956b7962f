"""The one request-body parser: strict, bounded JSON and forms that never reach disk."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from pipeline.api import errors
from pipeline.api.body import MAX_DEPTH, read_body

LIMIT = 2_000_000  # over Starlette's 1 MB spool size, so spooling would show


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await read_body(request, max_bytes=LIMIT, max_files=2)
        sizes = {name: [len(f) for f in files] for name, files in body.files.items()}
        return {"json": body.json, "fields": body.fields, "files": sizes}

    return TestClient(app)


def post_json(client: TestClient, raw: bytes | str):
    return client.post("/echo", content=raw, headers={"content-type": "application/json"})


def test_json_and_forms_are_read(client):
    assert post_json(client, '{"a": [1, 2.5, "é"]}').json()["json"] == {"a": [1, 2.5, "é"]}
    assert post_json(client, b"").json()["json"] == {}
    form = client.post("/echo", data={"text": "hi"}, files={"image": ("a.png", b"x" * 100)})
    assert form.json()["fields"] == {"text": "hi"} and form.json()["files"] == {"image": [100]}
    urlencoded = client.post("/echo", data={"text": "hi"})
    assert urlencoded.json()["fields"] == {"text": "hi"}


@pytest.mark.parametrize(
    "raw",
    [
        '{"price": NaN}',
        '{"price": Infinity}',
        '{"price": -Infinity}',
        '{"price": 1e400}',
        '{"n": ' + "9" * 4300 + "}",
        '{"n": 12345678901234567890}',
        '{"title": "\\ud800"}',
        '{"\\udfff": 1}',
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        '{"vector": [0.5, [1e400]]}',
        '{"tags": ["a", ["\\udc00"]]}',
        "{not json",
        b'{"a": "\xff"}',
    ],
    ids=[
        "nan",
        "infinity",
        "-infinity",
        "1e400",
        "4300-digits",
        "over-int64",
        "lone-surrogate",
        "surrogate-key",
        "100000-deep",
        "too-deep",
        "too-deep-lists",
        "1e400-in-a-list",
        "surrogate-in-a-list",
        "broken",
        "not-utf8",
    ],
)
def test_hostile_json_is_a_422_that_does_not_echo_it(client, raw):
    response = post_json(client, raw)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"] == ["body"]
    assert len(response.content) < 400


def test_deep_but_allowed_json_is_fine(client):
    nested = '{"a":' * (MAX_DEPTH - 1) + "1" + "}" * (MAX_DEPTH - 1)
    assert post_json(client, nested).status_code == 200
    assert post_json(client, "[" * MAX_DEPTH + "]" * MAX_DEPTH).status_code == 200


def test_declared_oversize_is_refused_before_reading(client):
    response = post_json(client, json.dumps({"text": "x" * LIMIT}))
    assert response.status_code == 413
    assert response.json()["detail"]["reason"] == "body_too_large"
    assert response.headers["connection"] == "close"
    assert len(response.content) < 300  # the body is not echoed


def test_chunked_oversize_without_content_length_is_refused(client):
    def chunks():
        for _ in range(LIMIT // 100_000 + 5):
            yield b" " * 100_000

    for content_type in ("application/json", "multipart/form-data; boundary=xyz"):
        response = client.post("/echo", content=chunks(), headers={"content-type": content_type})
        assert response.status_code == 413, response.text


def test_form_files_never_reach_disk(client, monkeypatch):
    rolled = []
    real = tempfile.SpooledTemporaryFile.rollover

    def spy(self: Any) -> None:
        rolled.append(True)
        real(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", spy)
    response = client.post("/echo", files={"image": ("a.png", b"x" * 1_500_000)})
    assert response.status_code == 200 and not rolled


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {"content-type": "multipart/mixed; boundary=x"}],
)
def test_other_content_types_are_415(client, headers):
    response = client.post("/echo", content=b"hello", headers=headers)
    assert response.status_code == 415
    assert response.json()["detail"]["reason"] == "unsupported_media_type"


def test_broken_forms_are_422(client):
    no_boundary = client.post(
        "/echo", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 422
    too_many = client.post("/echo", files=[("image", (f"{i}.png", b"x")) for i in range(3)])
    assert too_many.status_code == 422
