"""Ids that cannot collide (issue 8): merchant ``shop-d:a`` uploading product ``b:c`` used to
overwrite merchant ``shop-d``'s product ``a:b:c`` (ids were joined with ``:``). Through the real
API and worker, both products now stay, and re-sending one still overwrites only itself."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.documents import Product, document_id
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.merchants.apikeys import ApiKeyStore
from tests.integration.helpers import pattern_image

# (merchant, product) pairs whose old ids were both "shop-d:a:b:c:<image hash>"
ONE, OTHER = ("shop-d", "a:b:c"), ("shop-d:a", "b:c")


@pytest.fixture(scope="module")
def client(settings, worker) -> Iterator[TestClient]:
    with TestClient(create_app(settings, load_model=False)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(settings, services) -> dict[str, str]:
    store = ApiKeyStore(Redis.from_url(settings.redis_url), settings.redis_prefix)
    return {merchant: store.create(merchant).key for merchant, _ in (ONE, OTHER)}


def png() -> bytes:
    buffer = io.BytesIO()
    pattern_image(8181).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_and_wait(client: TestClient, key: str, product_id: str, title: str) -> dict[str, Any]:
    response = client.post(
        "/v1/products",
        headers={"X-API-Key": key},
        data={"metadata": f'{{"product_id": "{product_id}", "title": "{title}"}}'},
        files=[("image", ("photo.png", png(), "image/png"))],  # the same picture for both
    )
    assert response.status_code == 202, response.text
    job_url = response.json()["status_url"]
    deadline = time.monotonic() + 120
    while (job := client.get(job_url, headers={"X-API-Key": key}).json())["state"] not in (
        "done",
        "failed",
        "partially_failed",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "done", job
    return dict(job)


def documents(es, settings, merchant_id: str) -> list[dict[str, Any]]:
    es.indices.refresh(index=settings.index_alias)
    hits = es.search(
        index=settings.index_alias, query={"term": {"merchant_id": merchant_id}}, size=10
    )["hits"]["hits"]
    return list(hits)


def test_a_merchant_id_with_a_colon_cannot_overwrite_another_merchants_product(
    client: TestClient, keys: dict[str, str], es, settings
) -> None:
    upload_and_wait(client, keys[ONE[0]], ONE[1], "owned by shop-d")
    upload_and_wait(client, keys[OTHER[0]], OTHER[1], "owned by shop-d:a")

    for (merchant, product_id), title in ((ONE, "owned by shop-d"), (OTHER, "owned by shop-d:a")):
        view = client.get(f"/v1/products/{product_id}", headers={"X-API-Key": keys[merchant]})
        assert view.status_code == 200, view.text
        assert (view.json()["merchant_id"], view.json()["title"]) == (merchant, title)
        [doc] = documents(es, settings, merchant)
        assert doc["_source"]["product_id"] == product_id
        assert doc["_id"] == document_id(merchant, product_id, doc["_source"]["image_sha256"])
    first, second = documents(es, settings, ONE[0]), documents(es, settings, OTHER[0])
    assert first[0]["_id"] != second[0]["_id"]

    # Ids stay deterministic: re-sending a product overwrites its own document, nothing else.
    upload_and_wait(client, keys[ONE[0]], ONE[1], "owned by shop-d, again")
    [again] = documents(es, settings, ONE[0])
    assert again["_id"] == first[0]["_id"]
    assert again["_source"]["title"] == "owned by shop-d, again"
    assert documents(es, settings, OTHER[0])[0]["_source"]["title"] == "owned by shop-d:a"


def test_ingest_error_records_of_such_products_are_both_kept(worker, es, settings, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    products = [
        Product(merchant_id=merchant, product_id=product_id, title="t", images=[str(broken)])
        for merchant, product_id in (ONE, OTHER)
    ]
    [job] = enqueue(worker, products, batch_size=2)  # one job: the old error ids were equal
    assert wait_for_jobs(worker, [job], timeout_s=120)[job].state == "failed"
    es.indices.refresh(index=settings.errors_index)
    recorded = es.search(index=settings.errors_index, query={"term": {"job_id": job}}, size=10)
    assert sorted(
        (h["_source"]["merchant_id"], h["_source"]["product_id"]) for h in recorded["hits"]["hits"]
    ) == sorted([ONE, OTHER])
