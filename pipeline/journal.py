"""Durable records on the shared filesystem: accepted jobs not yet finished, and error records
waiting for Elasticsearch.

``PendingJournal`` is what makes "accepted" mean durable. ``pipeline.jobs`` writes one record per
product (the product itself, or a delete) *before* it sends the Celery message, and the API and
the importer answer only after that. Workers remove a record when its product is indexed or has
failed for good; the reconciler (``pipeline.ingest.reconcile``) sends again whatever is left over
from a job that vanished or whose message Redis lost, that failed for a transient reason, or that a
worker started and has not finished in time.

``ErrorSpool`` keeps ingest-error records that could not be written because Elasticsearch was
down; the reconciler writes them to the ingest-errors index once it is back.

Both live in one folder that the API and every worker must share (like the image store). Every
write is atomic and on disk before it returns: a temporary file, ``fsync``, ``os.replace``, then an
``fsync`` of the folder, so a crash leaves either the old record or the new one, never half a file.

Record files are named ``<product key>.<revision>.json``: the product key is a hash of merchant
and product id (ids may hold any character the id pattern allows), the revision is the product's
``content_hash`` (or ``delete``). A newer record of the same product supersedes older ones.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.documents import Product

INDEX = "index"
DELETE = "delete"


def product_key(merchant_id: str, product_id: str) -> str:
    """A file-name-safe key, injective in practice (length-prefixed parts, SHA-256)."""
    raw = f"{len(merchant_id)}:{merchant_id}{len(product_id)}:{product_id}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _write_atomically(path: Path, data: dict[str, Any], *, sync_dir: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:  # removed meanwhile (finished)
        return None


@dataclass(frozen=True)
class PendingRecord:
    """One accepted, unfinished piece of work: index ``product`` or delete a product."""

    kind: str  # INDEX | DELETE
    merchant_id: str
    product_id: str
    job_id: str
    accepted_at: float  # epoch seconds of the first acceptance
    sent_at: float  # epoch seconds of the latest send to the queue
    sends: int = 1  # how often it was sent (1 = the original job)
    product: dict[str, Any] | None = None  # the job payload, for INDEX
    #: where its job was sent (None in records from before queues were noted)
    queue: str | None = None

    @property
    def revision(self) -> str:
        return DELETE if self.kind == DELETE else Product.model_validate(self.product).content_hash

    @property
    def filename(self) -> str:
        return f"{product_key(self.merchant_id, self.product_id)}.{self.revision[:32]}.json"


class PendingJournal:
    """Accepted work that is not finished yet, one file per product revision."""

    def __init__(self, root: Path):
        self.root = Path(root) / "pending"

    def record(self, records: Sequence[PendingRecord]) -> None:
        """Store records durably (one folder sync for all). Older records of the same products
        are dropped when the journal is read (``pending``), not here: looking for them here
        listed the folder for every product, which made accepting a catalogue quadratic in
        the backlog."""
        for record in records:
            _write_atomically(self.root / record.filename, asdict(record), sync_dir=False)
        if records:
            _fsync_dir(self.root)

    def resent(self, record: PendingRecord, *, at: float) -> PendingRecord:
        """Note that a record was sent again; a record finished meanwhile stays finished."""
        updated = replace(record, sent_at=at, sends=record.sends + 1)
        if (self.root / record.filename).exists():
            _write_atomically(self.root / record.filename, asdict(updated))
        return updated

    def finish_product(self, product: Product) -> None:
        """The product (this revision) is indexed or failed for good."""
        self._remove(product.merchant_id, product.product_id, product.content_hash)

    def finish_delete(self, merchant_id: str, product_id: str) -> None:
        self._remove(merchant_id, product_id, DELETE)

    def finish(self, record: PendingRecord) -> None:
        self._remove(record.merchant_id, record.product_id, record.revision)

    def _remove(self, merchant_id: str, product_id: str, revision: str) -> None:
        path = self.root / f"{product_key(merchant_id, product_id)}.{revision[:32]}.json"
        if path.exists():
            path.unlink(missing_ok=True)
            _fsync_dir(self.root)

    def pending(self) -> list[PendingRecord]:
        """Every unfinished record, oldest acceptance first. The newest accepted revision of a
        product is the one that counts: records of the product accepted before it are removed
        (sending them again would bring back what the merchant replaced or deleted)."""
        by_product: dict[tuple[str, str], list[tuple[Path, PendingRecord]]] = {}
        for path in self.root.glob("*.json"):
            data = _read(path)
            if data is not None:
                record = PendingRecord(**data)
                by_product.setdefault((record.merchant_id, record.product_id), []).append(
                    (path, record)
                )
        current = []
        for records in by_product.values():
            newest = max(record.accepted_at for _, record in records)
            for path, record in records:
                if record.accepted_at < newest:
                    path.unlink(missing_ok=True)
                else:
                    current.append(record)
        return sorted(current, key=lambda r: r.accepted_at)

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        """A lock held by at most one reconciler across processes sharing the folder; yields
        False (and holds nothing) when another one has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root.parent / "reconcile.lock").open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class ErrorSpool:
    """Ingest-error records kept on disk while Elasticsearch cannot take them."""

    def __init__(self, root: Path):
        self.root = Path(root) / "errors"

    def put(self, doc_id: str, document: dict[str, Any]) -> None:
        name = hashlib.sha256(doc_id.encode()).hexdigest()[:32]
        _write_atomically(self.root / f"{name}.json", {"id": doc_id, "document": document})

    def items(self) -> Iterator[tuple[Path, str, dict[str, Any]]]:
        """``(file, document id, document)`` of every spooled record, oldest first."""
        paths = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in paths:
            data = _read(path)
            if data is not None:
                yield path, data["id"], data["document"]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
