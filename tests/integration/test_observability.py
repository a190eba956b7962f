"""What operators see, against the real stack: ``/healthz`` names the workers of the queue and
their model; Prometheus metrics scraped from a real worker exporter (prefork, two pool processes,
multiprocess mode) and from the API's ``/metrics`` after real jobs and searches; and
``vitrine enqueue --wait`` running out of time says so in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from pipeline.api.app import create_app
from pipeline.dev.worker_process import worker_process
from pipeline.es import indexing
from pipeline.images import Reason
from pipeline.ingest.ingestor import Ingestor
from pipeline.jobs import advertised_models, enqueue, wait_for_jobs
from pipeline.settings import VitrineSettings
from tests.integration.helpers import api_server, make_product, unique_prefix


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


LOADS = "vitrine_model_load_seconds_count"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_advert(settings: VitrineSettings, model_id: str, timeout_s: float = 120) -> None:
    """A worker answers pings before its pool process has loaded the model and said which."""
    redis = Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout_s
    while not any(model_id in models for models in advertised_models(redis).values()):
        assert time.monotonic() < deadline, "no worker advertised the model"
        time.sleep(0.5)


def test_healthz_names_the_queue_workers_and_their_model(worker, es, settings, encoder):
    Ingestor(settings, es=es, encoder=encoder).ensure_index()  # its model is the one to run
    wait_for_advert(settings, encoder.model_id)
    with TestClient(create_app(settings, load_model=False)) as client:
        response = client.get("/healthz")
    check = response.json()["checks"]["workers"]
    assert response.status_code == 200, check
    assert check["ok"] and check["model_id"] == encoder.model_id and check["count"] >= 1
    assert check["queues"][settings.queue]["models"].get(encoder.model_id, 0) >= 1


@pytest.fixture(scope="module")
def metrics_worker(es, worker_settings: VitrineSettings, tmp_path_factory) -> Iterator[tuple]:
    """A worker with two pool processes on a queue of its own, exporting metrics."""
    port = free_port()
    current = worker_settings.model_copy(
        update={
            "queue": f"{worker_settings.queue}-metrics",
            "worker_metrics_port": port,
            "worker_pool": "prefork",
        }
    )
    log = tmp_path_factory.mktemp("metrics-worker") / "worker.log"
    with log.open("w") as out, worker_process(current, concurrency=2, output=out) as app:
        yield app, current, f"http://127.0.0.1:{port}/metrics"


def test_worker_metrics_after_real_jobs(metrics_worker, tmp_path: Path):
    app, current, url = metrics_worker
    before = samples(httpx.get(url, timeout=10).text)
    prefix = unique_prefix()
    good = [make_product(tmp_path, seed, prefix=prefix) for seed in range(5)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all" * 20)
    bad = make_product(tmp_path, 99, prefix=prefix, images=[str(broken)])
    job_ids = enqueue(app, [*good, bad], batch_size=3)
    statuses = wait_for_jobs(app, job_ids, timeout_s=180)
    assert sorted(s.state for s in statuses.values()) == ["done", "partially_failed"]

    after = samples(httpx.get(url, timeout=10).text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vitrine_jobs_total", task="index", outcome="done") == 1
    assert grew("vitrine_jobs_total", task="index", outcome="partially_failed") == 1
    assert grew("vitrine_failed_products_total", reason=Reason.NOT_AN_IMAGE) == 1
    assert grew("vitrine_images_embedded_total") == 5
    assert grew("vitrine_embed_batch_seconds_count", kind="image") == 2
    assert grew("vitrine_es_bulk_seconds_count") == 2
    # both pool processes loaded the model (merged from their own files); a process that has
    # not taken a job yet may still be loading it
    deadline = time.monotonic() + 120
    while value(after, LOADS) < 2 and time.monotonic() < deadline:
        time.sleep(1)
        after = samples(httpx.get(url, timeout=10).text)
    assert value(after, LOADS) == 2
    assert ("vitrine_queue_depth", frozenset({("queue", current.queue)})) in after
    assert ("vitrine_queue_unacked", frozenset({("queue", current.queue)})) in after


def test_api_metrics_count_searches_by_shape(worker, settings, tmp_path: Path):
    with TestClient(create_app(settings)) as client:
        before = samples(client.get("/metrics").text)
        keyword = client.post("/v1/search", json={"text": "shoe", "text_mode": "keyword"})
        assert keyword.status_code == 200, keyword.text
        text = client.post("/v1/search", json={"text": "a red shoe"})
        assert text.status_code == 200, text.text
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)
    for shape in ("keyword", "text"):
        name = "vitrine_search_seconds_count"
        assert value(after, name, shape=shape) - value(before, name, shape=shape) == 1, shape
    assert value(after, "vitrine_queue_depth", queue=settings.queue) >= 0
    assert ("vitrine_queue_depth", frozenset({("queue", settings.queue)})) in after
    assert ("vitrine_queue_unacked", frozenset({("queue", settings.queue)})) in after


def test_api_workers_serve_one_port_and_sum_their_metrics(es, settings, encoder):
    """``vitrine serve --workers 2``: two processes, each with its model, and /metrics, whichever
    of them answers, counts the searches of both (the command sets up the multiprocess mode)."""
    indexing.ensure_indices(es, settings, encoder.model_id, encoder.dim)
    with api_server(settings, args=["--workers", "2"]) as base:
        deadline = time.monotonic() + 120
        while value(samples(httpx.get(f"{base}/metrics").text), LOADS) < 2:
            assert time.monotonic() < deadline, "the second worker did not load its model"
            time.sleep(0.5)
        for _ in range(12):
            body = {"text": "shoe", "text_mode": "keyword"}
            response = httpx.post(f"{base}/v1/search", json=body, timeout=30)
            assert response.status_code == 200, response.text
        found = [samples(httpx.get(f"{base}/metrics").text) for _ in range(4)]
    for scrape in found:
        assert value(scrape, LOADS) == 2
        assert value(scrape, "vitrine_search_seconds_count", shape="keyword") == 12


def test_enqueue_wait_timeout_is_one_line(services, settings, tmp_path: Path):
    lonely = settings.model_copy(update={"queue": f"{settings.queue}-nobody"})
    product = make_product(tmp_path, 1, prefix=unique_prefix()).model_dump()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITRINE_")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "enqueue", "-", "--wait", "--timeout", "1"],
        input=json.dumps(product),
        env={**env, **lonely.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: 1 job(s) not finished after 1s") and "vitrine job" in line
