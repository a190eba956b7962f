"""The client side of the job queue: what upload paths call to start embedding jobs, and job
status look-ups. Tasks are sent by name, so callers need neither torch nor the model."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from pipeline.documents import Product

INDEX_TASK = "vitrine.index_products"
DELETE_TASK = "vitrine.delete_product"
QUEUED = "QUEUED"  # our own state, stored before sending so a job id is known at once


@dataclass
class JobStatus:
    job_id: str
    state: str  # unknown | queued | running | retrying | done | failed | partially_failed
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "partially_failed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "results": self.results,
            "error": self.error,
        }


def _description_key(job_id: str) -> str:
    return f"vitrine-job-description-{job_id}"


def _describe(products: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "products": [f"{merchant}/{product}" for merchant, product in products],
        "merchants": sorted({merchant for merchant, _ in products}),
    }


def _send(app: Celery, task: str, args: list, description: dict) -> str:
    """Send a task under a fresh job id, marked QUEUED before it is sent. The description is
    stored under its own key, kept as long as results are, so that ``job_description`` can tell
    whose job it is in every state."""
    job_id = str(uuid.uuid4())
    app.backend.store_result(job_id, None, QUEUED)
    app.backend.set(_description_key(job_id), json.dumps(description))
    app.send_task(task, args=args, task_id=job_id, queue=app.vitrine_settings.queue)
    return job_id


def job_description(app: Celery, job_id: str) -> dict[str, Any] | None:
    """``{"products": ["merchant/product", ...], "merchants": [...]}`` of a job sent by
    ``enqueue``/``enqueue_delete``, or None for an unknown (or expired) job."""
    raw = app.backend.get(_description_key(job_id))
    return json.loads(raw) if raw else None


def enqueue(app: Celery, products: Sequence[Product], *, batch_size: int = 1) -> list[str]:
    """Start embedding jobs for products, ``batch_size`` products per job; returns job ids.

    Re-sending a product is safe: its documents are overwritten, never duplicated.
    """
    job_ids = []
    for start in range(0, len(products), batch_size):
        chunk = products[start : start + batch_size]
        description = _describe([(p.merchant_id, p.product_id) for p in chunk])
        job_ids.append(_send(app, INDEX_TASK, [[p.model_dump() for p in chunk]], description))
    return job_ids


def enqueue_delete(app: Celery, merchant_id: str, product_id: str) -> str:
    return _send(
        app, DELETE_TASK, [merchant_id, product_id], _describe([(merchant_id, product_id)])
    )


def job_status(app: Celery, job_id: str) -> JobStatus:
    result = app.AsyncResult(job_id)
    state = result.state
    if state == QUEUED:
        return JobStatus(job_id, "queued")
    if state == "PENDING":
        return JobStatus(job_id, "unknown")
    if state == "STARTED":
        return JobStatus(job_id, "running")
    if state == "RETRY":
        return JobStatus(job_id, "retrying", error=str(result.info))
    if state == "FAILURE":
        return JobStatus(job_id, "failed", error=f"{type(result.info).__name__}: {result.info}")
    if state == "SUCCESS":
        value = result.result
        results = value if isinstance(value, list) else [value]
        failed = sum(1 for r in results if r.get("status") == "failed")
        verdict = (
            "done" if not failed else "failed" if failed == len(results) else "partially_failed"
        )
        return JobStatus(job_id, verdict, results=results)
    return JobStatus(job_id, state.lower())


def wait_for_jobs(
    app: Celery,
    job_ids: Sequence[str],
    *,
    timeout_s: float = 600,
    poll_s: float = 0.5,
    on_progress: Callable[[dict[str, JobStatus]], None] | None = None,
) -> dict[str, JobStatus]:
    """Poll until every job has finished (or the timeout passes); returns the last statuses."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, JobStatus] = {}
    pending = list(job_ids)
    while pending:
        for job_id in list(pending):
            statuses[job_id] = job_status(app, job_id)
            if statuses[job_id].finished:
                pending.remove(job_id)
        if on_progress:
            on_progress(statuses)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} job(s) not finished after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return statuses
