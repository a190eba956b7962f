"""The pending journal and error spool (files), and the reconciler's decisions (pure)."""

from __future__ import annotations

import json

import pytest

from pipeline.documents import Product
from pipeline.ingest.reconcile import (
    FAILED_TRANSIENT,
    FINISH,
    JOB_FAILED,
    LOST,
    STALE,
    VANISHED,
    decide,
)
from pipeline.jobs import JobStatus, QueueView
from pipeline.journal import DELETE, INDEX, ErrorSpool, PendingJournal, PendingRecord, product_key
from pipeline.settings import VitrineSettings


def product(pid: str = "sku-1", title: str = "T", merchant: str = "m") -> Product:
    return Product.model_validate(
        {"product_id": pid, "merchant_id": merchant, "title": title, "image": "https://a/b.jpg"}
    )


def record(p: Product, *, job_id: str = "job-1", at: float = 100.0, sends: int = 1):
    return PendingRecord(
        INDEX, p.merchant_id, p.product_id, job_id, at, at, sends, product=p.model_dump()
    )


def test_a_record_is_on_disk_as_json_and_read_back(tmp_path):
    journal = PendingJournal(tmp_path)
    journal.record([record(product())])
    [path] = list((tmp_path / "pending").glob("*.json"))
    assert json.loads(path.read_text())["product"]["product_id"] == "sku-1"
    assert journal.pending() == [record(product())]
    assert not list((tmp_path / "pending").glob(".*.tmp"))  # no temporary file left


def test_a_record_from_before_queues_were_noted_reads_back_without_one(tmp_path):
    """The reconciler then looks for its job in its own queue."""
    journal = PendingJournal(tmp_path)
    journal.record([record(product())])
    [path] = list((tmp_path / "pending").glob("*.json"))
    data = json.loads(path.read_text())
    assert data.pop("queue") is None
    path.write_text(json.dumps(data))
    assert journal.pending() == [record(product())]


def test_finishing_a_product_removes_only_its_revision(tmp_path):
    journal = PendingJournal(tmp_path)
    old, new = product(title="old"), product(title="new")
    journal.record([record(old, at=1.0)])
    journal.record([record(new, job_id="job-2", at=2.0)])
    assert [r.job_id for r in journal.pending()] == ["job-2"]  # the newer one supersedes
    journal.finish_product(old)  # the old job finishing late does not drop the new record
    assert [r.job_id for r in journal.pending()] == ["job-2"]
    journal.finish_product(new)
    assert journal.pending() == []


def test_the_newest_acceptance_counts_whatever_order_the_records_were_written_in(tmp_path):
    journal = PendingJournal(tmp_path)
    journal.record([record(product(title="new"), job_id="new", at=2.0)])
    journal.record([record(product(title="old"), job_id="old", at=1.0)])  # written late
    journal.record([record(product("sku-2", title="other"), job_id="other", at=0.5)])
    assert [r.job_id for r in journal.pending()] == ["other", "new"]
    assert len(list((tmp_path / "pending").glob("*.json"))) == 2  # the superseded one is gone


def test_accepting_a_product_does_not_scan_the_backlog(tmp_path, monkeypatch):
    """One folder listing per product made accepting a catalogue quadratic in the backlog."""
    journal = PendingJournal(tmp_path)
    journal.record([record(product(f"sku-{i}"), at=float(i)) for i in range(50)])

    def no_listing(*args, **kwargs):
        raise AssertionError("record() listed the journal folder")

    monkeypatch.setattr(type(journal.root), "glob", no_listing)
    monkeypatch.setattr("os.scandir", no_listing)
    monkeypatch.setattr("os.listdir", no_listing)
    journal.record([record(product("sku-0", title="changed"), job_id="job-2", at=100.0)])
    monkeypatch.undo()
    assert [r.job_id for r in journal.pending()][-1] == "job-2"
    assert len(journal.pending()) == 50


def test_a_delete_supersedes_pending_uploads_of_the_product(tmp_path):
    journal = PendingJournal(tmp_path)
    journal.record([record(product(), at=1.0)])
    journal.record([PendingRecord(DELETE, "m", "sku-1", "job-d", 2.0, 2.0)])
    [pending] = journal.pending()
    assert pending.kind == DELETE
    journal.finish_delete("m", "sku-1")
    assert journal.pending() == []


def test_product_keys_do_not_collide_across_separators():
    assert product_key("shop-d:a", "b:c") != product_key("shop-d", "a:b:c")


def test_resent_counts_sends_and_does_not_resurrect_a_finished_record(tmp_path):
    journal = PendingJournal(tmp_path)
    first = record(product())
    journal.record([first])
    again = journal.resent(first, at=200.0)
    assert journal.pending() == [again] and again.sends == 2 and again.sent_at == 200.0
    journal.finish(again)
    journal.resent(again, at=300.0)
    assert journal.pending() == []


def test_only_one_reconciler_holds_the_lock(tmp_path):
    journal = PendingJournal(tmp_path)
    with journal.exclusive() as first, PendingJournal(tmp_path).exclusive() as second:
        assert first and not second
    with journal.exclusive() as again:
        assert again


def test_error_spool_keeps_one_file_per_record_id(tmp_path):
    spool = ErrorSpool(tmp_path)
    spool.put("job:m:p:", {"reason": "a"})
    spool.put("job:m:p:", {"reason": "b"})
    [(path, doc_id, document)] = list(spool.items())
    assert (doc_id, document) == ("job:m:p:", {"reason": "b"})
    spool.remove(path)
    assert list(spool.items()) == []


# --------------------------------------------------------------------------- reconciler


SETTINGS = VitrineSettings(reconcile_grace_s=30, reconcile_stale_s=600)
NOW = 10_000.0


def outcome(status: str, *, transient: bool = False) -> dict:
    return {"merchant_id": "m", "product_id": "sku-1", "status": status, "transient": transient}


#: A queue whose next message was sent long before every record here: they may all wait in it.
BACKLOG = QueueView(front_sent_at=0.0, delivered=frozenset())


@pytest.mark.parametrize(
    ("status", "age", "expected"),
    [
        (JobStatus("j", "unknown"), 60, VANISHED),
        (JobStatus("j", "unknown"), 5, None),  # within the grace period: being sent now
        (JobStatus("j", "queued"), 60, None),
        (JobStatus("j", "queued"), 6_000, None),  # a long backlog: waiting is not lost
        (JobStatus("j", "running"), 601, STALE),
        (JobStatus("j", "retrying"), 601, STALE),
        (JobStatus("j", "done", results=[outcome("indexed")]), 60, FINISH),
        (JobStatus("j", "failed", results=[outcome("failed")]), 60, FINISH),  # permanent
        (
            JobStatus("j", "failed", results=[outcome("failed", transient=True)]),
            60,
            FAILED_TRANSIENT,
        ),
        (JobStatus("j", "failed", error="WorkerLostError"), 60, JOB_FAILED),
    ],
)
def test_reconciler_decisions(status, age, expected):
    pending = record(product(), at=NOW - age)
    assert decide(pending, status, BACKLOG, now=NOW, settings=SETTINGS) == expected


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        (QueueView(None, frozenset()), LOST),  # the queue is empty, no worker holds it
        (QueueView(NOW - 20, frozenset()), LOST),  # next in line was sent 40 s after it
        (QueueView(NOW - 20, frozenset({"job-1"})), None),  # a worker holds it
        (QueueView(NOW - 60, frozenset()), None),  # it may be next in line
        (QueueView(NOW - 45, frozenset()), None),  # sent 15 s after it: within the clocks' skew
        (QueueView(NOW - 100, frozenset()), None),  # sent before it: it is further back
        (QueueView(0.0, frozenset()), None),  # next in line has no send time: taken as old
    ],
)
def test_a_queued_job_is_lost_once_it_left_the_queue_and_no_worker_holds_it(queue, expected):
    pending = record(product(), at=NOW - 60)  # skew allowed: reconcile_grace_s, 30 s
    status = JobStatus("job-1", "queued")
    assert decide(pending, status, queue, now=NOW, settings=SETTINGS) == expected


def test_default_retry_budget_covers_a_ten_minute_outage():
    defaults = VitrineSettings()
    assert defaults.task_retry_budget_s >= 600
    assert defaults.stale_after_s > defaults.task_retry_budget_s + defaults.task_time_limit_s
