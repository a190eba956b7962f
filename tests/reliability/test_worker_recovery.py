"""Workers recover by themselves: real worker processes are killed with SIGKILL mid-job, and every
product must still be indexed exactly once (documents per product = its images).

- A killed pool process: the worker requeues its job at once and starts a replacement, which
  loads the model for longer than Celery's default start-up timeout (4 s) and is not killed.
- A killed worker (main process and pool process): its job waits in the queue's unacked set
  until the visibility timeout, then a new worker requeues it (``redelivery_bound_s``).
- A worker that cannot load its model stops (exit status 1) before it takes a job, whatever
  its pool, and the jobs stay in Redis for a worker that can run them.
- ``/healthz`` answers 503 while no worker consumes the queue (none yet, or it was killed),
  200 while one does with the index's model (once its pool process has loaded it).

Settings are shortened (visibility timeout 20 s) so the module runs in a few minutes. The
measured times are printed (``-s``); the guarantees page quotes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.dev.worker_process import worker_process
from pipeline.documents import Product
from pipeline.jobs import (
    JobStatus,
    create_celery,
    enqueue,
    job_status,
    redelivery_bound_s,
    wait_for_jobs,
)
from pipeline.settings import VitrineSettings
from tests.integration.helpers import unique_prefix, write_image
from tests.reliability.slow_encoder import LOAD_DELAY_S, install_plugins

REPO = Path(__file__).resolve().parents[2]
IMAGES_PER_PRODUCT = 2


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes started by this test find the slow test encoders."""
    directory = install_plugins(tmp_path / "plugins")
    path = [str(directory), str(REPO), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))


def _settings(settings: VitrineSettings, name: str, **overrides: object) -> VitrineSettings:
    """The session's settings on a queue of this test's own (its workers get killed), in a
    prefork pool (pool processes are killed)."""
    data = {
        **settings.model_dump(),
        "queue": f"{settings.queue}-{name}",
        "worker_pool": "prefork",
        **overrides,
    }
    return VitrineSettings.model_validate(data)


def _products(directory: Path, count: int) -> list[Product]:
    prefix = unique_prefix()
    return [
        Product(
            merchant_id="merchant-r",
            product_id=f"{prefix}-{n}",
            title=f"Product {n}",
            images=[str(write_image(directory, 1000 * n + i)) for i in range(IMAGES_PER_PRODUCT)],
        )
        for n in range(count)
    ]


def _documents_per_product(es, settings: VitrineSettings, products: Sequence[Product]) -> dict:
    es.indices.refresh(index=settings.index_alias)
    return {
        p.product_id: es.count(
            index=settings.index_alias,
            query={"bool": {"filter": [{"term": {"product_id": p.product_id}}]}},
        )["count"]
        for p in products
    }


def _worker_pids(app: Celery, queue: str) -> tuple[int, list[int]]:
    """The main process and pool processes of the worker serving ``queue``."""
    stats = app.control.inspect(timeout=2.0).stats() or {}
    [node] = [stats[name] for name in stats if name.startswith(f"{queue}-")]
    return node["pid"], list(node["pool"]["processes"])


def _wait_running(app: Celery, job_ids: Sequence[str], timeout_s: float = 60) -> str:
    """The first job seen running (a worker is inside it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job_id in job_ids:
            if job_status(app, job_id).state == "running":
                return job_id
        time.sleep(0.05)
    raise TimeoutError("no job started")


def _wait_for_text(log: Path, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in the worker log"
        time.sleep(0.2)


class Clock:
    """When each job was first seen finished, in seconds after ``start``."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.finished: dict[str, float] = {}

    def watch(self, condition: Callable[[], bool]) -> list[float]:
        """Note, in the returned list, when ``condition`` first holds (polled in a thread)."""
        seen: list[float] = []

        def poll() -> None:
            while not condition():
                time.sleep(0.1)
            seen.append(time.monotonic() - self.start)

        threading.Thread(target=poll, daemon=True).start()
        return seen

    def __call__(self, statuses: dict[str, JobStatus]) -> None:
        for job_id, status in statuses.items():
            if status.finished and job_id not in self.finished:
                self.finished[job_id] = time.monotonic() - self.start


@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.log"
    yield path
    print(f"\nworker log: {path}")


def test_killed_pool_process_is_replaced_and_its_job_redelivered(
    es, settings, plugins, tmp_path, worker_log
):
    # Each pool process loads the model for more than LOAD_DELAY_S, longer than Celery's 4 s.
    current = _settings(settings, "child", encoder="slow_start")
    products = _products(tmp_path, 6)
    with worker_log.open("w") as log, worker_process(current, output=log) as app:
        _, [child] = _worker_pids(app, current.queue)
        job_ids = enqueue(app, products, batch_size=2)
        killed_job = _wait_running(app, job_ids)
        os.kill(child, signal.SIGKILL)
        clock = Clock()
        statuses = wait_for_jobs(app, job_ids, timeout_s=120, on_progress=clock)
        _, [replacement] = _worker_pids(app, current.queue)

    assert {statuses[j].state for j in job_ids} == {"done"}
    assert replacement != child
    assert _documents_per_product(es, current, products) == {
        p.product_id: IMAGES_PER_PRODUCT for p in products
    }
    text = worker_log.read_text()
    assert "Timed out waiting for UP message" not in text
    assert "WorkerLostError" in text  # the job was lost with its process, then requeued
    print(
        f"\npool process SIGKILL: killed job done {clock.finished[killed_job]:.1f} s after the "
        f"kill (replacement model load {LOAD_DELAY_S:.0f} s); {len(products)} products, "
        f"0 lost, 0 duplicated"
    )


def test_celery_default_start_up_timeout_kills_a_slow_loading_process(
    es, settings, plugins, tmp_path, worker_log
):
    """What the setting prevents: with Celery's 4 s, a replacement process that loads the model
    for longer is killed (Celery applies the timeout to replacements, not the first processes)."""
    current = _settings(settings, "default-up", encoder="slow_start", worker_proc_alive_timeout_s=4)
    with worker_log.open("w") as log, worker_process(current, output=log) as app:
        _wait_for_text(worker_log, "model loaded in")
        _, [child] = _worker_pids(app, current.queue)
        os.kill(child, signal.SIGKILL)
        _wait_for_text(worker_log, "Timed out waiting for UP message")


def _run_until_it_stops(current: VitrineSettings) -> tuple[str, str]:
    """``vitrine worker`` under ``current`` until it exits: (stdout, stderr). Through a shell: a
    worker that signalled its parent (a solo or threads worker has no pool parent) would stop
    the shell and its last line, not the test session. A worker still running after 120 s is
    killed with its shell (its own process group) and fails the test."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("VITRINE_")}
    worker = [sys.executable, "-m", "pipeline.cli", "worker"]
    process = subprocess.Popen(
        ["sh", "-c", '"$@"; echo "worker exited $?"', "sh", *worker],
        env={**inherited, **current.to_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        return process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the worker kept running without its model")


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_worker_without_its_model_stops_and_its_job_stays_queued(es, settings, tmp_path, pool):
    missing = tmp_path / "missing.pt"
    current = _settings(
        settings, f"no-model-{pool}", worker_pool=pool, model_pretrained=str(missing)
    )
    [job_id] = enqueue(create_celery(current), _products(tmp_path, 1))
    stdout, stderr = _run_until_it_stops(current)
    assert stdout.splitlines()[-1] == "worker exited 1", stdout + stderr
    reason = f"the model could not be loaded: checkpoint {missing} does not exist"
    assert f"refusing to consume queue {current.queue}: {reason}" in stderr
    assert job_status(create_celery(current), job_id).state == "queued"
    held = Redis.from_url(current.redis_url)  # queued, or unacked until the visibility timeout
    assert held.llen(current.queue) + held.hlen(f"{current.queue}.unacked") == 1


def test_dead_worker_jobs_come_back_within_the_redelivery_bound_and_healthz_follows(
    es, settings, plugins, tmp_path, worker_log
):
    current = _settings(
        settings,
        "main",
        encoder="slow_batches",
        task_soft_time_limit_s=8,
        task_time_limit_s=10,
        task_retry_backoff_max_s=1,
        visibility_timeout_s=20,
        unacked_restore_interval_s=1,
    )
    bound = redelivery_bound_s(current)
    unacked = Redis.from_url(current.redis_url)
    products = _products(tmp_path, 8)
    with (
        TestClient(create_app(current, load_model=False)) as api,
        worker_log.open("w") as log,
    ):
        _assert_not_served(api, current.queue)
        with worker_process(current, output=log) as app:
            _assert_served(api, current.queue)
            main, pool = _worker_pids(app, current.queue)
            # A job's visibility clock starts when the worker receives it, even while its pool
            # process still loads the model: send the jobs once the model is loaded.
            _wait_for_text(worker_log, "model loaded in")
            job_ids = enqueue(app, products, batch_size=2)
            killed_job = _wait_running(app, job_ids)
            for pid in (main, *pool):
                os.kill(pid, signal.SIGKILL)
            clock = Clock()
            _assert_not_served(api, current.queue)
        # the dead worker's job waits, unacknowledged, in this queue's own unacked set
        assert unacked.hlen(f"{current.queue}.unacked") == 1
        index = f"{current.queue}.unacked_index"
        [(tag, delivered)] = unacked.zrange(index, 0, -1, withscores=True)
        delivered_before_kill = time.time() - delivered - (time.monotonic() - clock.start)
        # requeued: its entry leaves the set (a new receipt re-adds the tag with a new time)
        requeued = clock.watch(lambda: unacked.zscore(index, tag) != delivered)
        with worker_process(current, output=log) as app:
            _assert_served(api, current.queue)
            statuses = wait_for_jobs(app, job_ids, timeout_s=bound + 120, on_progress=clock)

    assert {statuses[j].state for j in job_ids} == {"done"}
    assert unacked.hlen(f"{current.queue}.unacked") == 0
    assert _documents_per_product(es, current, products) == {
        p.product_id: IMAGES_PER_PRODUCT for p in products
    }
    others = max(t for j, t in clock.finished.items() if j != killed_job)
    print(
        f"\nworker SIGKILL (main + pool process): killed job (received by the worker "
        f"{delivered_before_kill:.1f} s before the kill) requeued {requeued[0]:.1f} s and "
        f"done {clock.finished[killed_job]:.1f} s after the kill, the other jobs by {others:.1f} s "
        f"(visibility timeout {current.visibility_timeout_s} s, bound {bound} s after "
        f"delivery); {len(products)} products, 0 lost, 0 duplicated"
    )


def _assert_not_served(api: TestClient, queue: str) -> None:
    answer = api.get("/healthz")
    assert answer.status_code == 503, answer.text
    checks = answer.json()["checks"]
    assert checks["elasticsearch"]["ok"] and checks["redis"]["ok"]
    assert checks["workers"]["ok"] is False
    assert f"no worker consumes queue {queue!r}" in checks["workers"]["reason"]


def _assert_served(api: TestClient, queue: str, timeout_s: float = 120) -> None:
    """Served once the worker answers and its pool process has loaded the index's model."""
    deadline = time.monotonic() + timeout_s
    answer = api.get("/healthz")
    while answer.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = api.get("/healthz")
    assert answer.status_code == 200, answer.text
    workers = answer.json()["checks"]["workers"]
    assert (workers["ok"], workers["queue"], workers["count"]) == (True, queue, 1)
