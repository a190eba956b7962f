"""Celery tasks: parse the message, call ``pipeline``, retry transient faults, report.

Transient faults (Elasticsearch or an image host unreachable) are retried with exponential
back-off and full jitter, for the affected products only, for ``task_retry_budget_s`` seconds
from the job's first attempt: a time budget, not a count, so an outage of known length is
covered whatever the back-off draws. Permanent faults (corrupt, unsupported or oversized image,
invalid product) are not retried. Every final failure is written to the ingest-errors index
(spooled to disk while Elasticsearch is down) and returned in the job result.

A product's pending-journal record is removed once it is indexed or failed for good; a product
that still fails for a transient reason when the budget is spent keeps its record, and the
reconciler (run here at start-up and every ``reconcile_interval_s``) sends it again later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn, cast

from celery import Task, current_app, shared_task
from celery.signals import (
    after_setup_logger,
    celeryd_after_setup,
    task_failure,
    task_retry,
    task_success,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from celery.utils.time import get_exponential_backoff_interval
from prometheus_client import start_http_server
from pydantic import ValidationError
from redis import Redis, RedisError
from threadpoolctl import threadpool_limits

from pipeline import metrics
from pipeline.documents import Product
from pipeline.es import indexing
from pipeline.es.client import is_transient_es_error, make_client
from pipeline.ingest.ingestor import FAILED, Ingestor, ProductResult
from pipeline.ingest.reconcile import reconcile
from pipeline.jobs import (
    ADVERT_TTL_S,
    DELETE_TASK,
    INDEX_TASK,
    SENT_AT_HEADER,
    VitrineCelery,
    advertise_model,
    queue_depth,
    withdraw_model,
)
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

_ingestor: Ingestor | None = None
_ingestor_lock = threading.Lock()
_stop_reconciler = threading.Event()
_stop_advertising = threading.Event()
_node = "celery"  # this worker's node name, set in the main process before the pool forks
_main_pid = os.getpid()  # the worker's main process (worker_init sets it there, before forking)
#: The pool runs jobs in threads of the main process: one model, shared forward passes.
_threaded = False


def _app(app: Any) -> VitrineCelery:
    return cast(VitrineCelery, app)


def _settings(app: Any) -> VitrineSettings:
    return _app(app).settings


def ingestor() -> Ingestor:
    """This process's ingestor (ES client, encoder, processors), created once."""
    global _ingestor
    with _ingestor_lock:
        if _ingestor is None:
            _ingestor = Ingestor(_settings(current_app), batch_across_jobs=_threaded)
        return _ingestor


@worker_process_init.connect
def _load_model_after_fork(**_: Any) -> None:
    """Load the model in each pool process after fork (prefork, solo), before the first task
    arrives. Celery kills a process not started within ``worker_proc_alive_timeout_s``: say
    when it is close. A threads pool loads it in the worker process instead."""
    _prepare_process()


def _prepare_process() -> None:
    """Load the model, check the write index holds it, and advertise it. numpy's BLAS gets
    one thread: the pool's processes or job threads already fill the cores, and the image
    work's small matrix products split over cores that other jobs hold only wait (a
    fingerprint took 13-18 ms instead of 4.8 with two processes at once, measured)."""
    threadpool_limits(1, user_api="blas")
    started = time.monotonic()
    try:
        ingestor().load_model()
    except Exception as exc:
        _stop_worker(f"the model could not be loaded: {exc}")
    took, limit = time.monotonic() - started, _settings(current_app).worker_proc_alive_timeout_s
    log.log(
        logging.WARNING if took > limit / 2 else logging.INFO,
        "model loaded in %.1f s (worker_proc_alive_timeout_s %.0f s)",
        took,
        limit,
    )
    _refuse_unless_index_matches()
    threading.Thread(target=_advertise, name="vitrine-advert", daemon=True).start()


def _stop_worker(reason: str) -> NoReturn:
    """Say why and stop the whole worker (cold shutdown, exit status 1) before it takes a job:
    a worker without its model, or whose model no write index holds, would fail every job
    while answering pings as if healthy. Its jobs stay queued for a worker that can run them."""
    log.error("refusing to consume queue %s: %s", _settings(current_app).queue, reason)
    if os.getpid() != _main_pid:  # a pool process: stop its worker too
        os.kill(_main_pid, signal.SIGQUIT)
    os._exit(1)


def _refuse_unless_index_matches() -> None:
    """Stop the worker when no write index holds its model. Elasticsearch unreachable is not a
    reason to stop: jobs retry."""
    try:
        ingestor().ensure_index()
    except (indexing.IndexModelMismatch, indexing.IndexNotReady) as exc:
        _stop_worker(str(exc))
    except Exception as exc:
        if not is_transient_es_error(exc):
            raise
        log.warning("could not check the index at start-up (%s); jobs will retry", exc)


@worker_process_shutdown.connect
def _log_profile(**_: Any) -> None:
    """Say where this process's ingest time went (see ``pipeline.profile``)."""
    if _ingestor is not None:
        _ingestor.log_profile()


@worker_init.connect
def _node_name_and_exporter(sender: Any = None, **_: Any) -> None:
    """In the main process, before the pool forks: its pid, the node name (for the model
    advert) and the metrics exporter, which serves what every pool process records."""
    global _node, _threaded, _main_pid
    _main_pid = os.getpid()
    _node = getattr(sender, "hostname", None) or _node
    _threaded = "thread" in str(getattr(sender, "pool_cls", ""))
    _start_exporter(sender)


@celeryd_after_setup.connect
def _load_model_in_threads_pool(**_: Any) -> None:
    """A threads pool has no pool processes: its worker loads the model once logging is set
    up and before it consumes a job."""
    if _threaded:
        _prepare_process()


def _start_exporter(sender: Any) -> None:
    settings = _settings(sender.app) if sender is not None else None
    if settings is not None and settings.worker_metrics_port is not None:
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            log.warning("PROMETHEUS_MULTIPROC_DIR is not set: only this process's metrics show")
        broker = Redis.from_url(settings.redis_url, socket_timeout=2)
        served = metrics.registry(
            queue_depth(broker, settings.queue),
            multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        )
        start_http_server(
            settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=served
        )
        log.info("metrics on %s:%d", settings.worker_metrics_host, settings.worker_metrics_port)


def _advertise() -> None:
    """Tell ``/healthz`` which model this pool process embeds with, until it stops."""
    settings = _settings(current_app)
    client = Redis.from_url(settings.redis_url, socket_timeout=5)
    model_id = ingestor().encoder().model_id
    while True:
        try:
            advertise_model(client, _node, model_id)
        except RedisError as exc:  # Redis down: the next refresh tries again
            log.warning("model advert failed (%s)", exc)
        if _stop_advertising.wait(ADVERT_TTL_S / 3):
            return


@worker_process_shutdown.connect
def _withdraw_advert(pid: int | None = None, **_: Any) -> None:
    _stop_advertising.set()
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.process_dead(pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    with contextlib.suppress(RedisError):  # else the advert expires within ADVERT_TTL_S
        withdraw_model(Redis.from_url(_settings(current_app).redis_url, socket_timeout=2), _node)


@after_setup_logger.connect
def _quiet_http_clients(**_: object) -> None:
    """Keep worker logs about products, not about every HTTP request to Elasticsearch."""
    for name in ("elastic_transport", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


@worker_ready.connect
def _start_reconciler(sender: Any = None, **_: Any) -> None:
    """Reconcile once now and then periodically, in a thread of the worker's main process."""
    app = _app(sender.app)
    _stop_reconciler.clear()
    threading.Thread(
        target=_reconcile_periodically, args=(app,), name="vitrine-reconciler", daemon=True
    ).start()


@worker_shutdown.connect
def _stop_reconciling(**_: Any) -> None:
    _stop_reconciler.set()


@worker_shutdown.connect
def _shut_down_threads_pool(**_: Any) -> None:
    """What ``worker_process_shutdown`` does for a pool process: a threads pool has none."""
    if _threaded:
        _log_profile()
        _withdraw_advert()


_TASK_LABELS = {INDEX_TASK: "index", DELETE_TASK: "delete"}


@task_success.connect
def _count_job(sender: Any = None, result: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) in _TASK_LABELS:
        results = result if isinstance(result, list) else [result]
        metrics.observe_job(_TASK_LABELS[sender.name], results)


@task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) in _TASK_LABELS:
        metrics.JOBS.labels(_TASK_LABELS[sender.name], "retrying").inc()


@task_failure.connect
def _count_error(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) in _TASK_LABELS:
        metrics.JOBS.labels(_TASK_LABELS[sender.name], "error").inc()


def _reconcile_periodically(app: VitrineCelery) -> None:
    es = make_client(app.settings)
    while True:
        try:
            report = reconcile(app, es)
            if report.resent or report.finished or report.gave_up or report.errors_flushed:
                log.info("reconciled: %s", report.summary())
        except Exception as exc:  # Redis or the disk unavailable: try again next period
            log.warning("reconciler failed (%s: %s); next try later", type(exc).__name__, exc)
        if _stop_reconciler.wait(app.settings.reconcile_interval_s):
            return


def _budget_left(task: Task, since: float) -> float:
    return _settings(task.app).task_retry_budget_s - (time.time() - since)


def _retry(task: Task, since: float, **kwargs: Any) -> Exception:
    """Celery's retry with exponential back-off and full jitter, never past the budget."""
    settings = _settings(task.app)
    countdown = get_exponential_backoff_interval(
        factor=settings.task_retry_backoff_s,
        retries=task.request.retries,
        maximum=settings.task_retry_backoff_max_s,
        full_jitter=True,
    )
    kwargs["kwargs"] = {**kwargs.get("kwargs", task.request.kwargs or {}), "since": since}
    return cast(
        Exception,
        task.retry(
            countdown=min(countdown, max(0.0, _budget_left(task, since))),
            **kwargs,
        ),
    )


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


def _failed(
    products: Sequence[Product], exc: Exception, *, reason: str, transient: bool = True
) -> list[ProductResult]:
    """Results for products that a whole-job error stopped."""
    message = f"{type(exc).__name__}: {exc}"
    return [
        ProductResult(
            p.merchant_id, p.product_id, FAILED, reason=reason, message=message, transient=transient
        )
        for p in products
    ]


def _settle(task: Task, products: Sequence[Product], results: Sequence[ProductResult]) -> None:
    """Record final failures, and close the journal record of every product that is indexed
    or failed for good (transient failures keep theirs, for the reconciler)."""
    ingestor().record_failures(results, job_id=task.request.id, attempts=task.request.retries + 1)
    journal = _app(task.app).pending_journal
    by_key = {(r.merchant_id, r.product_id): r for r in results}
    for product in products:
        result = by_key.get((product.merchant_id, product.product_id))
        if result is not None and not (result.status == FAILED and result.transient):
            journal.finish_product(product)


def _queue_wait_s(task: Task) -> float:
    """Seconds from sending to now of a first attempt (a retry's wait is its back-off)."""
    sent_at = getattr(task.request, SENT_AT_HEADER, None)
    if task.request.retries or not isinstance(sent_at, int | float):
        return 0.0
    return max(0.0, time.time() - sent_at)


def _ingest(
    task: Task, payloads: list[dict], done: list[dict], since: float, refresh: bool
) -> list[dict]:
    products, results = _parse(payloads)
    runtime = ingestor()
    try:
        waited = _queue_wait_s(task)
        if products:
            results += runtime.ingest(products, refresh=refresh or None, queue_wait_s=waited)
    except Exception as exc:
        if not is_transient_es_error(exc):
            _settle(task, products, _failed(products, exc, reason="job_error", transient=False))
            raise
        if _budget_left(task, since) > 0:
            log.warning("job %s: Elasticsearch unavailable (%s), retrying", task.request.id, exc)
            raise _retry(task, since, exc=exc) from exc
        results += _failed(products, exc, reason="elasticsearch_unavailable")
    transient = {
        (r.merchant_id, r.product_id) for r in results if r.status == FAILED and r.transient
    }
    if transient and _budget_left(task, since) > 0:
        finished = [r for r in results if (r.merchant_id, r.product_id) not in transient]
        _settle(task, products, finished)
        retry_payloads = [p for p in products if (p.merchant_id, p.product_id) in transient]
        log.warning(
            "job %s: transient failure for %d product(s), retrying", task.request.id, len(transient)
        )
        raise _retry(
            task,
            since,
            args=[[p.model_dump() for p in retry_payloads]],
            kwargs={"done": done + [r.to_dict() for r in finished]},
        )
    _settle(task, products, results)
    return done + [r.to_dict() for r in results]


# max_retries=None: no count; the time budget (checked before every retry) bounds retries.
@shared_task(bind=True, name=INDEX_TASK, max_retries=None)
def index_products(
    self: Task,
    products: list[dict],
    done: list[dict] | None = None,
    since: float | None = None,
    refresh: bool = False,
) -> list[dict]:
    """Embed and index several products in one forward pass; one result per product.
    ``refresh``: the sender wants them searchable when the job is done (read-your-write)."""
    return _ingest(self, products, done or [], since or time.time(), refresh)


@shared_task(bind=True, name=DELETE_TASK, max_retries=None)
def delete_product(
    self: Task, merchant_id: str, product_id: str, since: float | None = None
) -> dict:
    """Remove every document of a product."""
    since = since or time.time()
    runtime = ingestor()
    try:
        deleted = indexing.delete_product(runtime.es, runtime.settings, merchant_id, product_id)
    except Exception as exc:
        transient = is_transient_es_error(exc)
        if transient and _budget_left(self, since) > 0:
            raise _retry(self, since, exc=exc) from exc
        failure = ProductResult(
            merchant_id,
            product_id,
            FAILED,
            reason="delete_failed",
            message=str(exc),
            transient=transient,
        )
        runtime.record_failures([failure], job_id=self.request.id)
        if not transient:
            _app(self.app).pending_journal.finish_delete(merchant_id, product_id)
        raise
    _app(self.app).pending_journal.finish_delete(merchant_id, product_id)
    log.info("deleted product %s/%s (%d documents)", merchant_id, product_id, deleted)
    return {
        "merchant_id": merchant_id,
        "product_id": product_id,
        "status": "deleted",
        "deleted": deleted,
    }
