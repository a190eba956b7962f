"""A local multi-node Elasticsearch cluster (``vitrine services start --nodes 3``), to try
shards, replicas and the loss of a node on one machine, without Docker.

Every node runs from the one install of ``pipeline.dev.services`` with its own config, data,
logs and pid file under ``<services_dir>/cluster/<node>``, on loopback, with a small heap.
HTTP ports are those of ``es_url`` (one URL per node, comma-separated; with a single URL, the
following ports); each node's transport port is its HTTP port + 100. Security is off, as for the
plain local node.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.dev import services
from pipeline.dev.services import ServiceError, ServiceStatus
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

CLUSTER_NAME = "vitrine-cluster"
TRANSPORT_OFFSET = 100
HEAP = "512m"


@dataclass(frozen=True)
class ClusterNode:
    name: str
    http_port: int
    transport_port: int
    base: Path  # config/, data/, logs/, home/ and the pid file live here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pidfile(self) -> Path:
        return self.base / "elasticsearch.pid"


def cluster_nodes(settings: VitrineSettings, count: int) -> list[ClusterNode]:
    """The nodes of a ``count``-node cluster for these settings (see the module docstring)."""
    ports = [services.url_port(url, 9200) for url in settings.es_hosts]
    if len(ports) < count:
        ports = [ports[0] + i for i in range(count)]
    return [
        ClusterNode(
            name=f"vitrine-node-{i + 1}",
            http_port=port,
            transport_port=port + TRANSPORT_OFFSET,
            base=settings.services_dir / "cluster" / f"node-{i + 1}",
        )
        for i, port in enumerate(ports[:count])
    ]


def node_config(node: ClusterNode, nodes: list[ClusterNode]) -> str:
    """``elasticsearch.yml`` of one node."""
    seeds = ", ".join(f'"127.0.0.1:{n.transport_port}"' for n in nodes)
    masters = ", ".join(f'"{n.name}"' for n in nodes)
    return (
        "# written by vitrine services: local cluster node, loopback only\n"
        f"cluster.name: {CLUSTER_NAME}\n"
        f"node.name: {node.name}\n"
        "network.host: 127.0.0.1\n"
        f"http.port: {node.http_port}\n"
        f"transport.port: {node.transport_port}\n"
        f"discovery.seed_hosts: [{seeds}]\n"
        f"cluster.initial_master_nodes: [{masters}]\n"
        "xpack.security.enabled: false\n"
        "xpack.ml.enabled: false\n"
        "ingest.geoip.downloader.enabled: false\n"
        # absolute watermarks, as for the single node (a shared disk is never 85 % ours)
        "cluster.routing.allocation.disk.watermark.low: 2gb\n"
        "cluster.routing.allocation.disk.watermark.high: 1gb\n"
        "cluster.routing.allocation.disk.watermark.flood_stage: 512mb\n"
        f"path.data: {node.base / 'data'}\n"
        f"path.logs: {node.base / 'logs'}\n"
    )


def cluster_status(settings: VitrineSettings, count: int) -> ServiceStatus:
    """Running when every node answers and the cluster is green or yellow with all of them."""
    nodes = cluster_nodes(settings, count)
    answering = [n for n in nodes if _node_up(n)]
    if not answering:
        return ServiceStatus("elasticsearch", False, f"no node of {CLUSTER_NAME} answers")
    try:
        health = httpx.get(f"{answering[0].url}/_cluster/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return ServiceStatus("elasticsearch", False, f"{answering[0].url} gives no health")
    detail = (
        f"{CLUSTER_NAME}: {health.get('number_of_nodes')} of {count} nodes, health "
        f"{health.get('status')}, http {', '.join(n.url for n in nodes)}"
    )
    running = health.get("number_of_nodes") == count and health.get("status") in (
        "green",
        "yellow",
    )
    return ServiceStatus("elasticsearch", running, detail)


def _node_up(node: ClusterNode) -> bool:
    try:
        return httpx.get(node.url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_cluster(
    settings: VitrineSettings, count: int = 3, *, timeout_s: float = 300
) -> ServiceStatus:
    """Start every node that is not running (all at once: a node waits for the others to
    elect a master) and wait until the cluster has them all."""
    status = cluster_status(settings, count)
    if status.running:
        return status
    nodes = cluster_nodes(settings, count)
    launched = [_launch(settings, node, nodes) for node in nodes if not _node_up(node)]
    for node, process in launched:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise ServiceError(f"{node.name} failed to start: {stderr.strip()[-2000:]}")
    return services.wait_until(
        lambda: cluster_status(settings, count), timeout_s, settings.services_dir / "cluster"
    )


def start_node(settings: VitrineSettings, node: ClusterNode, count: int) -> None:
    """Start one stopped node again (it rejoins the cluster)."""
    _, process = _launch(settings, node, cluster_nodes(settings, count))
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise ServiceError(f"{node.name} failed to start: {stderr.strip()[-2000:]}")


def _launch(
    settings: VitrineSettings, node: ClusterNode, nodes: list[ClusterNode]
) -> tuple[ClusterNode, subprocess.Popen]:
    install = services.install_elasticsearch(settings)
    config = node.base / "config"
    if not config.exists():
        shutil.copytree(install / "config", config)  # the install's own: the single node's
    (config / "elasticsearch.yml").write_text(node_config(node, nodes))
    (config / "jvm.options.d" / "vitrine-heap.options").write_text(f"-Xms{HEAP}\n-Xmx{HEAP}\n")
    for folder in ("data", "logs", "home"):
        (node.base / folder).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # the install too: its jdk/bin is 0750 in the tarball
        for path in (node.base, install):
            subprocess.run(["chown", "-R", "nobody:nogroup", str(path)], check=True)
        for parent in (settings.services_dir, settings.services_dir / "cluster"):
            subprocess.run(["chown", "nobody:nogroup", str(parent)], check=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(node.base / "home"),
        "ES_JAVA_OPTS": f"-Xms{HEAP} -Xmx{HEAP}",
        "ES_PATH_CONF": str(config),
    }
    cmd = services.as_unprivileged(
        [str(install / "bin" / "elasticsearch"), "-d", "-p", str(node.pidfile)]
    )
    log.info("starting %s (http %d, transport %d)", node.name, node.http_port, node.transport_port)
    return node, subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def stop_node(node: ClusterNode) -> None:
    services.stop_pidfile(node.pidfile, node.name)


def stop_cluster(settings: VitrineSettings, count: int = 3) -> ServiceStatus:
    for node in cluster_nodes(settings, count):
        stop_node(node)
    return cluster_status(settings, count)
