"""The reconciler: accepted work that the queue lost or left unfinished is sent again, and error
records spooled while Elasticsearch was down are written to the ingest-errors index.

Every pending-journal record (``pipeline.journal``) is checked against its job's state:

- job unknown (Redis lost it, or its result expired)         -> sent again (``vanished``)
- job queued, but its message neither in the queue nor held  -> sent again (``lost``)
  by a worker (Redis lost it)
- job finished, this product failed for a transient reason  -> sent again (``failed_transient``)
- job failed as a whole (worker lost, time limit)            -> sent again (``job_failed``)
- job started (running, retrying) longer than the stale bound -> sent again (``stale``)
- job finished with this product indexed or refused for good -> record removed (the worker
  stopped before it could remove it)

A queued job is never sent again for waiting: a long backlog is not lost work, and sending its
jobs again would only lengthen it. Whether its message is still in the queue is read from
Redis (``pipeline.jobs.QueueView``): the queue is first in, first out, so a job sent before the
message next in line has left it. A worker takes a message from the queue and records it as
held in two Redis commands; a message taken as Redis stops is lost in between, and is found
so at the first pass after the queue has moved past the messages sent up to
``reconcile_grace_s`` after it (the senders' clock skew allowed), or emptied. A job put back
behind newer messages before it started (its pool process lost) is taken for lost too and
runs twice, which writes the same documents.

Work is sent again under its original job id, so status URLs handed out stay valid. Sending
again is safe: document ids are deterministic, so a product written twice is one document.
A record sent ``reconcile_max_sends`` times is given up and recorded as an ingest error. Records
younger than ``reconcile_grace_s`` are left alone: their job is being sent right now.

Workers run this at start-up and every ``reconcile_interval_s``; ``vitrine reconcile`` runs it
once. A file lock in the journal folder keeps concurrent runs from sending the same work twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from elasticsearch import Elasticsearch

from pipeline.es import indexing
from pipeline.es.client import is_transient_es_error
from pipeline.jobs import JobStatus, QueueView, VitrineCelery, job_statuses, queue_view, resend
from pipeline.journal import ErrorSpool, PendingRecord
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

FINISH = "finish"
VANISHED = "vanished"
LOST = "lost"
FAILED_TRANSIENT = "failed_transient"
JOB_FAILED = "job_failed"
STALE = "stale"


@dataclass
class ReconcileReport:
    ran: bool = True  # False: another reconciler holds the lock
    pending: int = 0  # records found
    resent: Counter[str] = field(default_factory=Counter)  # reason -> products sent again
    finished: int = 0  # records of finished products, removed
    gave_up: int = 0  # records sent too often, recorded as ingest errors
    errors_flushed: int = 0  # spooled error records written to Elasticsearch
    errors_spooled: int = 0  # still spooled (Elasticsearch unavailable)

    def summary(self) -> str:
        resent = ", ".join(f"{n} {reason}" for reason, n in sorted(self.resent.items()))
        return (
            f"{self.pending} pending; sent again: {resent or 'none'}; finished {self.finished}; "
            f"gave up {self.gave_up}; error records flushed {self.errors_flushed}, "
            f"still spooled {self.errors_spooled}"
        )


def decide(
    record: PendingRecord,
    status: JobStatus,
    queue: QueueView,
    *,
    now: float,
    settings: VitrineSettings,
) -> str | None:
    """What to do with one record: None (leave it), ``FINISH``, or why to send it again.
    ``queue`` is what the broker held of the record's queue, read before ``status``."""
    if now - record.sent_at < settings.reconcile_grace_s:
        return None
    if status.state == "unknown":
        return VANISHED
    if status.state == "queued":
        held = queue.may_hold(record.job_id, record.sent_at, skew_s=settings.reconcile_grace_s)
        return None if held else LOST
    if not status.finished:
        return STALE if now - record.sent_at > settings.stale_after_s else None
    key = (record.merchant_id, record.product_id)
    outcome = next(
        (r for r in status.results if (r.get("merchant_id"), r.get("product_id")) == key), None
    )
    if outcome is None:
        return JOB_FAILED
    if outcome.get("status") == "failed" and outcome.get("transient"):
        return FAILED_TRANSIENT
    return FINISH


def flush_error_spool(es: Elasticsearch, settings: VitrineSettings) -> tuple[int, int]:
    """Write spooled error records to Elasticsearch; ``(written, still spooled)``."""
    spool = ErrorSpool(settings.journal_root)
    items = list(spool.items())
    written = 0
    for path, doc_id, document in items:
        try:
            indexing.write_ingest_error(es, settings, doc_id, document)
        except Exception as exc:
            if not is_transient_es_error(exc):
                raise
            break  # still down: the rest waits for the next run
        spool.remove(path)
        written += 1
    return written, len(items) - written


def _give_up(es: Elasticsearch, settings: VitrineSettings, record: PendingRecord) -> None:
    doc_id, document = indexing.ingest_error(
        job_id=record.job_id,
        product_id=record.product_id,
        merchant_id=record.merchant_id,
        reason="gave_up",
        message=f"not finished after being sent {record.sends} times",
        attempts=record.sends,
    )
    log.error(
        "product %s/%s given up after %d sends", record.merchant_id, record.product_id, record.sends
    )
    try:
        indexing.write_ingest_error(es, settings, doc_id, document)
    except Exception as exc:
        if not is_transient_es_error(exc):
            raise
        ErrorSpool(settings.journal_root).put(doc_id, document)


def _queue(record: PendingRecord, settings: VitrineSettings) -> str:
    """The queue the record's job was sent to; records from before queues were noted went to
    the default queue (where ``resend`` sends them again too)."""
    return record.queue or settings.queue


def reconcile(app: VitrineCelery, es: Elasticsearch) -> ReconcileReport:
    """One pass over the error spool and the pending journal."""
    settings, journal = app.settings, app.pending_journal
    report = ReconcileReport()
    with journal.exclusive() as mine:
        if not mine:
            report.ran = False
            return report
        report.errors_flushed, report.errors_spooled = flush_error_spool(es, settings)
        records = journal.pending()
        report.pending = len(records)
        by_job: dict[str, list[PendingRecord]] = {}
        for record in records:
            by_job.setdefault(record.job_id, []).append(record)
        # the queues before the states: a job taken from its queue after the queue was read is
        # still seen by ``may_hold`` (or, acknowledged since, no longer "queued")
        queues = {q: queue_view(app, q) for q in {_queue(r, settings) for r in records}}
        now = time.time()
        statuses = job_statuses(app, list(by_job))
        for job_id, group in by_job.items():
            status = statuses[job_id]
            again = []
            for record in group:
                queue = queues[_queue(record, settings)]
                action = decide(record, status, queue, now=now, settings=settings)
                if action is None:
                    continue
                if action == FINISH:
                    journal.finish(record)
                    report.finished += 1
                elif record.sends >= settings.reconcile_max_sends:
                    _give_up(es, settings, record)
                    journal.finish(record)
                    report.gave_up += 1
                else:
                    again.append(record)
                    report.resent[action] += 1
            if again:
                log.warning("job %s: sending %d product(s) again", job_id, len(again))
                resend(app, job_id, again)
    return report
