"""Products through the real queue and worker into the real Elasticsearch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from celery import states

from pipeline.documents import document_id
from pipeline.es import indexing
from pipeline.images import load_image
from pipeline.jobs import QUEUED, enqueue, enqueue_delete, job_status, job_statuses, wait_for_jobs
from pipeline.search.query import Filters, KnnQuery
from tests.integration.helpers import make_product, unique_prefix, write_image


def run_search(es, index: str, body: dict) -> list[dict]:
    """Hits of a search body as ``{"_id", "_score", **_source}``."""
    hits = es.search(index=index, **body)["hits"]["hits"]
    return [{"_id": h["_id"], "_score": h["_score"], **h["_source"]} for h in hits]


def _docs(es, settings, **terms) -> list[dict]:
    es.indices.refresh(index=settings.index_alias)
    query = {"bool": {"filter": [{"term": {k: v}} for k, v in terms.items()]}}
    hits = es.search(index=settings.index_alias, query=query, size=100)["hits"]["hits"]
    return hits


def _run(worker, products, batch_size=1):
    job_ids = enqueue(worker, products, batch_size=batch_size)
    return job_ids, wait_for_jobs(worker, job_ids, timeout_s=180)


def test_products_are_indexed_with_fields_and_vectors(worker, es, settings, encoder, tmp_path):
    prefix = unique_prefix()
    products = [
        make_product(tmp_path, seed, prefix=prefix, tags=["Red ", "sale", "red"])
        for seed in range(4)
    ]
    job_ids, statuses = _run(worker, products, batch_size=2)
    assert [statuses[j].state for j in job_ids] == ["done", "done"]

    for product in products:
        hits = _docs(es, settings, product_id=product.product_id)
        assert len(hits) == 1
        source = hits[0]["_source"]
        loaded = load_image(product.images[0])
        assert hits[0]["_id"] == document_id("merchant-a", product.product_id, loaded.sha256)
        assert source["merchant_id"] == "merchant-a"
        assert source["title"] == product.title
        assert source["tags"] == ["red", "sale"]
        assert source["price"] == product.price and source["currency"] == "EUR"
        assert source["image_sha256"] == loaded.sha256
        assert (source["width"], source["height"]) == (96, 96)
        assert source["model_id"] == encoder.model_id
        assert "random-init" in source["model_id"]
        assert source["indexed_at"]
        fresh = encoder.embed_images([loaded.image])[0]
        stored = np.asarray(source["image_vector"], dtype=np.float32)
        assert float(fresh @ stored / np.linalg.norm(stored)) > 0.999


def test_knn_with_own_image_returns_product_first(worker, es, settings, encoder, tmp_path):
    prefix = unique_prefix()
    products = [make_product(tmp_path, 100 + seed, prefix=prefix) for seed in range(6)]
    _run(worker, products, batch_size=6)
    es.indices.refresh(index=settings.index_alias)
    for product in products:
        vector = encoder.embed_images([load_image(product.images[0]).image])[0]
        body = KnnQuery(vector, encoder.model_id, Filters(), 3).body()
        hits = run_search(es, settings.index_alias, body)
        assert hits[0]["product_id"] == product.product_id


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(tags_all=["summer"]), {1, 3}),
        (Filters(tags_any=["summer", "winter"]), {1, 2, 3}),
        (Filters(category="bags"), {0, 1}),
        (Filters(merchant_id="merchant-b"), {2, 3}),
        (Filters(min_price=15, max_price=25), {1, 2}),
        (Filters(in_stock=False), {3}),
        (Filters(category="bags", in_stock=True, max_price=12), {0}),
    ],
)
def test_keyword_filters_are_applied_inside_knn(
    filters, expected, worker, es, settings, encoder, tmp_path_factory
):
    directory = tmp_path_factory.mktemp("filters")
    prefix = unique_prefix()
    spec = [  # (category, tags, merchant, price, in_stock)
        ("bags", ["plain"], "merchant-a", 10.0, True),
        ("bags", ["summer"], "merchant-a", 20.0, True),
        ("shoes", ["winter"], "merchant-b", 25.0, True),
        ("shoes", ["summer"], "merchant-b", 30.0, False),
    ]
    products = [
        make_product(
            directory,
            200 + i,
            prefix=prefix,
            category=c,
            tags=t,
            merchant_id=m,
            price=p,
            in_stock=s,
        )
        for i, (c, t, m, p, s) in enumerate(spec)
    ]
    _run(worker, products, batch_size=4)
    es.indices.refresh(index=settings.index_alias)
    # query with product 3's image: the nearest vector must still be excluded if it does not match
    vector = encoder.embed_images([load_image(products[3].images[0]).image])[0]
    body = KnnQuery(vector, encoder.model_id, filters, 10).body()
    body["knn"]["filter"]["bool"]["filter"].append({"prefix": {"product_id": prefix}})
    found = {
        int(h["product_id"].rsplit("-", 1)[1]) - 200
        for h in run_search(es, settings.index_alias, body)
    }
    assert found == expected


def test_same_product_twice_gives_one_document_and_new_image_replaces_it(
    worker, es, settings, tmp_path
):
    prefix = unique_prefix()
    product = make_product(tmp_path, 300, prefix=prefix)
    _run(worker, [product])
    _run(worker, [product])
    first = _docs(es, settings, product_id=product.product_id)
    assert len(first) == 1

    changed = product.model_copy(
        update={"images": [str(write_image(tmp_path, 301))], "price": 99.0}
    )
    _run(worker, [changed])
    after = _docs(es, settings, product_id=product.product_id)
    assert len(after) == 1
    assert after[0]["_id"] != first[0]["_id"]
    assert after[0]["_source"]["image_sha256"] == load_image(changed.images[0]).sha256
    assert after[0]["_source"]["price"] == 99.0


def test_a_job_that_asks_for_refresh_is_searchable_when_done(worker, es, settings, tmp_path):
    """Read-your-write on request, without any refresh by the reader; the replaced image's
    document goes in the same bulk request."""
    product = make_product(tmp_path, 310, prefix=unique_prefix())

    def visible() -> list[dict]:  # no refresh here: what a shop sees right now
        query = {"term": {"product_id": product.product_id}}
        return es.search(index=settings.index_alias, query=query)["hits"]["hits"]

    [job] = enqueue(worker, [product], refresh=True)
    assert wait_for_jobs(worker, [job], timeout_s=180)[job].state == "done"
    assert len(visible()) == 1
    changed = product.model_copy(update={"images": [str(write_image(tmp_path, 311))]})
    [job] = enqueue(worker, [changed], refresh=True)
    assert wait_for_jobs(worker, [job], timeout_s=180)[job].state == "done"
    [hit] = visible()
    assert hit["_source"]["image_sha256"] == load_image(changed.images[0]).sha256


def test_bad_images_fail_only_their_own_job_and_are_recorded(worker, es, settings, tmp_path):
    prefix = unique_prefix()
    good = write_image(tmp_path, 400)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is a text file, not a photo\n" * 20)
    oversized = write_image(tmp_path, 401, fmt="PNG", size=2100)  # 4.4 Mpx > 4 Mpx limit
    cases = {"corrupt": corrupt, "empty": empty, "not_an_image": not_image, "too_large": oversized}

    products = [make_product(tmp_path, 410, prefix=prefix)]
    products += [
        make_product(
            tmp_path, 420 + i, prefix=prefix, product_id=f"{prefix}-{reason}", images=[str(path)]
        )
        for i, (reason, path) in enumerate(cases.items())
    ]
    products.append(make_product(tmp_path, 430, prefix=prefix))
    job_ids, statuses = _run(worker, products, batch_size=1)

    states = {p.product_id: statuses[j] for p, j in zip(products, job_ids, strict=True)}
    assert states[f"{prefix}-410"].state == "done"
    assert states[f"{prefix}-430"].state == "done"
    for reason in cases:
        status = states[f"{prefix}-{reason}"]
        assert status.state == "failed"
        assert status.results[0]["reason"] == reason
        assert not _docs(es, settings, product_id=f"{prefix}-{reason}")
    assert len(_docs(es, settings, product_id=f"{prefix}-410")) == 1

    es.indices.refresh(index=settings.errors_index)
    errors = es.search(
        index=settings.errors_index, query={"prefix": {"product_id": prefix}}, size=20
    )["hits"]["hits"]
    recorded = {e["_source"]["product_id"]: e["_source"] for e in errors}
    assert set(recorded) == {f"{prefix}-{reason}" for reason in cases}
    for reason in cases:
        entry = recorded[f"{prefix}-{reason}"]
        assert entry["reason"] == reason
        assert entry["merchant_id"] == "merchant-a"
        assert entry["message"] and entry["occurred_at"] and entry["job_id"]


def test_a_bad_image_in_a_batch_job_does_not_stop_the_others(worker, es, settings, tmp_path):
    prefix = unique_prefix()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    products = [make_product(tmp_path, 500 + i, prefix=prefix) for i in range(3)]
    products.insert(1, make_product(tmp_path, 510, prefix=prefix, images=[str(broken)]))
    job_ids, statuses = _run(worker, products, batch_size=4)
    status = statuses[job_ids[0]]
    assert status.state == "partially_failed"
    by_id = {r["product_id"]: r for r in status.results}
    assert by_id[f"{prefix}-510"]["status"] == "failed"
    for seed in (500, 501, 502):
        assert by_id[f"{prefix}-{seed}"]["status"] == "indexed"
        assert len(_docs(es, settings, product_id=f"{prefix}-{seed}")) == 1


def test_delete_product_removes_its_documents(worker, es, settings, tmp_path):
    prefix = unique_prefix()
    product = make_product(
        tmp_path,
        600,
        prefix=prefix,
        images=[str(write_image(tmp_path, 600)), str(write_image(tmp_path, 601))],
    )
    _run(worker, [product])
    assert len(_docs(es, settings, product_id=product.product_id)) == 2
    job_id = enqueue_delete(worker, product.merchant_id, product.product_id)
    status = wait_for_jobs(worker, [job_id], timeout_s=60)[job_id]
    assert status.state == "done" and status.results[0]["deleted"] == 2
    assert not _docs(es, settings, product_id=product.product_id)


def test_job_status_of_an_unknown_job(worker):
    assert job_status(worker, "no-such-job").state == "unknown"


def test_job_statuses_read_many_jobs_as_job_status_reads_each(worker, monkeypatch):
    """Every state a job can be in, read in chunks of one MGET, as ``job_status`` reads it."""
    prefix = unique_prefix()
    stored = {
        f"{prefix}-queued": (None, QUEUED),
        f"{prefix}-started": (None, states.STARTED),
        f"{prefix}-retry": (RuntimeError("Elasticsearch down"), states.RETRY),
        f"{prefix}-failure": (ValueError("bad payload"), states.FAILURE),
        f"{prefix}-partial": ([{"status": "indexed"}, {"status": "failed"}], states.SUCCESS),
    }
    for job_id, (result, state) in stored.items():
        worker.backend.store_result(job_id, result, state)
    job_ids = [*stored, f"{prefix}-unknown"]
    monkeypatch.setattr("pipeline.jobs.STATUS_CHUNK", 4)  # two MGETs
    statuses = job_statuses(worker, job_ids)
    assert statuses == {job_id: job_status(worker, job_id) for job_id in job_ids}
    assert [statuses[job_id].state for job_id in job_ids] == [
        "queued", "running", "retrying", "failed", "partially_failed", "unknown",
    ]  # fmt: skip


def test_index_of_another_model_is_refused(es, settings, encoder):
    from pipeline.ingest.ingestor import Ingestor

    Ingestor(settings, es=es, encoder=encoder).ensure_index()
    with pytest.raises(indexing.IndexModelMismatch, match="re-embed"):
        indexing.ensure_indices(es, settings, "open_clip:other-model:x:32", 32)


def test_enqueue_command_sends_products_as_json(worker, es, settings, tmp_path):
    prefix = unique_prefix()
    good = make_product(tmp_path, 700, prefix=prefix).model_dump()
    bad = {**make_product(tmp_path, 701, prefix=prefix).model_dump(), "images": [str(tmp_path)]}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "enqueue", "-", "--wait"],
        input=json.dumps([good, bad]),
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr  # one of the two jobs failed
    statuses = {s["results"][0]["product_id"]: s for s in json.loads(result.stdout)}
    assert statuses[good["product_id"]]["state"] == "done"
    assert statuses[bad["product_id"]]["results"][0]["reason"] == "invalid_source"
    assert len(_docs(es, settings, product_id=good["product_id"])) == 1

    refused = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "enqueue", "-"],
        input='{"product_id": "x"}',
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "invalid products" in refused.stderr


def test_the_model_is_loaded_once_per_worker_process(worker, worker_log, tmp_path):
    prefix = unique_prefix()
    _run(worker, [make_product(tmp_path, 800 + i, prefix=prefix) for i in range(3)], batch_size=1)
    log = worker_log.read_text()
    assert log.count("indexed product merchant-a/" + prefix) == 3
    assert log.count("loaded encoder open_clip:vitrine-tiny-vit") == 1  # one pool process
