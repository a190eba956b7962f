"""Test data for integration tests (distinct product images and products written to disk), a
local image host and a live API process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pipeline.documents import Product
from pipeline.settings import VitrineSettings


def pattern_image(seed: int, size: int = 96) -> Image.Image:
    """A blocky random colour pattern: far apart from other seeds even for a random model."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def write_image(directory: Path, seed: int, *, fmt: str = "JPEG", size: int = 96) -> Path:
    path = directory / f"img-{seed}-{uuid.uuid4().hex[:6]}.{fmt.lower()}"
    pattern_image(seed, size).save(path, format=fmt, quality=95)
    return path


def make_product(directory: Path, seed: int, *, prefix: str, **fields) -> Product:
    """A product with a distinct image; ``fields`` override the metadata."""
    data = {
        "product_id": f"{prefix}-{seed}",
        "merchant_id": "merchant-a",
        "title": f"Product {seed}",
        "description": f"Test product number {seed}",
        "category": "shoes",
        "tags": ["test"],
        "price": 10.0 + seed,
        "currency": "EUR",
        "in_stock": True,
        "images": [str(write_image(directory, seed))],
    }
    data.update(fields)
    return Product.model_validate(data)


def unique_prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}"


class ImageServer:
    """A local image host: ``/img/<name>`` answers at once, ``/slow/<name>`` waits until the
    test releases it (bounded, below the worker's fetch timeout), anything else is a 404."""

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}
        self.requested = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                kind, _, name = self.path.strip("/").partition("/")
                if kind == "slow":
                    server.requested.set()
                    server.release.wait(timeout=1.5)
                data = server.images.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def near_duplicate(image: Image.Image, *, quality: int = 60, size: int = 80) -> Image.Image:
    """The same picture resized and re-encoded as a lower-quality JPEG (a near-duplicate)."""
    import io

    buffer = io.BytesIO()
    image.resize((size, size), Image.BILINEAR).save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@contextmanager
def api_server(
    settings: VitrineSettings, *, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Iterator[str]:
    """A real ``vitrine serve`` process (uvicorn) on a free loopback port; yields its base URL.
    ``env`` adds variables to its environment (e.g. a private TMPDIR), ``args`` options."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), *args],
        env={**os.environ, **settings.to_env(), **(env or {})},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"the API exited with code {process.returncode}"
            assert time.monotonic() < deadline, "the API did not start within 120 s"
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
