"""What public answers show of stored documents and jobs: an image kept in this server's store
appears as its public URL (``GET /v1/images/<sha256>``), never as the server path it is stored
under."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Request

from pipeline.images import is_http_url
from pipeline.storage import SHA256_PATTERN


def image_path(request: Request, sha256: str) -> str:
    """The public path of a stored image (the ``get_image`` route)."""
    return str(request.app.url_path_for("get_image", sha256=sha256))


def public_image_url(request: Request, url: Any, sha256: Any) -> str | None:
    """``url`` when it is the merchant's http(s) URL, else the stored image's public path."""
    if isinstance(url, str) and is_http_url(url):
        return url
    if isinstance(sha256, str) and SHA256_PATTERN.match(sha256):
        return image_path(request, sha256)
    return None


def without_server_paths(request: Request, text: str, store_root: Path) -> str:
    """``text`` (a job's failure message) with stored images' paths replaced by their public
    URLs and any other path under the store by a placeholder."""
    root = str(store_root).rstrip("/")
    stored = re.compile(re.escape(root) + r"/[0-9a-f]{2}/([0-9a-f]{64})")
    text = stored.sub(lambda match: image_path(request, match.group(1)), text)
    return text.replace(root, "<image store>")
