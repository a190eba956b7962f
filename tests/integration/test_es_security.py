"""Elasticsearch with security and TLS: each process's credential does its job and no more.

These run in the secure pass of ``scripts/test.sh`` (an ``https://`` ``VITRINE_ES_URL``); against
a plain Elasticsearch they are skipped. The worker process of the session already runs with the
worker API key (``tests/conftest.py``), so every worker test of that pass exercises it too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from elasticsearch import AuthenticationException, AuthorizationException
from elasticsearch import ConnectionError as ESConnectionError
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.es import indexing, mappings, security
from pipeline.es.client import make_client, write_index_info
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.merchants.apikeys import ApiKeyStore
from pipeline.search.query import Filters, KeywordQuery
from tests.conftest import with_api_key
from tests.integration.helpers import make_product, unique_prefix


@pytest.fixture(scope="module")
def keys(es_api_keys) -> dict[str, str]:
    if not es_api_keys:
        pytest.skip("Elasticsearch runs without security here (scripts/test.sh's secure pass)")
    return es_api_keys


@pytest.fixture(scope="module")
def indexed(keys, worker, worker_settings, tmp_path_factory) -> tuple[str, list]:
    """Two products indexed by the worker process, which holds only the worker API key."""
    assert worker_settings.es_api_key.get_secret_value() == keys["worker"]
    assert worker_settings.es_username is None
    prefix = unique_prefix()
    directory = tmp_path_factory.mktemp("secure")
    products = [make_product(directory, seed, prefix=prefix, tags=[prefix]) for seed in (1, 2)]
    [job_id] = enqueue(worker, products, batch_size=2, refresh=True)
    status = wait_for_jobs(worker, [job_id], timeout_s=120)[job_id]
    assert status.state == "done", status
    return prefix, products


def forbidden(*calls) -> None:
    allowed = []
    for number, call in enumerate(calls):
        try:
            call()
        except AuthorizationException:
            continue
        allowed.append(number)
    assert allowed == [], "these calls (by position) were allowed"


def test_tls_and_credentials_are_required(keys, settings):
    anonymous = settings.model_copy(
        update={"es_username": None, "es_password": None, "es_api_key": None}
    )
    with pytest.raises(AuthenticationException):
        make_client(anonymous).info()
    plain_http = anonymous.model_copy(
        update={"es_url": settings.es_url.replace("https://", "http://"), "es_ca_certs": None}
    )
    with pytest.raises(ESConnectionError):
        make_client(plain_http).info()
    without_ca = settings.model_copy(update={"es_ca_certs": None})
    with pytest.raises(ESConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        make_client(without_ca).info()


def test_worker_key_writes_products_and_errors_and_nothing_else(
    keys, indexed, settings, encoder, session_id
):
    prefix, products = indexed
    alias = settings.index_alias
    worker = make_client(with_api_key(settings, keys["worker"]))
    info = write_index_info(worker, alias)  # reads the alias and its _meta
    assert info is not None and info.model_id == encoder.model_id
    # set-up is the admin's: without admin rights the worker only checks the write index
    assert indexing.ensure_indices(worker, settings, encoder.model_id, encoder.dim) == info.index
    indexing.write_ingest_error(
        worker,
        settings,
        *indexing.ingest_error(
            job_id=prefix, product_id="x", merchant_id="m", reason="r", message="m"
        ),
    )
    assert indexing.delete_product(worker, settings, "merchant-a", products[1].product_id) == 1
    forbidden(
        lambda: worker.indices.delete(index=info.index),
        lambda: worker.indices.delete(index=settings.errors_index),
        lambda: worker.indices.create(index=f"{alias}-rogue"),
        lambda: worker.index(index=f"test-other-{session_id}", document={"title": "x"}),
        lambda: worker.search(index=settings.errors_index),
        lambda: worker.indices.put_index_template(
            name=mappings.product_template_name(alias), **mappings.products_index_template(alias)
        ),
        lambda: worker.put_script(id=f"{alias}-rogue", script={"lang": "mustache", "source": "{}"}),
        lambda: worker.security.create_api_key(name=f"{alias}-rogue"),
    )


def test_search_key_reads_but_cannot_write(keys, indexed, settings):
    prefix, products = indexed
    alias = settings.index_alias
    search = make_client(with_api_key(settings, keys["search"]))
    query = KeywordQuery(filters=Filters(tags_all=[prefix]), sort="price_asc")
    hits = search.search(index=alias, **query.body())["hits"]["hits"]
    found = [h["_source"]["product_id"] for h in hits]
    assert products[0].product_id in found and set(found) <= {p.product_id for p in products}
    stored = search.search_template(
        index=alias,
        id=mappings.search_template_id(alias, query.template),
        params=query.template_params(),
    )
    assert [h["_id"] for h in stored["hits"]["hits"]] == [h["_id"] for h in hits]
    assert search.msearch(searches=[{"index": alias}, query.body()])["responses"][0]["hits"]
    index = write_index_info(search, alias)
    assert index is not None
    forbidden(
        lambda: search.index(index=alias, document={"title": "x"}),
        lambda: search.delete(index=index.index, id=hits[0]["_id"]),
        lambda: search.delete_by_query(index=alias, query={"match_all": {}}),
        lambda: search.indices.delete(index=index.index),
        lambda: search.search(index=settings.errors_index),
        lambda: search.indices.create(index=f"{alias}-rogue"),
    )


def test_api_serves_with_the_search_key(keys, indexed, settings):
    prefix, products = indexed
    store = ApiKeyStore(Redis.from_url(settings.redis_url), settings.redis_prefix)
    merchant_key = store.create("merchant-a").key
    with TestClient(create_app(with_api_key(settings, keys["search"]), load_model=False)) as api:
        health = api.get("/healthz").json()
        assert health["checks"]["elasticsearch"]["ok"], health
        body = api.post("/v1/search", json={"filters": {"tags_all": [prefix]}})
        assert body.status_code == 200, body.text
        found = {h["product_id"] for h in body.json()["hits"]}
        assert products[0].product_id in found and found <= {p.product_id for p in products}
        view = api.get(
            f"/v1/products/{products[0].product_id}", headers={"X-API-Key": merchant_key}
        )
        assert view.status_code == 200, view.text


def test_setup_command_writes_one_private_key_file_per_role(keys, settings, session_id, tmp_path):
    deployment = settings.model_copy(update={"index_alias": f"test-cli-{session_id}"})
    env = {**os.environ, **deployment.to_env()}
    command = [sys.executable, "-m", "pipeline.cli", "es-security"]
    try:
        result = subprocess.run(
            [*command, "setup", "--env-dir", str(tmp_path), "--expiration", "1h"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        for role in security.ROLES:
            path = tmp_path / f"es-{role}.env"
            assert path.stat().st_mode & 0o777 == 0o600
            key = path.read_text().strip().removeprefix("VITRINE_ES_API_KEY=")
            me = make_client(with_api_key(settings, key)).security.authenticate()
            assert me["api_key"]["name"] == security.role_name(deployment.index_alias, role)
        removed = subprocess.run([*command, "remove"], env=env, capture_output=True, text=True)
        assert removed.returncode == 0, removed.stderr
        with pytest.raises(AuthenticationException):
            make_client(with_api_key(settings, key)).security.authenticate()
    finally:
        subprocess.run([*command, "remove"], env=env, capture_output=True)
