"""Celery tasks: parse the message, call ``pipeline``, retry transient faults, report.

Transient faults (Elasticsearch or an image host unreachable) are retried with exponential
back-off and jitter, for the affected products only. Permanent faults (corrupt, unsupported or
oversized image, invalid product) are not retried: they are written to the ingest-errors index
and returned in the job result.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from celery import Task, current_app, shared_task
from celery.signals import after_setup_logger, worker_process_init
from celery.utils.time import get_exponential_backoff_interval
from elasticsearch import ApiError, TransportError
from pydantic import ValidationError

from pipeline.documents import Product
from pipeline.es import indexing
from pipeline.ingest.ingestor import FAILED, Ingestor, ProductResult
from pipeline.jobs import DELETE_TASK, INDEX_TASK, VitrineCelery
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

_ingestor: Ingestor | None = None
_ingestor_lock = threading.Lock()


def _settings(app: Any) -> VitrineSettings:
    return cast(VitrineCelery, app).settings


def ingestor() -> Ingestor:
    """This process's ingestor (ES client, encoder, processors), created once."""
    global _ingestor
    with _ingestor_lock:
        if _ingestor is None:
            _ingestor = Ingestor(_settings(current_app))
        return _ingestor


@worker_process_init.connect
def _load_model_after_fork(**_: Any) -> None:
    """Load the model in each pool process after fork, before the first task arrives. Celery
    kills a process not started within ``worker_proc_alive_timeout_s``: say when it is close."""
    started = time.monotonic()
    ingestor().load_model()
    took, limit = time.monotonic() - started, _settings(current_app).worker_proc_alive_timeout_s
    log.log(
        logging.WARNING if took > limit / 2 else logging.INFO,
        "model loaded in %.1f s (worker_proc_alive_timeout_s %.0f s)",
        took,
        limit,
    )


@after_setup_logger.connect
def _quiet_http_clients(**_: object) -> None:
    """Keep worker logs about products, not about every HTTP request to Elasticsearch."""
    for name in ("elastic_transport", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _can_retry(task: Task) -> bool:
    return bool(task.request.retries < _settings(task.app).task_max_retries)


def _retry(task: Task, **kwargs: Any) -> Exception:
    """Celery's retry with exponential back-off and full jitter, bounded by the settings."""
    settings = _settings(task.app)
    countdown = get_exponential_backoff_interval(
        factor=settings.task_retry_backoff_s,
        retries=task.request.retries,
        maximum=settings.task_retry_backoff_max_s,
        full_jitter=True,
    )
    return cast(
        Exception, task.retry(countdown=countdown, max_retries=settings.task_max_retries, **kwargs)
    )


def _is_transient_es_error(exc: Exception) -> bool:
    if isinstance(exc, TransportError):  # connection refused, timeout
        return True
    return isinstance(exc, ApiError) and exc.meta.status in (429, 502, 503, 504)


def _parse(payloads: list[dict]) -> tuple[list[Product], list[ProductResult]]:
    products, invalid = [], []
    for payload in payloads:
        try:
            products.append(Product.model_validate(payload))
        except ValidationError as exc:
            invalid.append(
                ProductResult(
                    merchant_id=str(payload.get("merchant_id", "")),
                    product_id=str(payload.get("product_id", "")),
                    status=FAILED,
                    reason="invalid_product",
                    message=str(exc),
                )
            )
    return products, invalid


def _ingest(task: Task, payloads: list[dict], done: list[dict]) -> list[dict]:
    products, results = _parse(payloads)
    runtime = ingestor()
    try:
        results += runtime.ingest(products) if products else []
    except Exception as exc:
        if _is_transient_es_error(exc) and _can_retry(task):
            log.warning("job %s: Elasticsearch unavailable (%s), retrying", task.request.id, exc)
            raise _retry(task, exc=exc) from exc
        raise
    transient = {
        (r.merchant_id, r.product_id) for r in results if r.status == FAILED and r.transient
    }
    if transient and _can_retry(task):
        finished = [r.to_dict() for r in results if (r.merchant_id, r.product_id) not in transient]
        retry_payloads = [p for p in products if (p.merchant_id, p.product_id) in transient]
        log.warning(
            "job %s: transient failure for %d product(s), retrying", task.request.id, len(transient)
        )
        raise _retry(
            task,
            args=[[p.model_dump() for p in retry_payloads]],
            kwargs={"done": done + finished},
        )
    runtime.record_failures(results, job_id=task.request.id, attempts=task.request.retries + 1)
    return done + [r.to_dict() for r in results]


@shared_task(bind=True, name=INDEX_TASK)
def index_products(self: Task, products: list[dict], done: list[dict] | None = None) -> list[dict]:
    """Embed and index several products in one forward pass; one result per product."""
    return _ingest(self, products, done or [])


@shared_task(bind=True, name=DELETE_TASK)
def delete_product(self: Task, merchant_id: str, product_id: str) -> dict:
    """Remove every document of a product."""
    runtime = ingestor()
    try:
        deleted = indexing.delete_product(runtime.es, runtime.settings, merchant_id, product_id)
    except Exception as exc:
        if _is_transient_es_error(exc):
            raise _retry(self, exc=exc) from exc
        raise
    log.info("deleted product %s/%s (%d documents)", merchant_id, product_id, deleted)
    return {
        "merchant_id": merchant_id,
        "product_id": product_id,
        "status": "deleted",
        "deleted": deleted,
    }
