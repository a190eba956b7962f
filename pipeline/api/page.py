"""The demo search page: ``/`` and its two static files, plain HTML/CSS/JS with no build step.

The page calls ``POST /v1/search`` and shows images through ``GET /v1/images/{sha256}`` (or the
merchant's own image URL). Only the files listed here are served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise HTTPException(404, "not found")
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])
