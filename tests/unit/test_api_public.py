"""Public answers show stored images by their public URL, never by their server path."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request

from pipeline.api.public import public_image_url, without_server_paths

SHA = "ab" * 32


def request() -> Request:
    app = FastAPI()

    @app.get("/v1/images/{sha256}", name="get_image")
    def get_image(sha256: str) -> None: ...

    return Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})


def test_stored_images_get_their_public_url():
    r = request()
    assert public_image_url(r, f"/srv/images/ab/{SHA}", SHA) == f"/v1/images/{SHA}"
    assert public_image_url(r, "https://cdn.example/a.jpg", SHA) == "https://cdn.example/a.jpg"
    assert public_image_url(r, "/srv/images/elsewhere.jpg", None) is None


def test_job_messages_lose_server_paths():
    store = Path("/var/lib/vitrine/images")
    message = f"no such file: {store}/ab/{SHA}; also {store}/tmp/x"
    public = without_server_paths(request(), message, store)
    assert public == f"no such file: /v1/images/{SHA}; also <image store>/tmp/x"
    assert str(store) not in public
