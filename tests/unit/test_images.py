"""Unit tests for pipeline.images: every image is generated in memory with Pillow; the only
network traffic goes to a throwaway HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from pipeline.fetch import FetchPolicy
from pipeline.images import (
    DEFAULT_LIMITS,
    SUPPORTED_FORMATS,
    ImageError,
    ImageLimits,
    LoadedImage,
    decode_image,
    load_image,
    read_image_bytes,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Incompressible RGB noise, so encoded files are big enough to truncate meaningfully."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def error_of(source: object, limits: ImageLimits = DEFAULT_LIMITS, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, limits, **kwargs)  # type: ignore[arg-type]
    return info.value


JPEG_BYTES = encode(noise((64, 48)), "JPEG", quality=90)


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("GIF", {})],
)
def test_round_trip(fmt: str, kwargs: dict[str, object]) -> None:
    src = Image.new("RGB", (40, 30), RED)
    src.paste(BLUE, (20, 0, 40, 30))
    data = encode(src, fmt, **kwargs)

    loaded = decode_image(data)

    assert isinstance(loaded, LoadedImage)
    assert loaded.format == fmt
    assert (loaded.width, loaded.height) == (40, 30) == loaded.image.size
    assert loaded.image.mode == "RGB"
    assert loaded.num_bytes == len(data)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert close_to(loaded.image.getpixel((5, 15)), RED)
    assert close_to(loaded.image.getpixel((35, 15)), BLUE)


def test_exif_orientation_6_rotates_clockwise() -> None:
    src = Image.new("RGB", (40, 20), RED)
    src.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = decode_image(encode(src, "JPEG", quality=95, exif=exif))

    assert (loaded.width, loaded.height) == (20, 40) == loaded.image.size
    assert close_to(loaded.image.getpixel((10, 5)), RED)  # left went to the top
    assert close_to(loaded.image.getpixel((10, 35)), BLUE)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    loaded = decode_image(data)

    assert loaded.image.mode == "RGB"
    assert close_to(loaded.image.getpixel((8, 8)), RED)


def test_palette_with_transparency_goes_white() -> None:
    src = Image.new("P", (10, 10), 0)
    src.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # 0 = black, 1 = red
    src.paste(1, (5, 0, 10, 10))
    data = encode(src, "PNG", transparency=0)  # index 0 (black) is transparent

    loaded = decode_image(data)

    assert loaded.image.getpixel((2, 5)) == (255, 255, 255)  # not black
    assert loaded.image.getpixel((7, 5)) == RED


def test_rgba_transparent_pixel_goes_white_and_opaque_stays() -> None:
    src = Image.new("RGBA", (4, 1), (0, 0, 0, 0))  # fully transparent black
    src.putpixel((1, 0), (255, 0, 0, 255))
    src.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey

    image = decode_image(encode(src, "PNG")).image

    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == RED
    assert all(abs(c - 127) <= 2 for c in image.getpixel((2, 0)))


def test_la_transparent_pixel_goes_white() -> None:
    src = Image.new("LA", (2, 1), (0, 0))
    src.putpixel((1, 0), (0, 255))
    image = decode_image(encode(src, "PNG")).image
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 0, 0)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    src = Image.new("I;16", (3, 1))
    src.putpixel((0, 0), 65535)
    src.putpixel((1, 0), 32768)
    src.putpixel((2, 0), 0)
    data = encode(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    image = decode_image(data).image

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 128) <= 1 for c in image.getpixel((1, 0)))
    assert image.getpixel((2, 0)) == (0, 0, 0)


def test_float_greyscale_tiff_is_scaled() -> None:
    src = Image.new("F", (2, 1))
    src.putpixel((0, 0), 1.0)
    src.putpixel((1, 0), 0.5)
    image = decode_image(encode(src, "TIFF")).image
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 128) <= 1 for c in image.getpixel((1, 0)))


def test_one_bit_and_greyscale_modes() -> None:
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    image = decode_image(encode(one, "BMP")).image
    assert (image.getpixel((0, 0)), image.getpixel((1, 0))) == ((0, 0, 0), (255, 255, 255))
    grey = decode_image(encode(Image.new("L", (2, 2), 77), "PNG")).image
    assert grey.getpixel((1, 1)) == (77, 77, 77)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    loaded = decode_image(data)

    assert loaded.format == "GIF"
    assert loaded.image.getpixel((4, 4)) == RED


def test_multi_picture_jpeg_counts_as_jpeg() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what phone cameras produce

    loaded = decode_image(data)

    assert loaded.format == "JPEG"
    assert close_to(loaded.image.getpixel((4, 4)), RED)


def test_empty_bytes() -> None:
    err = error_of(b"")
    assert err.reason == "empty"
    assert err.transient is False


def test_random_bytes_are_not_an_image() -> None:
    err = error_of(b"<html>" + random.Random(1).randbytes(4096))
    assert err.reason == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    data = encode(noise((64, 64)), fmt)
    err = error_of(data[: len(data) // 2])
    assert err.reason == "corrupt"
    assert fmt in str(err)


def test_too_many_pixels_for_limit() -> None:
    data = encode(Image.new("RGB", (20, 10), RED), "PNG")
    assert decode_image(data, ImageLimits(max_pixels=200)).width == 20  # exactly at the limit

    err = error_of(data, ImageLimits(max_pixels=199))

    assert err.reason == "too_large"
    assert "20x10" in str(err) and "199" in str(err)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims another size: a decompression bomb's header."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type of the first chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_header_rejected_without_decoding() -> None:
    pixels_before = Image.MAX_IMAGE_PIXELS
    start = time.monotonic()

    err = error_of(_png_with_header_size(60_000, 60_000))

    assert err.reason == "too_large"
    assert time.monotonic() - start < 1.0
    assert pixels_before == Image.MAX_IMAGE_PIXELS  # global Pillow state untouched


def test_header_over_our_limit_but_under_pillows() -> None:
    err = error_of(_png_with_header_size(8_000, 8_000))  # 64M > 50M default, < Pillow's 89M
    assert err.reason == "too_large"
    assert "8000x8000" in str(err)


def test_bytes_over_max_bytes() -> None:
    err = error_of(JPEG_BYTES, ImageLimits(max_bytes=len(JPEG_BYTES) - 1))
    assert err.reason == "too_large"
    assert decode_image(JPEG_BYTES, ImageLimits(max_bytes=len(JPEG_BYTES))).num_bytes == len(
        JPEG_BYTES
    )


@pytest.mark.parametrize(("fmt", "mode"), [("PPM", "RGB"), ("PCX", "RGB"), ("ICO", "RGBA")])
def test_identified_but_unsupported_format(fmt: str, mode: str) -> None:
    assert fmt not in SUPPORTED_FORMATS
    data = encode(Image.new(mode, (16, 16)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt

    err = error_of(data)

    assert err.reason == "unsupported_format"
    assert fmt in str(err)


def test_error_pickles_with_all_fields() -> None:
    err = ImageError("fetch_failed", "HTTP 503", transient=True)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.reason, str(copy), copy.transient) == ("fetch_failed", "HTTP 503", True)


def test_limits_from_settings() -> None:
    settings = SimpleNamespace(image_max_bytes=123, image_max_pixels=456, image_fetch_timeout_s=7.5)
    assert ImageLimits.from_settings(settings) == ImageLimits(123, 456, 7.5)


# --- local files ------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.jpg").reason == "not_found"
    assert error_of(str(tmp_path / "nope.jpg")).reason == "not_found"


@pytest.mark.parametrize("as_str", [False, True])
def test_load_from_path(tmp_path: Path, as_str: bool) -> None:
    path = tmp_path / "product.jpg"
    path.write_bytes(JPEG_BYTES)

    loaded = load_image(str(path) if as_str else path)

    assert loaded.sha256 == hashlib.sha256(JPEG_BYTES).hexdigest()
    assert (loaded.format, loaded.width, loaded.height) == ("JPEG", 64, 48)
    assert read_image_bytes(path) == JPEG_BYTES


def test_directory_is_invalid_source(tmp_path: Path) -> None:
    assert error_of(tmp_path).reason == "invalid_source"


def test_file_over_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(JPEG_BYTES)
    with pytest.raises(ImageError) as info:
        read_image_bytes(path, ImageLimits(max_bytes=100))
    assert info.value.reason == "too_large"
    assert f"{len(JPEG_BYTES):,} bytes, limit is 100" in str(info.value)  # from stat(), unread


@pytest.mark.parametrize("url", ["ftp://x", "file:///etc/passwd", "gopher://host/img.jpg"])
def test_unsupported_url_scheme(url: str) -> None:
    assert error_of(url).reason == "invalid_source"


# --- HTTP ---------------------------------------------------------------------------------------

SLOW_S = 3.0
HUGE_LIMITS = ImageLimits(max_bytes=1000)
LOCAL = FetchPolicy.parse(["127.0.0.1"])  # the test server's address, refused by default


class _Handler(BaseHTTPRequestHandler):
    stop: threading.Event  # set on the class by the fixture

    def do_GET(self) -> None:
        path = self.path
        if path == "/ok.jpg":
            self._send(200, JPEG_BYTES, content_type="image/jpeg")
        elif path == "/redirect":
            self._send(302, b"", location="/ok.jpg")
        elif path == "/missing":
            self._send(404, b"not found")
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"nope")
        elif path == "/boom":
            self._send(500, b"boom")
        elif path == "/slow":
            if not self.stop.wait(SLOW_S):
                self._send(200, JPEG_BYTES)
        elif path == "/huge":  # honest Content-Length, over the limit
            self._send(200, b"x" * 5000)
        elif path == "/stream":  # no Content-Length: body ends at connection close
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 100)
        else:
            self._send(400, b"unknown path")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain", **headers: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.title(), value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up early on purpose (timeouts, size limits)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    stop = threading.Event()
    handler = type("Handler", (_Handler,), {"stop": stop})
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_http_ok(server: str) -> None:
    loaded = load_image(f"{server}/ok.jpg", policy=LOCAL)
    assert loaded.sha256 == hashlib.sha256(JPEG_BYTES).hexdigest()
    assert (loaded.format, loaded.width) == ("JPEG", 64)


def test_http_redirect_is_followed(server: str) -> None:
    loaded = load_image(f"{server}/redirect", policy=LOCAL)
    assert loaded.sha256 == hashlib.sha256(JPEG_BYTES).hexdigest()


def test_http_to_loopback_is_refused_by_default(server: str) -> None:
    err = error_of(f"{server}/ok.jpg")
    assert (err.reason, err.transient) == ("fetch_refused", False)


@pytest.mark.parametrize(
    ("path", "status", "reason", "transient"),
    [
        ("/missing", 404, "not_found", False),
        ("/status/410", 410, "not_found", False),
        ("/boom", 500, "fetch_failed", True),
        ("/status/503", 503, "fetch_failed", True),
        ("/status/429", 429, "fetch_failed", True),
        ("/status/403", 403, "fetch_failed", False),
    ],
)
def test_http_errors(server: str, path: str, status: int, reason: str, transient: bool) -> None:
    err = error_of(f"{server}{path}", policy=LOCAL)
    assert (err.reason, err.transient) == (reason, transient)
    assert f"HTTP {status}" in str(err)


def test_http_timeout_is_transient(server: str) -> None:
    start = time.monotonic()
    err = error_of(f"{server}/slow", ImageLimits(fetch_timeout_s=0.5), policy=LOCAL)
    elapsed = time.monotonic() - start

    assert (err.reason, err.transient) == ("fetch_timeout", True)
    assert elapsed < SLOW_S - 0.5


@pytest.mark.parametrize(
    ("path", "message"),
    [("/huge", "declares 5,000 bytes"), ("/stream", "sent over the limit of 1,000 bytes")],
)
def test_http_body_over_limit(server: str, path: str, message: str) -> None:
    with pytest.raises(ImageError) as info:
        read_image_bytes(f"{server}{path}", HUGE_LIMITS, policy=LOCAL)  # fails while reading
    assert (info.value.reason, info.value.transient) == ("too_large", False)
    assert message in str(info.value)


def test_http_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before we connect
    err = error_of(f"http://127.0.0.1:{port}/ok.jpg", policy=LOCAL)
    assert (err.reason, err.transient) == ("fetch_failed", True)
