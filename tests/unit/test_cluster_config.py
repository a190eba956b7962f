"""The local cluster's layout (``vitrine services start --nodes N``) without starting it: ports,
directories, and each node's ``elasticsearch.yml``; several ES URLs reach the client."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.dev import cluster
from pipeline.es.client import make_client
from pipeline.settings import VitrineSettings

URLS = "http://127.0.0.1:9241, http://127.0.0.1:9242,http://127.0.0.1:9243"


def test_nodes_take_the_ports_of_the_urls_and_transport_plus_100(tmp_path: Path):
    nodes = cluster.cluster_nodes(VitrineSettings(es_url=URLS, services_dir=tmp_path), 3)
    assert [(n.name, n.http_port, n.transport_port) for n in nodes] == [
        ("vitrine-node-1", 9241, 9341),
        ("vitrine-node-2", 9242, 9342),
        ("vitrine-node-3", 9243, 9343),
    ]
    assert len({n.base for n in nodes}) == 3 and all(
        n.base.parent.parent == tmp_path for n in nodes
    )


def test_one_url_gives_the_following_ports(tmp_path: Path):
    settings = VitrineSettings(es_url="http://127.0.0.1:9200", services_dir=tmp_path)
    assert [n.http_port for n in cluster.cluster_nodes(settings, 3)] == [9200, 9201, 9202]


def test_node_config_forms_one_cluster_on_loopback(tmp_path: Path):
    nodes = cluster.cluster_nodes(VitrineSettings(es_url=URLS, services_dir=tmp_path), 3)
    config = yaml.safe_load(cluster.node_config(nodes[1], nodes))
    assert config["cluster.name"] == cluster.CLUSTER_NAME
    assert config["node.name"] == "vitrine-node-2"
    assert config["network.host"] == "127.0.0.1"
    assert (config["http.port"], config["transport.port"]) == (9242, 9342)
    assert config["discovery.seed_hosts"] == [f"127.0.0.1:{p}" for p in (9341, 9342, 9343)]
    assert config["cluster.initial_master_nodes"] == [n.name for n in nodes]
    assert config["path.data"] == str(nodes[1].base / "data")
    assert "discovery.type" not in config


def test_several_urls_reach_the_client():
    settings = VitrineSettings(es_url=URLS)
    assert settings.es_hosts == [u.strip() for u in URLS.split(",")]
    client = make_client(settings)
    ports = sorted(node.port for node in client.transport.node_pool.all())
    assert ports == [9241, 9242, 9243]
