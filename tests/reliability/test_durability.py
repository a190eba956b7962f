"""Accepted means durable, against the real stack: Redis lost mid-import, Redis lost while a
worker holds jobs waiting to retry, Elasticsearch down longer than the old retry window, API
keys across Redis restarts.

These tests stop and restart Redis and Elasticsearch, so they run their own: Elasticsearch on
127.0.0.1:9231 and Redis on 127.0.0.1:6393, installed under /var/lib/vitrine-durable (override
with VITRINE_DURABLE_ES_URL, VITRINE_DURABLE_REDIS_URL, VITRINE_DURABLE_SERVICES_DIR), never
the shared 9200/6379. Retry budget and reconciler period are shortened to seconds.

Each test prints one ``FIGURES`` line (products, lost, duplicates, seconds to recover): run
with ``-s`` to see them.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.dev import services
from pipeline.dev.worker_process import worker_process
from pipeline.es.client import make_client
from pipeline.images import ImageLimits
from pipeline.ingest.importer import plan_import, run_import
from pipeline.jobs import VitrineCelery, create_celery
from pipeline.journal import ErrorSpool
from pipeline.merchants.apikeys import ApiKeyStore
from pipeline.settings import VitrineSettings
from pipeline.storage import ImageStore
from tests.conftest import TINY_ARCH
from tests.integration.helpers import make_product, pattern_image, unique_prefix

pytestmark = pytest.mark.integration

ES_URL = os.environ.get("VITRINE_DURABLE_ES_URL", "http://127.0.0.1:9231")
REDIS_URL = os.environ.get("VITRINE_DURABLE_REDIS_URL", "redis://127.0.0.1:6393/0")
SERVICES_DIR = Path(os.environ.get("VITRINE_DURABLE_SERVICES_DIR", "/var/lib/vitrine-durable"))
OLD_RETRY_WINDOW_S = 62  # 5 retries from 2 s, before the retry budget


def figures(name: str, **values: object) -> None:
    print(f"\nFIGURES {name}: {json.dumps(values)}")


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s:.0f}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def settings(session_id: str, tiny_checkpoint: Path, tmp_path_factory) -> VitrineSettings:
    return VitrineSettings(
        es_url=ES_URL,
        redis_url=REDIS_URL,
        services_dir=SERVICES_DIR,
        index_alias=f"durable-{session_id}",
        errors_index=f"durable-errors-{session_id}",
        queue=f"durable-{session_id}",
        redis_prefix=f"durable-{session_id}",
        model_arch=TINY_ARCH,
        model_pretrained=str(tiny_checkpoint),
        min_image_side=64,
        batch_size=8,
        es_request_timeout_s=5,
        task_retry_budget_s=20,  # shorter than the outage: the reconciler must finish the job
        task_retry_backoff_s=1,
        task_retry_backoff_max_s=4,
        reconcile_interval_s=2,
        reconcile_grace_s=2,
        reconcile_max_sends=100,
        home=tmp_path_factory.mktemp("durable-home"),
    )


@pytest.fixture(scope="module")
def stack(settings: VitrineSettings) -> Iterator[VitrineSettings]:
    """This module's own Elasticsearch and Redis; stopped at the end."""
    services.start_elasticsearch(settings)
    services.start_redis(settings)
    try:
        yield settings
        es = make_client(settings)
        created = list(es.indices.get(index=f"{settings.index_alias}.*", expand_wildcards="all"))
        for index in [*created, settings.errors_index]:
            es.options(ignore_status=404).indices.delete(index=index)
        es.close()
    finally:
        services.stop_all(settings)


@pytest.fixture(scope="module")
def keys(stack: VitrineSettings) -> ApiKeyStore:
    return ApiKeyStore(Redis.from_url(stack.redis_url), stack.redis_prefix)


@pytest.fixture(scope="module")
def worker(stack: VitrineSettings, tmp_path_factory) -> Iterator[VitrineCelery]:
    log_path = tmp_path_factory.mktemp("durable-worker") / "worker.log"
    with log_path.open("w") as log, worker_process(stack, output=log):
        yield create_celery(stack)
    print(f"\nworker log: {log_path}")


def restart_redis(settings: VitrineSettings, *, persistent: bool) -> None:
    services.stop_redis(settings)
    services.start_redis(settings, persistent=persistent)


def indexed(settings: VitrineSettings, prefix: str) -> tuple[int, int]:
    """``(documents, distinct products)`` whose product id starts with ``prefix``."""
    es = make_client(settings)
    try:
        es.indices.refresh(index=settings.index_alias)
        response = es.search(
            index=settings.index_alias,
            size=0,
            query={"prefix": {"product_id": prefix}},
            aggs={"products": {"cardinality": {"field": "product_id", "precision_threshold": 999}}},
            track_total_hits=True,
        )
    except Exception:  # not up yet, or no index yet
        return 0, 0
    finally:
        es.close()
    return response["hits"]["total"]["value"], response["aggregations"]["products"]["value"]


def import_catalogue(settings: VitrineSettings, directory: Path, prefix: str, count: int) -> int:
    """Import ``count`` products (one image each) through the importer, without waiting."""
    rows = [make_product(directory, seed, prefix=prefix).model_dump() for seed in range(count)]
    catalogue = directory / f"{prefix}.jsonl"
    catalogue.write_text("".join(json.dumps(row) + "\n" for row in rows))
    plan = plan_import(
        catalogue,
        store=ImageStore(settings.images_dir),
        limits=ImageLimits.from_settings(settings),
    )
    assert not plan.rejected
    run_import(create_celery(settings), plan, batch_size=4, wait=False)
    return len(plan.products)


# --------------------------------------------------------------------------- API keys


def test_api_keys_survive_a_redis_restart_and_restore_from_an_export(stack, keys):
    new = keys.create("shop-durable", name="restart")
    restart_redis(stack, persistent=True)
    assert keys.lookup(new.key) == new.info  # the append-only file kept it
    exported = keys.export()

    restart_redis(stack, persistent=False)  # a Redis that lost its data
    assert keys.lookup(new.key) is None
    keys.restore(exported)
    assert keys.lookup(new.key) == new.info
    figures("api_keys", keys=len(exported), survived_aof_restart=True, restored_from_export=True)


# --------------------------------------------------------------------------- Redis lost


def test_redis_lost_mid_import_loses_nothing_after_reconciliation(stack, worker, tmp_path):
    """Redis without persistence is restarted while most jobs are still queued: every queued
    message and job state is gone; the journal brings all of them back."""
    prefix, total = unique_prefix(), 60
    restart_redis(stack, persistent=False)
    accepted = import_catalogue(stack, tmp_path, prefix, total)
    wait_until(lambda: indexed(stack, prefix)[1] >= 4, 120, "first products indexed")
    before_loss = indexed(stack, prefix)[1]
    pending_at_loss = len(worker.pending_journal.pending())
    restart_redis(stack, persistent=False)
    lost_at = time.monotonic()

    wait_until(lambda: indexed(stack, prefix)[1] >= accepted, 180, "every product indexed")
    recovered_s = time.monotonic() - lost_at
    wait_until(lambda: not worker.pending_journal.pending(), 60, "the journal empty")
    documents, products = indexed(stack, prefix)
    assert (documents, products) == (total, total)
    figures(
        "redis_lost_mid_import",
        products=total,
        indexed_before_loss=before_loss,
        pending_records_at_loss=pending_at_loss,
        lost=total - products,
        duplicates=documents - products,
        seconds_to_recover=round(recovered_s, 1),
    )


# --------------------------------------------------------------------------- ES down


def upload(client: TestClient, key: str, product_id: str, seed: int) -> dict:
    buffer = io.BytesIO()
    pattern_image(seed).save(buffer, format="PNG")
    response = client.post(
        "/v1/products",
        headers={"X-API-Key": key},
        data={"metadata": json.dumps({"product_id": product_id, "title": f"P {seed}"})},
        files=[("image", ("p.png", buffer.getvalue(), "image/png"))],
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_elasticsearch_down_longer_than_the_old_retry_window_loses_nothing(
    stack, worker, keys, tmp_path
):
    """Uploads and an import arrive while Elasticsearch is down for longer than the old retry
    window (and than the retry budget configured here): all are accepted, their jobs give up,
    their error records are spooled; once Elasticsearch is back the reconciler sends them
    again, flushes the spool, and every product is indexed exactly once."""
    prefix, uploads, imported = unique_prefix(), 12, 12
    key = keys.create("shop-durable").key
    es = make_client(stack)
    with TestClient(create_app(stack, load_model=False)) as client:
        upload(client, key, f"{prefix}-warm", 999)  # the index exists before the outage
        wait_until(lambda: indexed(stack, prefix)[1] == 1, 120, "the first product indexed")

        assert not services.stop_elasticsearch(stack).running
        down_at = time.monotonic()
        window = OLD_RETRY_WINDOW_S + 5
        accepted, accepted_imports = [], 0
        for i in range(uploads):  # spread over the outage, the import half-way
            time.sleep(max(0.0, down_at + i * window / uploads - time.monotonic()))
            accepted.append(upload(client, key, f"{prefix}-u{i}", 1000 + i))
            if i == uploads // 2:
                accepted_imports = import_catalogue(stack, tmp_path, f"{prefix}-i", imported)
        time.sleep(max(0.0, down_at + window - time.monotonic()))
        spooled = len(list(ErrorSpool(stack.journal_root).items()))
        services.start_elasticsearch(stack)
        up_at = time.monotonic()
        outage_s = up_at - down_at

        expected = 1 + uploads + accepted_imports
        wait_until(lambda: indexed(stack, prefix)[1] >= expected, 180, "every product indexed")
        recovered_s = time.monotonic() - up_at
        wait_until(lambda: not worker.pending_journal.pending(), 60, "the journal empty")
        wait_until(
            lambda: not list(ErrorSpool(stack.journal_root).items()), 60, "the spool flushed"
        )
        # status URLs handed out during the outage still answer, with the final state
        statuses = [client.get(a["status_url"], headers={"X-API-Key": key}) for a in accepted]
        assert all(r.status_code == 200 for r in statuses), [r.text for r in statuses]
        states = {r.json()["state"] for r in statuses}
    documents, products = indexed(stack, prefix)
    es.indices.refresh(index=stack.errors_index)
    unavailable = es.count(
        index=stack.errors_index,
        query={"bool": {"filter": [
            {"term": {"reason": "elasticsearch_unavailable"}},
            {"prefix": {"product_id": prefix}},
        ]}},
    )["count"]  # fmt: skip
    es.close()
    assert (documents, products) == (expected, expected)
    assert states == {"done"}
    assert spooled > 0 and unavailable > 0  # the give-ups during the outage were recorded
    figures(
        "elasticsearch_down",
        products=expected - 1,
        outage_s=round(outage_s, 1),
        old_retry_window_s=OLD_RETRY_WINDOW_S,
        retry_budget_s=stack.task_retry_budget_s,
        error_records_spooled=spooled,
        error_records_flushed=unavailable,
        lost=expected - products,
        duplicates=documents - products,
        seconds_to_recover_after_es_up=round(recovered_s, 1),
    )


# --------------------------------------------------------------------------- Redis lost, jobs held


def reconnected(worker_log: Path) -> bool:
    """Whether the worker connected to the broker a second time (it logs each connection)."""
    return worker_log.read_text().count("Connected to") >= 2


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_redis_lost_while_a_worker_holds_jobs_keeps_the_worker_and_loses_nothing(
    stack, pool, tmp_path
):
    """Elasticsearch is down, so the worker holds every job unacknowledged while it waits out
    its retry countdown; then Redis restarts. kombu's requeue of the held jobs on the closed
    connection used to stop the worker (``Unrecoverable error: AttributeError``, see
    ``pipeline.broker``): it must reconnect, and every product be indexed once Elasticsearch
    is back, the held jobs requeued from Redis's unacked set after the visibility timeout.
    Last in the module: it restarts Redis under the module's worker too."""
    settings = stack.model_copy(
        update={
            "worker_pool": pool,
            "queue": f"{stack.queue}-held-{pool}",
            "home": tmp_path,
            # the held jobs come back once unacknowledged this long: seconds, not minutes
            "task_soft_time_limit_s": 15,
            "task_time_limit_s": 20,
            "visibility_timeout_s": 30,
            "unacked_restore_interval_s": 2,
        }
    )
    prefix, total = unique_prefix(), 8
    unacked = Redis.from_url(settings.redis_url)
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log, worker_process(settings, output=log):
        assert not services.stop_elasticsearch(settings).running
        try:
            accepted = import_catalogue(settings, tmp_path, prefix, total)
            unacked_key = f"{settings.queue}.unacked"
            wait_until(lambda: unacked.hlen(unacked_key) >= 2, 60, "jobs held unacknowledged")
            held = unacked.hlen(unacked_key)
            restart_redis(settings, persistent=True)
            wait_until(lambda: reconnected(log_path), 60, "the worker reconnected to Redis")
        finally:
            services.start_elasticsearch(settings)
        up_at = time.monotonic()
        wait_until(lambda: indexed(settings, prefix)[1] >= accepted, 180, "every product indexed")
        recovered_s = time.monotonic() - up_at
    assert "Unrecoverable error" not in log_path.read_text()
    documents, products = indexed(settings, prefix)
    assert (documents, products) == (total, total)
    figures(
        f"redis_lost_while_{pool}_worker_holds_jobs",
        products=total,
        held_at_loss=held,
        lost=total - products,
        duplicates=documents - products,
        seconds_to_recover_after_es_up=round(recovered_s, 1),
    )
