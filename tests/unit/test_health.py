"""``/healthz`` logic without services: which queue is served, reasons, a bounded answer."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from pipeline.api import health
from pipeline.settings import VitrineSettings


class FakeInspect:
    def __init__(self, replies: dict) -> None:
        self.replies = replies

    def active_queues(self) -> dict:
        return self.replies


def fake_state(replies: dict, *, es_status: str = "green", redis_error: Exception | None = None):
    def ping() -> bool:
        if redis_error:
            raise redis_error
        return True

    es = SimpleNamespace(cluster=SimpleNamespace(health=lambda **_: {"status": es_status}))
    es.options = lambda **_: es
    control = SimpleNamespace(inspect=lambda **_: FakeInspect(replies))
    celery = SimpleNamespace(
        backend=SimpleNamespace(client=SimpleNamespace(ping=ping)), control=control
    )
    return SimpleNamespace(settings=VitrineSettings(queue="jobs"), es=es, celery=celery)


def test_served_when_a_worker_consumes_the_queue():
    replies = {"w1@h": [{"name": "jobs"}], "w2@h": [{"name": "other"}]}
    checks = health._check(fake_state(replies))
    assert checks["workers"] == {"ok": True, "queue": "jobs", "count": 1}
    assert checks["elasticsearch"]["ok"] and checks["redis"]["ok"]


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ({}, "no worker consumes queue 'jobs'"),
        (
            {"w2@h": [{"name": "other"}]},
            "no worker consumes queue 'jobs' (1 worker(s) answered, serving other queues)",
        ),
    ],
)
def test_not_served_when_no_worker_consumes_the_queue(replies, reason):
    checks = health._check(fake_state(replies))
    assert checks["workers"] == {"ok": False, "queue": "jobs", "count": 0, "reason": reason}


def test_errors_are_named_without_internal_details():
    refused = ConnectionError("Error 111 connecting to 10.1.2.3:6379. Connection refused.")
    checks = health._check(fake_state({}, redis_error=refused))
    assert checks["redis"] == {"ok": False, "reason": "unreachable (ConnectionError)"}


def test_a_hung_check_does_not_hold_the_answer(monkeypatch):
    monkeypatch.setattr(health, "TOTAL_TIMEOUT_S", 0.2)
    state = fake_state({"w1@h": [{"name": "jobs"}]})
    state.celery.backend.client.ping = lambda: time.sleep(5)
    started = time.monotonic()
    checks = health._check(state)
    assert time.monotonic() - started < 4
    assert checks["redis"] == {"ok": False, "reason": "no answer within 0.2 s"}
