"""A threads-pool worker embeds one-product jobs in shared forward passes, against the real stack:
every product gets the vector of its own image (no rows mixed up between jobs), a corrupt image
fails only its own job, and the worker's exporter shows passes of several images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline.dev.worker_process import worker_process
from pipeline.images import Reason, load_image
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.settings import VitrineSettings
from tests.integration.helpers import make_product, near_duplicate, pattern_image, unique_prefix
from tests.integration.test_observability import free_port, samples, value

JOBS = 12


@pytest.fixture(scope="module")
def batching_worker(es, worker_settings: VitrineSettings, tmp_path_factory) -> Iterator[tuple]:
    """A threads-pool worker with JOBS job slots on a queue of its own; a first image waits up
    to 1 s for company, so jobs sent together share passes however slow this machine is. Its
    own pending journal: its reconciler must not resend other tests' products here."""
    port = free_port()
    directory = tmp_path_factory.mktemp("batching-worker")
    current = worker_settings.model_copy(
        update={
            "journal_dir": directory / "journal",
            "queue": f"{worker_settings.queue}-batching",
            "worker_metrics_port": port,
            "worker_pool": "threads",
            "batch_size": 8,
            "embed_batch_wait_ms": 1000,
        }
    )
    log = directory / "worker.log"
    with log.open("w") as out, worker_process(current, concurrency=JOBS, output=out) as app:
        yield app, current, f"http://127.0.0.1:{port}/metrics", log


def test_one_product_jobs_share_forward_passes_and_keep_their_own_vectors(
    batching_worker, es, settings, encoder, tmp_path: Path
):
    app, current, url, log = batching_worker
    before = samples(httpx.get(url, timeout=10).text)
    prefix = unique_prefix()
    products = [make_product(tmp_path, 700 + seed, prefix=prefix) for seed in range(JOBS - 1)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all" * 20)
    bad = make_product(tmp_path, 799, prefix=prefix, images=[str(broken)])
    job_ids = enqueue(app, [*products, bad], batch_size=1)
    statuses = wait_for_jobs(app, job_ids, timeout_s=240)
    states = [statuses[j].state for j in job_ids]
    assert states == ["done"] * (JOBS - 1) + ["failed"], log.read_text()[-3000:]
    assert statuses[job_ids[-1]].results[0]["reason"] == Reason.NOT_AN_IMAGE

    es.indices.refresh(index=settings.index_alias)
    for product in products:
        hits = es.search(
            index=settings.index_alias,
            query={"term": {"product_id": product.product_id}},
            source_includes=["image_vector"],
        )["hits"]["hits"]
        assert len(hits) == 1
        stored = np.asarray(hits[0]["_source"]["image_vector"], dtype=np.float32)
        own = encoder.embed_images([load_image(product.images[0]).image])[0]
        assert float(own @ stored / np.linalg.norm(stored)) > 0.999, product.product_id

    after = samples(httpx.get(url, timeout=10).text)
    images = value(after, "vitrine_embed_batch_images_sum") - value(
        before, "vitrine_embed_batch_images_sum"
    )
    passes = value(after, "vitrine_embed_batch_images_count") - value(
        before, "vitrine_embed_batch_images_count"
    )
    assert images == JOBS - 1  # the corrupt image never reached the model
    assert passes < images / 2, f"{images:.0f} images in {passes:.0f} forward passes"


def test_copies_in_jobs_run_at_once_share_a_duplicate_group(
    batching_worker, es, settings, tmp_path: Path
):
    """Two one-product jobs with the same item, sent together: the threads-pool worker runs them
    at once, before either document is searchable, and they still share one group."""
    app, _, _, _ = batching_worker
    prefix = unique_prefix()
    original = pattern_image(int(prefix[1:], 16) % 1_000_000 + 5000)
    paths = [tmp_path / "original.png", tmp_path / "copy.png"]
    original.save(paths[0])
    near_duplicate(original).save(paths[1])
    products = [
        make_product(tmp_path, 0, prefix=prefix, merchant_id=merchant, images=[str(path)])
        for merchant, path in zip(("shop-one", "shop-two"), paths, strict=True)
    ]
    statuses = wait_for_jobs(app, enqueue(app, products, batch_size=1), timeout_s=240)
    assert all(s.state == "done" for s in statuses.values())
    es.indices.refresh(index=settings.index_alias)
    groups = {
        hit["_source"]["merchant_id"]: hit["_source"]["duplicate_group"]
        for hit in es.search(
            index=settings.index_alias,
            query={"terms": {"product_id": [p.product_id for p in products]}},
            source_includes=["merchant_id", "duplicate_group"],
        )["hits"]["hits"]
    }
    assert set(groups) == {"shop-one", "shop-two"}
    assert groups["shop-one"] == groups["shop-two"]
