"""Catalogue import: a catalogue file in, embedding jobs out, and an account of every row.

1. ``plan_import`` reads and validates the file (``pipeline.ingest.catalogue``), copies every local
   image file into the content store (so the API's demo page can show it, and so its SHA-256
   becomes part of the product's ``content_hash``), rejects rows whose image file cannot be read,
   and, in changed-only mode, drops products whose ``content_hash`` is already indexed.
2. ``run_import`` enqueues the products in batches (each job holds one merchant's products, so a
   merchant may read the status of any job that holds its products; every product is in the
   pending journal before its job is sent, see ``pipeline.journal``), then waits for the jobs
   and turns every failed product back into a rejected row with its reason.

Images are decoded by the workers, not here: a broken image is reported by its job (and in the
ingest-errors index) and lands in the reject report after the wait. Re-running an import is
idempotent: document ids are derived from merchant, product and image hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from elasticsearch import AuthorizationException, Elasticsearch, NotFoundError

from pipeline.documents import Product
from pipeline.images import ImageError, ImageLimits, is_http_url, read_image_bytes
from pipeline.ingest.catalogue import IMAGE, INDEXING, Catalogue, RejectedRow, read_catalogue
from pipeline.storage import ImageStore

HASH_LOOKUP_CHUNK = 1000


@dataclass
class ImportPlan:
    catalogue: Catalogue
    products: list[Product] = field(default_factory=list)  # to enqueue
    rejected: list[RejectedRow] = field(default_factory=list)  # validation and image files
    unchanged: list[Product] = field(default_factory=list)  # skipped in changed-only mode


@dataclass
class ImportProgress:
    total: int  # products to enqueue
    enqueued: int = 0
    done: int = 0  # finished products, indexed or failed
    failed: int = 0


@dataclass
class ImportResult:
    plan: ImportPlan
    job_ids: list[str] = field(default_factory=list)
    indexed: list[Product] = field(default_factory=list)
    failed: list[RejectedRow] = field(default_factory=list)  # products that the workers refused
    pending: list[Product] = field(default_factory=list)  # not waited for, or still running

    @property
    def rejected(self) -> list[RejectedRow]:
        """Every row that did not make it: the reject report."""
        return sorted([*self.plan.rejected, *self.failed], key=lambda r: r.row)


def store_local_images(
    product: Product, store: ImageStore, limits: ImageLimits
) -> tuple[Product, str | None]:
    """The product with its local image paths replaced by content-store paths, or the reason
    one of its image files cannot be read. URLs are left for the worker to fetch."""
    images = []
    for image in product.images:
        if is_http_url(image):
            images.append(image)
            continue
        try:
            data = read_image_bytes(image, limits)
        except ImageError as exc:
            return product, f"{exc.reason}: {exc.message}"
        images.append(str(store.put(data).path))
    return product.model_copy(update={"images": images}), None


def content_hash_query(hashes: Sequence[str]) -> dict[str, Any]:
    """Search body: which of these content hashes are indexed (one bucket per found hash)."""
    return {
        "size": 0,
        "query": {"terms": {"content_hash": list(hashes)}},
        "aggs": {"found": {"terms": {"field": "content_hash", "size": max(1, len(hashes))}}},
    }


def indexed_content_hashes(es: Elasticsearch, alias: str, hashes: Iterable[str]) -> set[str]:
    """The hashes among ``hashes`` already indexed. Workers do not refresh after a write, so
    the index is refreshed first: an import that just finished counts (read-your-write)."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    try:
        es.indices.refresh(index=alias)
    except NotFoundError:  # no index yet: nothing is indexed
        return set()
    except AuthorizationException:  # may not refresh: what is searchable still counts
        pass
    for start in range(0, len(wanted), HASH_LOOKUP_CHUNK):
        chunk = wanted[start : start + HASH_LOOKUP_CHUNK]
        try:
            response = es.search(index=alias, **content_hash_query(chunk))
        except NotFoundError:  # no index yet: nothing is indexed
            return set()
        found.update(b["key"] for b in response["aggregations"]["found"]["buckets"])
    return found


def plan_import(
    path: Path,
    *,
    store: ImageStore,
    limits: ImageLimits,
    indexed_hashes: Callable[[list[str]], set[str]] | None = None,
) -> ImportPlan:
    """Read, validate and prepare a catalogue. ``indexed_hashes`` (changed-only mode) says which
    content hashes are already indexed; products with one of them are skipped."""
    catalogue = read_catalogue(path)
    plan = ImportPlan(catalogue, rejected=list(catalogue.rejected))
    for product in catalogue.products:
        stored, problem = store_local_images(product, store, limits)
        if problem:
            row = catalogue.row_of(product)
            plan.rejected.append(
                RejectedRow(row, product.product_id, problem, product.merchant_id, IMAGE)
            )
        else:
            plan.products.append(stored)
    if indexed_hashes is not None and plan.products:
        hashes = [p.content_hash for p in plan.products]
        known = indexed_hashes(hashes)
        candidates = list(zip(plan.products, hashes, strict=True))
        plan.unchanged = [p for p, h in candidates if h in known]
        plan.products = [p for p, h in candidates if h not in known]
    return plan


def batches_by_merchant(products: Sequence[Product], batch_size: int) -> list[list[Product]]:
    """Batches of at most ``batch_size`` products, never mixing merchants."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    by_merchant: dict[str, list[Product]] = {}
    for product in products:
        by_merchant.setdefault(product.merchant_id, []).append(product)
    return [
        group[start : start + batch_size]
        for group in by_merchant.values()
        for start in range(0, len(group), batch_size)
    ]


def run_import(
    celery_app: Celery,
    plan: ImportPlan,
    *,
    batch_size: int = 8,
    wait: bool = True,
    timeout_s: float = 3600,
    on_progress: Callable[[ImportProgress], None] | None = None,
) -> ImportResult:
    """Enqueue the plan's products and (unless ``wait`` is False) wait for every job."""
    from pipeline.jobs import enqueue, job_statuses, wait_for_jobs

    result = ImportResult(plan)
    progress = ImportProgress(total=len(plan.products))
    batches: dict[str, list[Product]] = {}
    for batch in batches_by_merchant(plan.products, batch_size):
        [job_id] = enqueue(celery_app, batch, batch_size=len(batch))
        batches[job_id] = batch
        progress.enqueued += len(batch)
        if on_progress:
            on_progress(progress)
    result.job_ids = list(batches)
    if not wait or not batches:
        result.pending = list(plan.products) if not wait else []
        return result

    def update(statuses: dict) -> None:
        finished = [(batches[j], s) for j, s in statuses.items() if s.finished]
        progress.done = sum(len(batch) for batch, _ in finished)
        progress.failed = sum(
            len(batch) if not s.results else sum(r.get("status") == "failed" for r in s.results)
            for batch, s in finished
        )
        if on_progress:
            on_progress(progress)

    try:
        statuses = wait_for_jobs(
            celery_app, result.job_ids, timeout_s=timeout_s, on_progress=update
        )
    except TimeoutError:
        statuses = job_statuses(celery_app, result.job_ids)
    rows = plan.catalogue.rows
    for job_id, batch in batches.items():
        status = statuses[job_id]
        if not status.finished:
            result.pending.extend(batch)
            continue
        by_key = {(r["merchant_id"], r["product_id"]): r for r in status.results}
        for product in batch:
            key = (product.merchant_id, product.product_id)
            outcome = by_key.get(key)
            if outcome and outcome.get("status") == "indexed":
                result.indexed.append(product)
                continue
            if outcome:
                reason = f"{outcome.get('reason')}: {outcome.get('message')}"
            else:  # the whole job failed (an exception, not a per-product result)
                reason = f"job_failed: {status.error}"
            result.failed.append(
                RejectedRow(rows[key], product.product_id, reason, product.merchant_id, INDEXING)
            )
    return result
