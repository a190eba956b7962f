import hashlib
import os

import pytest

from pipeline.storage import ImageStore, InvalidDigest


def test_put_is_content_addressed_and_idempotent(tmp_path):
    store = ImageStore(tmp_path / "images")
    data = b"\x89PNG fake bytes"
    sha = hashlib.sha256(data).hexdigest()
    first = store.put(data)
    assert first.created and first.sha256 == sha
    assert first.path == tmp_path / "images" / sha[:2] / sha
    assert first.path.read_bytes() == data
    os.utime(first.path, ns=(1, 1))
    second = store.put(data)
    assert not second.created and second.path == first.path
    assert first.path.stat().st_mtime_ns == 1  # not rewritten
    assert sorted(p.name for p in first.path.parent.iterdir()) == [sha]  # no temp files


def test_a_truncated_file_is_replaced(tmp_path):
    store = ImageStore(tmp_path)
    data = b"0123456789"
    path = store.put(data).path
    path.write_bytes(b"0123")
    assert store.put(data).created and path.read_bytes() == data


def test_get_and_invalid_digests(tmp_path):
    store = ImageStore(tmp_path)
    assert store.get("a" * 64) is None
    stored = store.put(b"x")
    assert store.get(stored.sha256) == stored.path
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, ""):
        with pytest.raises(InvalidDigest):
            store.get(bad)
