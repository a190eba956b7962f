"""Content-addressed store of original product images.

An image is kept once, under the SHA-256 of its bytes (``<root>/<sha[:2]>/<sha>``), whoever
uploads it and however often: re-uploading the same bytes writes nothing. Writes are atomic (a
temporary file in the same folder, then ``os.replace``), so a reader never sees half a file and
two concurrent writers of the same image both end with the same complete file.

The API stores uploads here and hands the stored path to the embedding job; the catalogue import
stores local image files here too, so the demo page can show every image through
``GET /v1/images/{sha256}``. API and workers must see the same folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class InvalidDigest(ValueError):
    """Not a lower-case hex SHA-256."""


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    path: Path
    created: bool  # False when the same bytes were already stored
    num_bytes: int


class ImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if not SHA256_PATTERN.match(sha256):
            raise InvalidDigest(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def get(self, sha256: str) -> Path | None:
        """Path of a stored image, or None if it is not in the store."""
        path = self.path_for(sha256)
        return path if path.is_file() else None

    def put(self, data: bytes) -> StoredImage:
        """Store bytes under their SHA-256; no write at all if they are already stored."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return StoredImage(sha256, path, created=False, num_bytes=len(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredImage(sha256, path, created=True, num_bytes=len(data))
