"""The merchant upload API against the real stack: FastAPI app, Redis (keys, rate limits, job
queue), the real worker process and Elasticsearch."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.merchants.apikeys import ApiKeyStore
from pipeline.storage import ImageStore
from tests.integration.helpers import ImageServer, pattern_image, unique_prefix

FINISHED = {"done", "failed", "partially_failed"}


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def keys(settings, services) -> ApiKeyStore:
    return ApiKeyStore(Redis.from_url(settings.redis_url), settings.redis_prefix)


@pytest.fixture(scope="module")
def client(settings, worker) -> Iterator[TestClient]:
    with TestClient(create_app(settings, load_model=False)) as test_client:
        yield test_client


def make_client(settings, **overrides) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides), load_model=False))


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def image_bytes(seed: int, *, size: int = 96, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    pattern_image(seed, size).save(buffer, format=fmt)
    return buffer.getvalue()


def upload(client, key, metadata, *images: bytes, filename: str = "photo.png", ctype="image/png"):
    files = [("image", (filename, data, ctype)) for data in images]
    payload = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return client.post("/v1/products", headers=auth(key), data={"metadata": payload}, files=files)


def wait_job(client, key, job_id, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
        assert response.status_code == 200, response.text
        body = response.json()
        if body["state"] in FINISHED:
            return body
        assert time.monotonic() < deadline, f"job still {body['state']}"
        time.sleep(0.2)


def create_indexed(client, key, product_id: str, seed: int, **fields) -> dict:
    metadata = {"product_id": product_id, "title": f"Product {seed}", **fields}
    response = upload(client, key, metadata, image_bytes(seed))
    assert response.status_code == 202, response.text
    job = wait_job(client, key, response.json()["job_id"])
    assert job["state"] == "done", job
    return response.json()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- uploads


def test_multipart_upload_is_indexed_and_readable(client, keys, settings, encoder):
    key = keys.create("shop-a").key
    pid = f"{unique_prefix()}-sneaker"
    data = image_bytes(1)
    response = upload(
        client,
        key,
        {
            "product_id": pid,
            "title": "Red sneaker",
            "tags": ["Red", "sale"],
            "price": 79.5,
            "currency": "EUR",
            "category": "Shoes",
        },
        data,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    sha = hashlib.sha256(data).hexdigest()
    assert response.headers["location"] == f"/v1/jobs/{body['job_id']}" == body["status_url"]
    assert body["merchant_id"] == "shop-a" and body["product_id"] == pid
    assert body["images"] == [{"sha256": sha, "url": f"/v1/images/{sha}", "stored": True}]
    assert ImageStore(settings.images_dir).get(sha).read_bytes() == data

    job = wait_job(client, key, body["job_id"])
    assert job["state"] == "done" and job["products"] == [pid]
    assert job["results"][0]["status"] == "indexed" and job["results"][0]["documents"]

    product = client.get(f"/v1/products/{pid}", headers=auth(key))
    assert product.status_code == 200
    view = product.json()
    assert (view["merchant_id"], view["title"], view["category"]) == (
        "shop-a",
        "Red sneaker",
        "shoes",
    )
    assert view["tags"] == ["red", "sale"] and view["price"] == 79.5
    assert view["auto_tags"] == [] and view["quality_flags"] == []
    assert view["model_id"] == encoder.model_id
    [image] = view["images"]
    assert image["image_sha256"] == sha and image["image_url"] == f"/v1/images/{sha}"
    assert (image["width"], image["height"]) == (96, 96)

    served = client.get(f"/v1/images/{sha}")
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/png"


def test_small_image_is_flagged_and_content_type_comes_from_decoding(client, keys):
    key = keys.create("shop-a").key
    pid = f"{unique_prefix()}-tiny"
    # a real JPEG sent under a text name and type: decoding decides, not the name
    response = upload(
        client,
        key,
        {"product_id": pid, "title": "Tiny"},
        image_bytes(2, size=48, fmt="JPEG"),
        filename="notes.txt",
        ctype="text/plain",
    )
    assert response.status_code == 202, response.text
    assert wait_job(client, key, response.json()["job_id"])["state"] == "done"
    view = client.get(f"/v1/products/{pid}", headers=auth(key)).json()
    assert view["quality_flags"] == ["low_resolution"]
    assert view["images"][0]["quality_flags"] == ["low_resolution"]


def test_reuploading_the_same_bytes_writes_nothing(client, keys, settings):
    key = keys.create("shop-a").key
    data = image_bytes(3)
    first = upload(client, key, {"product_id": f"{unique_prefix()}-1", "title": "One"}, data)
    path = ImageStore(settings.images_dir).get(first.json()["images"][0]["sha256"])
    mtime = path.stat().st_mtime_ns
    second = upload(client, key, {"product_id": f"{unique_prefix()}-2", "title": "Two"}, data)
    assert first.status_code == second.status_code == 202
    assert first.json()["images"][0]["stored"] is True
    assert second.json()["images"][0]["stored"] is False
    assert path.stat().st_mtime_ns == mtime
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind
    for response in (first, second):
        assert wait_job(client, key, response.json()["job_id"])["state"] == "done"


def test_json_metadata_with_an_image_url(client, keys, image_server):
    key = keys.create("shop-a").key
    pid = f"{unique_prefix()}-url"
    image_server.images["cap.png"] = image_bytes(4)
    url = f"{image_server.base}/img/cap.png"
    response = client.post(
        "/v1/products",
        headers=auth(key),
        json={"product_id": pid, "title": "Cap", "image_url": url},
    )
    assert response.status_code == 202, response.text
    assert response.json()["images"] == [] and response.json()["image_urls"] == [url]
    assert wait_job(client, key, response.json()["job_id"])["state"] == "done"
    view = client.get(f"/v1/products/{pid}", headers=auth(key)).json()
    assert view["images"][0]["image_url"] == url
    assert view["images"][0]["image_sha256"] == hashlib.sha256(image_bytes(4)).hexdigest()


def test_put_replaces_image_and_metadata(client, keys):
    key = keys.create("shop-a").key
    pid = f"{unique_prefix()}-put"
    create_indexed(client, key, pid, 5, price=10.0)
    new_image = image_bytes(6)
    response = client.put(
        f"/v1/products/{pid}",
        headers=auth(key),
        data={"metadata": json.dumps({"title": "Renamed", "price": 12.5})},
        files=[("image", ("b.png", new_image, "image/png"))],
    )
    assert response.status_code == 202, response.text
    assert response.json()["product_id"] == pid
    assert wait_job(client, key, response.json()["job_id"])["state"] == "done"
    view = client.get(f"/v1/products/{pid}", headers=auth(key)).json()
    assert (view["title"], view["price"]) == ("Renamed", 12.5)
    assert [i["image_sha256"] for i in view["images"]] == [hashlib.sha256(new_image).hexdigest()]


def test_delete_removes_the_product(client, keys):
    key = keys.create("shop-a").key
    pid = f"{unique_prefix()}-del"
    create_indexed(client, key, pid, 7)
    response = client.delete(f"/v1/products/{pid}", headers=auth(key))
    assert response.status_code == 202, response.text
    job = wait_job(client, key, response.json()["job_id"])
    assert job["state"] == "done" and job["results"][0]["deleted"] == 1
    assert client.get(f"/v1/products/{pid}", headers=auth(key)).status_code == 404
    assert client.delete(f"/v1/products/{pid}", headers=auth(key)).status_code == 404


# --------------------------------------------------------------------------- auth


ROUTES = [
    ("POST", "/v1/products"),
    ("PUT", "/v1/products/sku-1"),
    ("DELETE", "/v1/products/sku-1"),
    ("GET", "/v1/products/sku-1"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_missing_invalid_and_revoked_keys_are_refused(client, keys, method, path):
    revoked = keys.create("shop-a")
    assert keys.revoke(revoked.info.key_id) is not None
    fake = "vtr_0123abcd_" + "x" * 43
    for headers in (
        {},
        auth("not-a-key"),
        auth(fake),
        auth(revoked.key),
        {"Authorization": f"Bearer {fake}"},
    ):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_bearer_token_works_like_the_header(client, keys):
    key = keys.create("shop-a").key
    response = client.get("/v1/products/none-such", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 404


def test_merchant_cannot_touch_another_merchants_products_or_jobs(client, keys):
    key_a, key_b = keys.create("shop-a").key, keys.create("shop-b").key
    pid = f"{unique_prefix()}-shared-id"
    created = create_indexed(client, key_a, pid, 8, title="A's product")
    job_a = created["job_id"]

    # read: B sees neither A's product nor A's job (404, as if they did not exist)
    assert client.get(f"/v1/products/{pid}", headers=auth(key_b)).status_code == 404
    assert client.get(f"/v1/jobs/{job_a}", headers=auth(key_b)).status_code == 404
    assert client.get(f"/v1/jobs/{job_a}", headers=auth(key_a)).status_code == 200
    # delete: B's delete of that id finds nothing of B's
    assert client.delete(f"/v1/products/{pid}", headers=auth(key_b)).status_code == 404
    # create in A's name: refused
    response = upload(
        client,
        key_b,
        {"product_id": pid, "title": "Hijack", "merchant_id": "shop-a"},
        image_bytes(9),
    )
    assert response.status_code == 403
    # PUT of the same id by B creates B's own product; A's stays as it was
    put = client.put(
        f"/v1/products/{pid}",
        headers=auth(key_b),
        data={"metadata": json.dumps({"title": "B's product"})},
        files=[("image", ("b.png", image_bytes(10), "image/png"))],
    )
    assert put.status_code == 202 and put.json()["merchant_id"] == "shop-b"
    assert wait_job(client, key_b, put.json()["job_id"])["state"] == "done"
    assert client.get(f"/v1/jobs/{put.json()['job_id']}", headers=auth(key_a)).status_code == 404
    view_a = client.get(f"/v1/products/{pid}", headers=auth(key_a)).json()
    view_b = client.get(f"/v1/products/{pid}", headers=auth(key_b)).json()
    assert (view_a["merchant_id"], view_a["title"]) == ("shop-a", "A's product")
    assert (view_b["merchant_id"], view_b["title"]) == ("shop-b", "B's product")
    # and B deleting its own product leaves A's
    delete = client.delete(f"/v1/products/{pid}", headers=auth(key_b))
    assert wait_job(client, key_b, delete.json()["job_id"])["state"] == "done"
    assert client.get(f"/v1/products/{pid}", headers=auth(key_a)).json()["title"] == "A's product"


# --------------------------------------------------------------------------- bad input


def test_oversized_uploads_are_refused(settings, keys, worker):
    key = keys.create("shop-a").key
    with make_client(settings, upload_max_bytes=20_000) as small:
        big = io.BytesIO()
        pattern_image(11, 400).save(big, format="BMP")  # 480 kB uncompressed
        response = upload(small, key, {"product_id": "big", "title": "Big"}, big.getvalue())
        assert response.status_code == 413
        assert response.json()["detail"]["reason"] == "body_too_large"
        assert "limit of 20,000" in response.json()["detail"]["message"]
    # within the body limit but over the pixel limit (4 Mpx in the test settings)
    with make_client(settings) as client:
        huge = image_bytes(12, size=2100)
        assert len(huge) < settings.upload_max_bytes
        response = upload(client, key, {"product_id": "huge", "title": "Huge"}, huge)
        assert response.status_code == 413
        assert response.json()["detail"]["reason"] == "too_large"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"just some text, not a photo\n" * 10, "not_an_image"),
        (b"", "empty"),
        (image_bytes(13, fmt="JPEG")[:300], "corrupt"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>',
            "not_an_image",
        ),
    ],
    ids=["text", "empty", "truncated-jpeg", "svg"],
)
def test_non_images_are_refused_by_decoding(client, keys, settings, data, reason):
    key = keys.create("shop-a").key
    before = (
        sorted(p.name for p in settings.images_dir.rglob("*"))
        if settings.images_dir.exists()
        else []
    )
    response = upload(
        client,
        key,
        {"product_id": "x1", "title": "X"},
        data,
        filename="photo.jpg",
        ctype="image/jpeg",
    )
    assert response.status_code == 422, response.text  # the same status as on search
    assert response.json()["detail"]["reason"] == reason
    after = (
        sorted(p.name for p in settings.images_dir.rglob("*"))
        if settings.images_dir.exists()
        else []
    )
    assert after == before  # nothing stored


def test_wrong_request_content_type_is_415(client, keys):
    key = keys.create("shop-a").key
    response = client.post(
        "/v1/products", headers={**auth(key), "Content-Type": "text/plain"}, content=b"hello"
    )
    assert response.status_code == 415


@pytest.mark.parametrize(
    ("metadata", "expected_loc", "expected_type"),
    [
        ("{not json", ["body", "metadata"], "json_invalid"),
        ('["a", "list"]', ["body", "metadata"], "dict_type"),
        ({"title": "No id"}, ["body", "metadata", "product_id"], "missing"),
        (
            {"product_id": "has space", "title": "T"},
            ["body", "metadata", "product_id"],
            "string_pattern_mismatch",
        ),
        (
            {"product_id": "p", "title": "T", "price": "cheap"},
            ["body", "metadata", "price"],
            "float_parsing",
        ),
        (
            {"product_id": "p", "title": "T", "price": -1},
            ["body", "metadata", "price"],
            "greater_than_equal",
        ),
        (
            {"product_id": "p", "title": "T", "currency": "euro"},
            ["body", "metadata", "currency"],
            "string_pattern_mismatch",
        ),
        (
            {"product_id": "p", "title": "T", "colour": "red"},
            ["body", "metadata", "colour"],
            "extra_forbidden",
        ),
        (
            {"product_id": "p", "title": "T", "image_url": "/etc/passwd"},
            ["body", "metadata", "image_url"],
            "value_error",
        ),
    ],
)
def test_malformed_metadata_is_a_clear_422(client, keys, metadata, expected_loc, expected_type):
    key = keys.create("shop-a").key
    response = upload(client, key, metadata, image_bytes(14))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == expected_loc and e["type"] == expected_type for e in errors), errors
    assert all(e["msg"] for e in errors)


def test_metadata_field_and_image_are_required(client, keys):
    key = keys.create("shop-a").key
    no_metadata = client.post(
        "/v1/products",
        headers=auth(key),
        files=[("image", ("a.png", image_bytes(15), "image/png"))],
    )
    assert no_metadata.status_code == 422
    assert no_metadata.json()["detail"][0]["loc"] == ["body", "metadata"]
    no_image = client.post(
        "/v1/products", headers=auth(key), json={"product_id": "p", "title": "T"}
    )
    assert no_image.status_code == 422
    assert no_image.json()["detail"][0]["loc"] == ["body", "metadata", "image"]
    mismatch = client.put(
        "/v1/products/sku-1",
        headers=auth(key),
        json={"product_id": "sku-2", "title": "T", "image_url": "https://cdn.example/a.jpg"},
    )
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"][0]["loc"] == ["body", "metadata", "product_id"]


def test_unknown_ids_are_404(client, keys):
    key = keys.create("shop-a").key
    assert client.get("/v1/products/no-such-product", headers=auth(key)).status_code == 404
    assert client.delete("/v1/products/no-such-product", headers=auth(key)).status_code == 404
    assert client.get("/v1/jobs/no-such-job", headers=auth(key)).status_code == 404
    assert client.get(f"/v1/images/{'0' * 64}").status_code == 404
    assert client.get("/v1/images/..%2F..%2Fetc%2Fpasswd").status_code == 404


# --------------------------------------------------------------------------- jobs and limits


def test_job_goes_from_queued_to_running_to_done(client, keys, settings, image_server):
    key = keys.create("shop-a").key
    # queued: a job on a queue that no worker consumes stays queued
    idle_queue = f"{settings.queue}-idle"
    with make_client(settings, queue=idle_queue) as idle:
        queued = upload(idle, key, {"product_id": "q1", "title": "Q"}, image_bytes(16))
        assert queued.status_code == 202
        assert idle.get(queued.json()["status_url"], headers=auth(key)).json()["state"] == "queued"
    Redis.from_url(settings.redis_url).delete(idle_queue)

    # running: the worker has started the job and is fetching the (held back) image
    image_server.images["slow.png"] = image_bytes(17)
    response = client.post(
        "/v1/products",
        headers=auth(key),
        json={
            "product_id": f"{unique_prefix()}-slow",
            "title": "Slow",
            "image_url": f"{image_server.base}/slow/slow.png",
        },
    )
    job_id = response.json()["job_id"]
    assert image_server.requested.wait(timeout=60), "the worker never fetched the image"
    running = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
    image_server.release.set()
    assert running["state"] == "running" and running["results"] == []
    done = wait_job(client, key, job_id)
    assert done["state"] == "done" and done["results"][0]["status"] == "indexed"


def test_failed_job_reports_the_reason(client, keys, image_server):
    key = keys.create("shop-a").key
    response = client.post(
        "/v1/products",
        headers=auth(key),
        json={
            "product_id": f"{unique_prefix()}-gone",
            "title": "Gone",
            "image_url": f"{image_server.base}/img/missing.png",
        },
    )
    job = wait_job(client, key, response.json()["job_id"])
    assert job["state"] == "failed"
    [result] = job["results"]
    assert result["status"] == "failed" and result["reason"] == "not_found"
    assert "404" in result["message"]


def test_upload_rate_is_limited_per_key(settings, keys, worker):
    limited, other = keys.create("shop-a").key, keys.create("shop-a").key
    with make_client(settings, upload_rate_limit=2, upload_rate_window_s=3600) as client:
        first = upload(client, limited, {"product_id": "rl-0", "title": "T"}, image_bytes(18))
        assert first.status_code == 202
        assert first.headers["x-ratelimit-limit"] == "2"
        assert first.headers["x-ratelimit-remaining"] == "1"
        bad = upload(client, limited, {"product_id": "rl-1", "title": "T"}, b"")
        assert bad.status_code == 422  # refused after the limiter: it counts too
        refused = upload(client, limited, {"product_id": "rl-2", "title": "T"}, image_bytes(18))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert client.delete("/v1/products/rl-0", headers=auth(limited)).status_code == 429
        # reads are not limited, and other keys have their own allowance
        job = client.get(first.headers["location"], headers=auth(limited))
        assert job.status_code == 200
        assert upload(client, other, {"product_id": "rl-4", "title": "T"}, b"").status_code == 422


# --------------------------------------------------------------------------- operations


def test_healthz_and_openapi_docs(client):
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["checks"]["workers"]["ok"] is True
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/products",
        "/v1/products/{product_id}",
        "/v1/jobs/{job_id}",
        "/v1/images/{sha256}",
        "/healthz",
    ):
        assert path in spec["paths"], path
    upload_body = spec["paths"]["/v1/products"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(upload_body)


def test_admin_cli_creates_lists_and_revokes_keys(client, settings):
    from typer.testing import CliRunner

    from pipeline.cli import app as cli
    from pipeline.merchants.apikeys import KEY_PATTERN

    runner, env = CliRunner(), settings.to_env()
    merchant = f"cli-{unique_prefix()}"
    created = runner.invoke(
        cli, ["keys", "create", "--merchant", merchant, "--name", "ci"], env=env
    )
    assert created.exit_code == 0, created.output
    [key] = [line for line in created.stdout.splitlines() if KEY_PATTERN.match(line)]
    key_id = KEY_PATTERN.match(key).group(1)
    assert client.get("/v1/products/none", headers=auth(key)).status_code == 404  # accepted

    listed = runner.invoke(cli, ["keys", "list", "--merchant", merchant], env=env)
    assert listed.exit_code == 0 and key_id in listed.stdout and key not in listed.stdout

    revoked = runner.invoke(cli, ["keys", "revoke", key_id], env=env)
    assert revoked.exit_code == 0 and merchant in revoked.stdout
    assert client.get("/v1/products/none", headers=auth(key)).status_code == 401
    assert runner.invoke(cli, ["keys", "revoke", key_id], env=env).exit_code == 1
    bad = runner.invoke(cli, ["keys", "create", "--merchant", "bad merchant"], env=env)
    assert bad.exit_code == 1
