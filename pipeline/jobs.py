"""The job queue: the Celery application factory (Redis broker and result backend), what upload
paths call to start embedding jobs, and job status look-ups.

Tasks live in ``workers.tasks`` and are sent by name, so callers need neither torch nor the
model. Delivery is at-least-once; tasks are idempotent, so a redelivered job just rewrites the
same documents. How a job comes back when its worker dies:

- a pool process dies: the worker rejects the job and Redis requeues it at once
  (``task_reject_on_worker_lost``); the replacement process gets ``worker_proc_alive_timeout_s``
  to load the model before Celery gives up on it.
- the whole worker dies: its unacknowledged jobs wait in the queue's unacked set until they are
  ``visibility_timeout`` old, then the next sweep of any worker of the queue requeues them: at
  most ``redelivery_bound_s`` after delivery (a worker that starts later sweeps when it starts).

Accepted means durable: ``enqueue`` and ``enqueue_delete`` write every product to the pending
journal (``pipeline.journal``, on disk) before the message goes to Redis, so work survives the
loss of Redis; ``resend`` is how the reconciler sends such work again, under the same job id.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from redis import Redis

from pipeline.broker import TRANSPORT
from pipeline.documents import Product
from pipeline.journal import DELETE, INDEX, PendingJournal, PendingRecord
from pipeline.metrics import QueueDepth
from pipeline.settings import VitrineSettings

INDEX_TASK = "vitrine.index_products"
DELETE_TASK = "vitrine.delete_product"
#: The module that defines the tasks; a worker imports it by name (the library never does).
TASKS_MODULE = "workers.tasks"


class VitrineCelery(Celery):
    """A Celery app that carries the settings it was built from (workers read theirs here)."""

    def __init__(self, settings: VitrineSettings, **kwargs: Any) -> None:
        super().__init__("vitrine", broker=settings.redis_url, backend=settings.redis_url, **kwargs)
        self.settings = settings
        self.pending_journal = PendingJournal(settings.journal_root)


#: Slack for a received job waiting for a free pool process (one still loading the model, or
#: busy with another job whose retry fell due), on top of its retry wait and run time.
VISIBILITY_MARGIN_S = 60


def visibility_timeout_s(settings: VitrineSettings) -> int:
    """Age at which an unacknowledged job is handed to another worker. A worker holds a job,
    unacknowledged, while it waits for its retry countdown and while it runs, so the default
    covers the longest of both: shorter would run live jobs twice, longer delays recovery."""
    if settings.visibility_timeout_s is not None:
        return settings.visibility_timeout_s
    return settings.task_time_limit_s + settings.task_retry_backoff_max_s + VISIBILITY_MARGIN_S


def redelivery_bound_s(settings: VitrineSettings) -> int:
    """Longest time from receipt to requeue of a job whose worker died, while another worker
    of the queue runs: the visibility timeout plus one sweep interval. With none running, the
    job is requeued when the next one starts, if that is later."""
    return visibility_timeout_s(settings) + settings.unacked_restore_interval_s


def unacked_key(queue: str) -> str:
    """The Redis hash of the queue's unacknowledged messages. kombu keeps them in one hash per
    key name, and every consumer sweeps the whole hash with its own visibility timeout: one
    per queue keeps other deployments (or test sessions) on the same Redis from requeueing
    our live jobs."""
    return f"{queue}.unacked"


def queue_depth(redis: Redis, queue: str) -> QueueDepth:
    """The queue's depth and unacknowledged-job gauges, read from ``redis`` (the broker) at each
    scrape: for the API's ``/metrics`` and a worker's exporter."""
    return QueueDepth(redis, {queue: unacked_key(queue)})


def _broker_transport_options(settings: VitrineSettings) -> dict[str, Any]:
    unacked = unacked_key(settings.queue)
    return {
        "visibility_timeout": visibility_timeout_s(settings),
        "unacked_key": unacked,
        "unacked_index_key": f"{unacked}_index",
        "unacked_mutex_key": f"{unacked}_mutex",
        # The sweep holds this lock for milliseconds; a worker killed while holding it would
        # otherwise stop every sweep for kombu's default 300 s. Overlapping sweeps are safe:
        # each requeue is a transaction that moves a message only if it is still unacked.
        "unacked_mutex_expire": 30,
        # Sweep every interval (kombu's default scans on every 10th tick of 10 s).
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
    }


def create_celery(settings: VitrineSettings, *, worker: bool = False) -> VitrineCelery:
    """The Celery app for these settings; ``worker=True`` also loads the task module."""
    app = VitrineCelery(settings)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_default_queue=settings.queue,
        task_track_started=True,
        result_extended=True,
        result_expires=7 * 24 * 3600,
        broker_transport=TRANSPORT,
        broker_transport_options=_broker_transport_options(settings),
        worker_proc_alive_timeout=settings.worker_proc_alive_timeout_s,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        imports=[TASKS_MODULE] if worker else [],
    )
    return app


QUEUED = "QUEUED"  # our own state, stored before sending so a job id is known at once
#: Message header with the time a job was sent (epoch seconds): workers profile queue wait.
SENT_AT_HEADER = "vitrine_sent_at"


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


def _send(
    app: VitrineCelery,
    task: str,
    args: list,
    description: dict,
    job_id: str | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    sent_at: float | None = None,
) -> str:
    """Send a task under ``job_id`` (a fresh one by default) to ``queue`` (default the app's),
    marked QUEUED before it is sent. The description is stored under its own key, kept as long
    as results are, so that ``job_description`` can tell whose job it is in every state.
    ``sent_at`` (default now) is the send time its journal records note, for ``QueueView``."""
    job_id = job_id or str(uuid.uuid4())
    app.backend.store_result(job_id, None, QUEUED)
    app.backend.set(_description_key(job_id), json.dumps(description))
    app.send_task(
        task,
        args=args,
        kwargs=kwargs,
        task_id=job_id,
        queue=queue or app.settings.queue,
        headers={SENT_AT_HEADER: sent_at or time.time()},
    )
    return job_id


def job_description(app: Celery, job_id: str) -> dict[str, Any] | None:
    """``{"products": ["merchant/product", ...], "merchants": [...]}`` of a job sent by
    ``enqueue``/``enqueue_delete``, or None for an unknown (or expired) job."""
    raw = app.backend.get(_description_key(job_id))
    return json.loads(raw) if raw else None


def enqueue(
    app: VitrineCelery,
    products: Sequence[Product],
    *,
    batch_size: int = 1,
    refresh: bool = False,
) -> list[str]:
    """Start embedding jobs for products, ``batch_size`` products per job; returns job ids.

    Each product is in the pending journal before its job is sent. Re-sending a product is
    safe: its documents are overwritten, never duplicated. ``refresh`` asks for read-your-write:
    a finished job's documents are searchable at once (it costs the worker a refresh); without
    it they are within the index's refresh interval.
    """
    job_ids = []
    for start in range(0, len(products), batch_size):
        chunk = products[start : start + batch_size]
        job_id, now = str(uuid.uuid4()), time.time()
        payloads = [p.model_dump() for p in chunk]
        app.pending_journal.record(
            [
                PendingRecord(
                    INDEX,
                    p.merchant_id,
                    p.product_id,
                    job_id,
                    now,
                    now,
                    product=data,
                    queue=app.settings.queue,
                )
                for p, data in zip(chunk, payloads, strict=True)
            ]
        )
        description = _describe([(p.merchant_id, p.product_id) for p in chunk])
        kwargs = {"refresh": True} if refresh else None
        job_ids.append(_send(app, INDEX_TASK, [payloads], description, job_id, kwargs, sent_at=now))
    return job_ids


def enqueue_checked(
    app: VitrineCelery, products: Sequence[Product], *, batch_size: int
) -> list[str]:
    """Index jobs outside the pending journal, for a sender that checks the outcome in the
    index itself and sends again what is missing (the re-embed); returns job ids."""
    return [
        _send(
            app,
            INDEX_TASK,
            [[p.model_dump() for p in chunk]],
            _describe([(p.merchant_id, p.product_id) for p in chunk]),
        )
        for chunk in (products[i : i + batch_size] for i in range(0, len(products), batch_size))
    ]


def enqueue_delete(app: VitrineCelery, merchant_id: str, product_id: str) -> str:
    job_id, now = str(uuid.uuid4()), time.time()
    app.pending_journal.record(
        [PendingRecord(DELETE, merchant_id, product_id, job_id, now, now, queue=app.settings.queue)]
    )
    description = _describe([(merchant_id, product_id)])
    return _send(app, DELETE_TASK, [merchant_id, product_id], description, job_id, sent_at=now)


def resend(app: VitrineCelery, job_id: str, records: Sequence[PendingRecord]) -> None:
    """Send pending records of one job again, under that job's id (its status URL stays
    valid) and to the queue it was sent to: one index job for all of them, or the delete."""
    now = time.time()
    for record in records:  # before sending: a worker finishing the job removes the record
        app.pending_journal.resent(record, at=now)
    # Celery never overwrites a SUCCESS state (against lost duplicates); the job's old result
    # must go, or the new run's states and result would be dropped.
    app.backend.forget(job_id)
    description = _describe([(r.merchant_id, r.product_id) for r in records])
    args: list[Any]
    if records[0].kind == DELETE:
        [record] = records
        task, args = DELETE_TASK, [record.merchant_id, record.product_id]
    else:
        task, args = INDEX_TASK, [[r.product for r in records]]
    _send(app, task, args, description, job_id, queue=records[0].queue, sent_at=now)


def job_status(app: Celery, job_id: str) -> JobStatus:
    # Never from Celery's cache of finished results: a job sent again under its id by the
    # reconciler is queued again after it succeeded once.
    return _status(job_id, app.backend.get_task_meta(job_id, cache=False))


#: Jobs whose states one ``MGET`` reads.
STATUS_CHUNK = 1000


def job_statuses(app: Celery, job_ids: Sequence[str]) -> dict[str, JobStatus]:
    """The states of many jobs, one ``MGET`` per ``STATUS_CHUNK`` of them: read one by one,
    polling a large import's jobs took a round trip each and most of a core."""
    backend = app.backend
    statuses = {}
    for start in range(0, len(job_ids), STATUS_CHUNK):
        chunk = job_ids[start : start + STATUS_CHUNK]
        values = backend.mget([backend.get_key_for_task(job_id) for job_id in chunk])
        for job_id, value in zip(chunk, values, strict=True):
            meta = backend.decode_result(value) if value else {"status": "PENDING"}
            statuses[job_id] = _status(job_id, meta)
    return statuses


def _status(job_id: str, meta: Any) -> JobStatus:
    state, info = meta["status"], meta.get("result")  # info: the result, or the exception
    if state == QUEUED:
        return JobStatus(job_id, "queued")
    if state == "PENDING":
        return JobStatus(job_id, "unknown")
    if state == "STARTED":
        return JobStatus(job_id, "running")
    if state == "RETRY":
        return JobStatus(job_id, "retrying", error=str(info))
    if state == "FAILURE":
        return JobStatus(job_id, "failed", error=f"{type(info).__name__}: {info}")
    if state == "SUCCESS":
        results = info if isinstance(info, list) else [info]
        failed = sum(1 for r in results if r.get("status") == "failed")
        verdict = (
            "done" if not failed else "failed" if failed == len(results) else "partially_failed"
        )
        return JobStatus(job_id, verdict, results=results)
    return JobStatus(job_id, state.lower())


@dataclass(frozen=True)
class QueueView:
    """What the broker holds of one queue, read at one moment: when the message next in line
    was sent (None: the queue is empty; 0.0: a message without ``SENT_AT_HEADER``, taken as
    old) and the jobs delivered to workers and not yet acknowledged."""

    front_sent_at: float | None
    delivered: frozenset[str]

    def may_hold(self, job_id: str, sent_at: float, *, skew_s: float) -> bool:
        """Whether a job sent at ``sent_at`` can still be waiting in the queue or be held by a
        worker. The queue is first in, first out: once the message next in line was sent
        after it (by more than ``skew_s``: senders' clocks differ), the job has left the
        queue, and if no worker holds it either, Redis lost it."""
        if job_id in self.delivered:
            return True
        return self.front_sent_at is not None and self.front_sent_at <= sent_at + skew_s


def queue_view(app: VitrineCelery, queue: str) -> QueueView:
    """``QueueView`` of ``queue``, in two reads: the message next in line (kombu pushes on the
    left and pops on the right), then the unacked set. In that order, a job moving from the
    queue to a worker between the reads is seen in one or the other."""
    with app.connection_for_read() as connection:
        client = connection.default_channel.client
        front = client.lindex(queue, -1)
        held = client.hvals(unacked_key(queue))
    front_sent_at = None
    if front is not None:
        front_sent_at = float(json.loads(front).get("headers", {}).get(SENT_AT_HEADER) or 0.0)
    delivered = frozenset(json.loads(raw)[0]["headers"]["id"] for raw in held)
    return QueueView(front_sent_at, delivered)


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
        statuses |= job_statuses(app, pending)
        pending = [job_id for job_id in pending if not statuses[job_id].finished]
        if on_progress:
            on_progress(statuses)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} job(s) not finished after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return statuses


# --------------------------------------------------------------------------- worker adverts

#: Each worker pool process that loaded its model says so under ``<prefix>:<node>:<pid>`` (the
#: value is its ``model_id``), refreshed well within the TTL: a process that died drops out.
ADVERT_PREFIX = "vitrine-worker"
ADVERT_TTL_S = 30


def advertise_model(client: Redis, node: str, model_id: str, *, ttl_s: int = ADVERT_TTL_S) -> None:
    """Say that this process of worker ``node`` embeds with ``model_id`` (for ``/healthz``)."""
    client.set(f"{ADVERT_PREFIX}:{node}:{os.getpid()}", model_id, ex=ttl_s)


def withdraw_model(client: Redis, node: str) -> None:
    client.delete(f"{ADVERT_PREFIX}:{node}:{os.getpid()}")


def advertised_models(client: Redis) -> dict[str, set[str]]:
    """``{worker node: model_ids its live pool processes loaded}``."""
    keys = list(client.scan_iter(match=f"{ADVERT_PREFIX}:*", count=1000))
    values: list[Any] = client.mget(keys) if keys else []  # type: ignore[assignment]
    models: dict[str, set[str]] = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:  # expired between SCAN and MGET
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        node = name.removeprefix(f"{ADVERT_PREFIX}:").rsplit(":", 1)[0]
        models.setdefault(node, set()).add(value.decode() if isinstance(value, bytes) else value)
    return models
