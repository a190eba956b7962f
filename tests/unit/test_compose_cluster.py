"""The docker-compose "cluster" profile, checked structurally (no Docker engine here): three
Elasticsearch nodes that form one cluster, certificates for exactly those nodes, Vitrine
services that use all three with shards and replicas, N workers, and Flower on their broker."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from pipeline.settings import VitrineSettings
from tests.unit.test_docker_compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ES_IMAGE,
    depends_of,
    env_of,
    interpolate,
    read_env_file,
    volume_mounts,
)

NODES = ("es01", "es02", "es03")
CLUSTER_APPS = ("cluster-setup", "cluster-worker", "cluster-api")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return interpolate(raw, read_env_file(ENV_EXAMPLE))["services"]


def test_the_profile_leaves_the_default_stack_alone(services: dict[str, Any]):
    profiled = {name for name, svc in services.items() if svc.get("profiles")}
    assert profiled == {*NODES, "es-certs", *CLUSTER_APPS, "flower"}
    assert all(services[name]["profiles"] == ["cluster"] for name in profiled)
    default_app = env_of(services["worker"])
    assert default_app["VITRINE_ES_URL"] == "http://elasticsearch:9200"


def test_three_nodes_form_one_cluster(services: dict[str, Any]):
    envs = {name: env_of(services[name]) for name in NODES}
    assert {env["cluster.name"] for env in envs.values()} == {"vitrine-cluster"}
    assert [env["node.name"] for env in envs.values()] == list(NODES)
    for name, env in envs.items():
        assert services[name]["image"] == ES_IMAGE
        assert env["cluster.initial_master_nodes"].split(",") == list(NODES)
        assert set(env["discovery.seed_hosts"].split(",")) == set(NODES) - {name}
        assert "discovery.type" not in env
        assert env["xpack.security.enabled"] == "true"
        assert env["xpack.security.transport.ssl.enabled"] == "true"
        assert env["xpack.security.transport.ssl.key"] == f"certs/{name}/{name}.key"
        assert env["xpack.security.transport.ssl.certificate"] == f"certs/{name}/{name}.crt"
        assert env["ELASTIC_PASSWORD"] == read_env_file(ENV_EXAMPLE)["ELASTIC_PASSWORD"]
        assert re.fullmatch(r"-Xms(\d+[mg]) -Xmx\1", env["ES_JAVA_OPTS"])
        mounts = {target: (source, ro) for _, source, target, ro in volume_mounts(services[name])}
        assert mounts["/usr/share/elasticsearch/data"] == (f"{name}data", False)
        assert mounts["/usr/share/elasticsearch/config/certs"] == ("escerts", True)
        assert depends_of(services[name]) == {"es-certs": "service_completed_successfully"}


def test_certificates_are_made_for_exactly_the_nodes(services: dict[str, Any]):
    script = services["es-certs"]["command"][-1]
    [loop] = re.findall(r"for node in ([\w ]+); do", script)
    assert tuple(loop.split()) == NODES
    assert "ca/ca.crt" in script and "elasticsearch-certutil cert" in script
    assert ("volume", "escerts", "/usr/share/elasticsearch/config/certs", False) in volume_mounts(
        services["es-certs"]
    )


def test_cluster_apps_use_every_node_with_replicas(services: dict[str, Any]):
    envs = [env_of(services[name]) for name in CLUSTER_APPS]
    assert envs[0] == envs[1] == envs[2]
    env = envs[0]
    fields = {f"VITRINE_{name.upper()}" for name in VitrineSettings.model_fields}
    assert {k for k in env if k.startswith("VITRINE_")} <= fields
    settings = VitrineSettings.model_validate(
        {k.removeprefix("VITRINE_").lower(): v for k, v in env.items() if k in fields}
    )
    assert [urlparse(url).hostname for url in settings.es_hosts] == list(NODES)
    assert settings.index_shards >= len(NODES) and 1 <= settings.index_replicas < len(NODES)
    default = env_of(services["worker"])
    assert settings.queue != default.get("VITRINE_QUEUE", "vitrine")
    assert settings.redis_url != default["VITRINE_REDIS_URL"]  # a Redis database of its own
    assert settings.worker_metrics_port is not None
    for name in CLUSTER_APPS:
        needs = depends_of(services[name])
        assert all(needs[node] == "service_healthy" for node in NODES), name


def test_n_workers(services: dict[str, Any]):
    worker = services["cluster-worker"]
    assert worker["command"][:2] == ["vitrine", "worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "container_name" not in worker and not worker.get("ports")


def test_flower_watches_the_cluster_broker(services: dict[str, Any]):
    flower = services["flower"]
    assert re.fullmatch(r"mher/flower:\d+\.\d+\.\d+", flower["image"])
    broker = next(a for a in flower["command"] if a.startswith("--broker="))
    assert (
        broker.removeprefix("--broker=") == env_of(services["cluster-worker"])["VITRINE_REDIS_URL"]
    )
    assert depends_of(flower) == {"redis": "service_healthy"}
