"""``/healthz`` logic without services: which queue is served, reasons, a bounded answer."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from elasticsearch import NotFoundError

from pipeline.api import health
from pipeline.jobs import ADVERT_PREFIX
from pipeline.settings import VitrineSettings


class FakeInspect:
    def __init__(self, replies: dict) -> None:
        self.replies = replies

    def active_queues(self) -> dict:
        return self.replies


class FakeRedis:
    """The part of a Redis client ``advertised_models`` uses, over a dict."""

    def __init__(self, adverts: dict[str, str], redis_error: Exception | None) -> None:
        self.keys = {f"{ADVERT_PREFIX}:{k}".encode(): v.encode() for k, v in adverts.items()}
        self.redis_error = redis_error

    def ping(self) -> bool:
        if self.redis_error:
            raise self.redis_error
        return True

    def scan_iter(self, match: str, count: int) -> list[bytes]:
        return [k for k in self.keys if k.decode().startswith(match.rstrip("*"))]

    def mget(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.keys.get(k) for k in keys]


def fake_state(
    replies: dict,
    *,
    adverts: dict[str, str] | None = None,
    model_id: str | None = "m1",
    es_status: str = "green",
    redis_error: Exception | None = None,
):
    """``adverts``: ``{"<node>:<pid>": model_id}``; ``model_id``: the write index's model."""
    mappings = {"idx": {"mappings": {"_meta": {"model_id": model_id, "dims": 8}}}}
    indices = SimpleNamespace(
        get_alias=lambda name: {"idx": {"aliases": {name: {}}}}, get_mapping=lambda index: mappings
    )
    if model_id is None:

        def missing(name: str) -> dict:
            raise NotFoundError(404, "alias missing", {})

        indices.get_alias = missing
    es = SimpleNamespace(
        cluster=SimpleNamespace(health=lambda **_: {"status": es_status}), indices=indices
    )
    es.options = lambda **_: es
    control = SimpleNamespace(inspect=lambda **_: FakeInspect(replies))
    client = FakeRedis(adverts or {}, redis_error)
    celery = SimpleNamespace(backend=SimpleNamespace(client=client), control=control)
    return SimpleNamespace(settings=VitrineSettings(queue="jobs"), es=es, celery=celery)


def test_served_when_a_worker_consumes_the_queue_with_the_index_model():
    replies = {"w1@h": [{"name": "jobs"}], "w2@h": [{"name": "other"}]}
    adverts = {"w1@h:11": "m1", "w1@h:12": "m1", "w2@h:21": "m2"}
    checks = health._check(fake_state(replies, adverts=adverts))
    assert checks["workers"] == {
        "ok": True,
        "queue": "jobs",
        "model_id": "m1",
        "count": 1,
        "queues": {
            "jobs": {"workers": 1, "models": {"m1": 1}},
            "other": {"workers": 1, "models": {"m2": 1}},
        },
    }
    assert checks["elasticsearch"]["ok"] and checks["redis"]["ok"]


def test_a_worker_with_another_model_does_not_serve_the_queue():
    replies = {"w1@h": [{"name": "jobs"}], "w2@h": [{"name": "jobs"}]}
    adverts = {"w1@h:11": "m2"}  # w2 advertises nothing yet (still loading its model)
    check = health._check(fake_state(replies, adverts=adverts))["workers"]
    assert not check["ok"] and check["count"] == 0
    assert check["queues"] == {"jobs": {"workers": 2, "models": {"m2": 1, "unknown": 1}}}
    assert check["reason"] == (
        "no worker consumes queue 'jobs' with model 'm1' (2 worker(s) there run 'm2', 'unknown')"
    )


def test_any_model_serves_while_no_index_names_one():
    replies = {"w1@h": [{"name": "jobs"}]}
    check = health._check(fake_state(replies, adverts={"w1@h:1": "m9"}, model_id=None))["workers"]
    assert check["ok"] and check["model_id"] is None and check["count"] == 1


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
    check = health._check(fake_state(replies))["workers"]
    assert (check["ok"], check["count"], check["reason"]) == (False, 0, reason)


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
