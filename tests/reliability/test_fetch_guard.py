"""The fetch guard end to end: the real API and a real worker refuse every SSRF target of
issue 8, reach an allow-listed local image host, and stay bounded by a drip-feeding host.

Settings here allow-list only ``127.0.0.2`` (a loopback address the test image host listens
on), so ``127.0.0.1`` in all its spellings, ``localhost`` and Elasticsearch's own port are the
internal targets. No traffic leaves loopback: before any URL is handed to the API or the worker,
the same guard with the same settings is run in this process with a trip-wire on the socket
layer, proving that the targets that are not on loopback are refused before any connection.
"""

from __future__ import annotations

import io
import ipaddress
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpcore
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.dev.worker_process import worker_process
from pipeline.documents import Product
from pipeline.fetch import FetchError, FetchPolicy, fetch
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.merchants.apikeys import ApiKeyStore
from pipeline.settings import VitrineSettings
from tests.fetch_servers import FetchTestServer, closed_port
from tests.integration.helpers import pattern_image, unique_prefix

IMAGE_HOST = "127.0.0.2"
REFUSAL = "<url>: refused, the host is internal or not allowed"


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pattern_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def host() -> Iterator[FetchTestServer]:
    server = FetchTestServer(host=IMAGE_HOST, drip_interval_s=0.5)
    server.images["ok"] = png(1)
    server.images["other"] = png(2)
    server.images["slow"] = png(3)  # a few hundred bytes at 2 bytes/s: minutes
    yield server
    server.close()


@pytest.fixture(scope="module")
def guarded(settings: VitrineSettings) -> VitrineSettings:
    """The session's settings without the 127.0.0.1 allow-list of the other tests."""
    return settings.model_copy(
        update={
            "fetch_allow": [IMAGE_HOST],
            "anonymous_image_urls": False,
            "queue": f"{settings.queue}-guard",
            "image_fetch_timeout_s": 1.5,
        }
    )


def ssrf_targets(settings: VitrineSettings, host: FetchTestServer) -> list[str]:
    """Issue 8's targets: Elasticsearch's open port in every spelling of loopback, a closed
    port, private, link-local and metadata addresses, and redirects from an allowed host."""
    es = urlsplit(settings.es_url).port or 9200
    loopback = [
        "127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "017700000001",
        "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0",
    ]  # fmt: skip
    return [
        *(f"http://{name}:{es}/" for name in loopback),
        f"http://127.0.0.1:{closed_port()}/",
        f"https://127.0.0.1:{es}/",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/a.jpg",
        "http://192.168.1.1:8080/a.jpg",
        "http://[fe80::1]/a.jpg",
        host.url(f"/redirect?to=http://127.0.0.1:{es}/"),
        host.url(f"/redirect?to=http://localhost:{es}/_cat/indices"),
        host.url("/redirect?to=http://169.254.169.254/latest/meta-data/"),
    ]


@pytest.fixture
def trip_wire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Addresses this process connects to; any but loopback fails the test before connecting."""
    made: list[str] = []
    real = httpcore.SyncBackend.connect_tcp

    def connect(self: Any, address: str, port: int, *args: Any, **kwargs: Any) -> Any:
        assert ipaddress.ip_address(address).is_loopback, f"tried to connect to {address}"
        made.append(address)
        return real(self, address, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect)
    return made


def assert_refused_here(urls: list[str], settings: VitrineSettings, trip_wire: list[str]) -> None:
    """The guard under ``settings`` refuses every URL, connecting to nothing but the image host
    (the first hop of the redirects): only then may the URLs go to another process."""
    policy = FetchPolicy.from_settings(settings)
    for url in urls:
        with pytest.raises(FetchError) as info:
            fetch(url, policy=policy, max_bytes=1 << 20, timeout_s=5)
        assert info.value.reason == "fetch_refused", url
        assert info.value.message.replace(url, "<url>") == REFUSAL
    assert set(trip_wire) <= {IMAGE_HOST}


# --------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def api(guarded: VitrineSettings, es) -> Iterator[TestClient]:
    with TestClient(create_app(guarded)) as client:
        yield client


@pytest.fixture(scope="module")
def key(guarded: VitrineSettings, services) -> str:
    keys = ApiKeyStore(Redis.from_url(guarded.redis_url), guarded.redis_prefix)
    return keys.create("merchant-guard").key


def reason(response: Any) -> str:
    return str(response.json()["detail"]["reason"])


def test_anonymous_image_urls_are_off_unless_the_host_is_allow_listed(
    api: TestClient, guarded: VitrineSettings, host: FetchTestServer, trip_wire: list[str]
) -> None:
    targets = ssrf_targets(guarded, host)
    assert_refused_here(targets, guarded, trip_wire)
    trip_wire.clear()
    for url in targets:
        # A redirect's first hop is the allow-listed host: fetched, and refused at the redirect.
        expected = "fetch_refused" if url.startswith(host.url("/")) else "api_key_required"
        for path in ("/v1/embed", "/v1/search"):
            response = api.post(path, json={"image_url": url})
            assert reason(response) == expected, (url, response.text)
            assert (response.status_code == 401) == (expected == "api_key_required")
            assert response.status_code < 500
    assert set(trip_wire) == {IMAGE_HOST}  # nothing else was ever connected
    allowed = api.post("/v1/embed", json={"image_url": host.url("/img/ok")})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["kind"] == "image"


def test_with_an_api_key_every_ssrf_target_is_refused_alike(
    api: TestClient, guarded: VitrineSettings, host: FetchTestServer, key: str, trip_wire: list[str]
) -> None:
    targets = ssrf_targets(guarded, host)
    assert_refused_here(targets, guarded, trip_wire)
    answers = set()
    for url in targets:
        for path in ("/v1/embed", "/v1/search"):
            response = api.post(path, json={"image_url": url}, headers={"X-API-Key": key})
            assert 400 <= response.status_code < 500, (url, response.text)
            detail = response.json()["detail"]
            message = detail["message"].replace(url, "<url>")
            answers.add((response.status_code, detail["reason"], message))
    [(_, why, message)] = answers  # one answer for all: open port, closed port, any address
    assert (why, message) == ("fetch_refused", REFUSAL)
    assert set(trip_wire) == {IMAGE_HOST}  # only the redirects' first hop was ever connected
    reachable = api.post(
        "/v1/embed", json={"image_url": host.url("/img/other")}, headers={"X-API-Key": key}
    )
    assert reachable.status_code == 200, reachable.text


def test_anonymous_image_urls_when_switched_on_are_still_guarded(
    guarded: VitrineSettings, host: FetchTestServer, trip_wire: list[str]
) -> None:
    app = create_app(guarded.model_copy(update={"anonymous_image_urls": True}), load_model=False)
    with TestClient(app) as client:
        for url in ssrf_targets(guarded, host)[:3]:
            response = client.post("/v1/embed", json={"image_url": url})
            assert reason(response) == "fetch_refused", response.text
        assert client.post("/v1/embed", json={"image_url": host.url("/img/ok")}).status_code == 200


def test_a_drip_feeding_image_host_is_answered_by_the_deadline(
    api: TestClient, guarded: VitrineSettings, host: FetchTestServer, key: str
) -> None:
    start = time.monotonic()
    response = api.post(
        "/v1/embed", json={"image_url": host.url("/drip/slow")}, headers={"X-API-Key": key}
    )
    took = time.monotonic() - start
    assert 400 <= response.status_code < 500 and reason(response) == "fetch_timeout", response.text
    assert "did not finish within" in response.json()["detail"]["message"]
    assert took < guarded.image_fetch_timeout_s + 10  # the deadline, not the body's 3+ minutes


# --------------------------------------------------------------------------- worker


@pytest.fixture(scope="module")
def guard_worker(guarded: VitrineSettings, es, tmp_path_factory) -> Iterator[Any]:
    log_path = tmp_path_factory.mktemp("guard-worker") / "worker.log"
    with log_path.open("w") as log, worker_process(guarded, output=log) as app:
        yield app


def product(prefix: str, name: str, url: str) -> Product:
    return Product(
        product_id=f"{prefix}-{name}", merchant_id="merchant-guard", title=name, images=[url]
    )


def test_the_worker_refuses_every_ssrf_target_and_indexes_the_rest(
    guard_worker: Any,
    guarded: VitrineSettings,
    es,
    host: FetchTestServer,
    trip_wire: list[str],
) -> None:
    targets = ssrf_targets(guarded, host)
    assert_refused_here(targets, guarded, trip_wire)
    prefix = unique_prefix()
    products = [product(prefix, f"t{i}", url) for i, url in enumerate(targets)]
    products.insert(3, product(prefix, "good-1", host.url("/img/ok")))
    products.append(product(prefix, "good-2", host.url("/img/other")))
    [job] = enqueue(guard_worker, products, batch_size=len(products))
    status = wait_for_jobs(guard_worker, [job], timeout_s=120)[job]

    assert status.state == "partially_failed"
    results = {r["product_id"]: r for r in status.results}
    for name in ("good-1", "good-2"):
        assert results[f"{prefix}-{name}"]["status"] == "indexed"
    for i, url in enumerate(targets):
        result = results[f"{prefix}-t{i}"]
        assert (result["status"], result["reason"]) == ("failed", "fetch_refused"), url
        assert result["message"].replace(url, "<url>") == REFUSAL
    es.indices.refresh(index=guarded.errors_index)
    recorded = es.search(index=guarded.errors_index, query={"term": {"job_id": job}}, size=100)[
        "hits"
    ]["hits"]
    assert {h["_source"]["reason"] for h in recorded} == {"fetch_refused"}
    assert len(recorded) == len(targets)


def test_one_slow_image_fails_only_its_own_product_in_a_worker_batch(
    guard_worker: Any, guarded: VitrineSettings, es, host: FetchTestServer
) -> None:
    prefix = unique_prefix()
    products = [
        product(prefix, "a", host.url("/img/ok")),
        product(prefix, "slow", host.url("/drip/slow")),
        product(prefix, "b", host.url("/img/other")),
    ]
    [job] = enqueue(guard_worker, products, batch_size=3)
    status = wait_for_jobs(guard_worker, [job], timeout_s=120)[job]

    results = {r["product_id"]: r for r in status.results}
    assert status.state == "partially_failed"
    assert results[f"{prefix}-a"]["status"] == results[f"{prefix}-b"]["status"] == "indexed"
    slow = results[f"{prefix}-slow"]
    assert (slow["status"], slow["reason"]) == ("failed", "fetch_timeout")
    es.indices.refresh(index=guarded.index_alias)
    indexed = es.search(
        index=guarded.index_alias, query={"prefix": {"product_id": prefix}}, size=10
    )["hits"]["hits"]
    assert sorted(h["_source"]["product_id"] for h in indexed) == [f"{prefix}-a", f"{prefix}-b"]
