"""A three-node Elasticsearch cluster loses a node in the middle of an ingest: nothing is lost
and search keeps answering (the replicas of the node's primaries are promoted), then the node
comes back and the cluster is whole again.

The cluster (``vitrine services start --nodes 3``) and its Redis run on ports of their own
(HTTP 9241-9243, transport 9341-9343, Redis 6395) under ``<services_dir>-cluster``: this test
stops and starts nodes, so it never touches the shared local services. The cluster is left
running for the next run (its first start takes minutes on a busy 2-core machine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from pipeline.dev import cluster, services
from pipeline.dev.worker_process import worker_process
from pipeline.es import mappings
from pipeline.es.client import make_client
from pipeline.ingest.ingestor import Ingestor
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.settings import VitrineSettings
from tests.integration.helpers import make_product, unique_prefix

NODES = 3
ES_URLS = ",".join(f"http://127.0.0.1:{port}" for port in (9241, 9242, 9243))
REDIS_URL = "redis://127.0.0.1:6395/0"


@pytest.fixture(scope="module")
def cluster_settings(settings: VitrineSettings, tmp_path_factory) -> VitrineSettings:
    """The session's names on the cluster: 3 shards with 1 replica each, a retry budget longer
    than a node's departure and a primary's promotion, and a pending journal of its own (the
    workers' reconciler would otherwise send other tests' products to the cluster)."""
    own = settings.services_dir.with_name(f"{settings.services_dir.name}-cluster")
    return settings.model_copy(
        update={
            "es_url": ES_URLS,
            "redis_url": REDIS_URL,
            "services_dir": own,
            "index_shards": 3,
            "index_replicas": 1,
            "task_retry_budget_s": 300,
            "task_retry_backoff_max_s": 5,
            "journal_dir": tmp_path_factory.mktemp("cluster-journal"),
        }
    )


@pytest.fixture(scope="module")
def cluster_es(cluster_settings: VitrineSettings, encoder) -> Iterator[Elasticsearch]:
    cluster.start_cluster(cluster_settings, NODES, timeout_s=900)
    services.start_redis(cluster_settings)
    es = make_client(cluster_settings)
    Ingestor(cluster_settings, es=es, encoder=encoder).ensure_index()
    es.cluster.health(wait_for_status="green", timeout="120s")
    yield es
    alias = cluster_settings.index_alias
    for index in [
        *es.indices.get(index=mappings.product_index_pattern(alias)),
        cluster_settings.errors_index,
    ]:
        es.options(ignore_status=404).indices.delete(index=index)
    for template in (mappings.product_template_name(alias), cluster_settings.errors_index):
        es.options(ignore_status=404).indices.delete_index_template(name=template)
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)
    es.close()


class SearchLoop:
    """Searches the alias without pause in a thread; records answers and failures. A search
    that races the node's shutdown can fail once with ``node_not_connected`` (500) while the
    coordinating node still routes to it (fresh-clone CI hit one): it is retried at once, as a
    frontend would, and is a failure only when the retry fails too."""

    def __init__(self, es: Elasticsearch, alias: str) -> None:
        self.es, self.alias = es, alias
        self.answered: list[tuple[float, int]] = []  # (time, hits)
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _search(self) -> None:
        response = self.es.search(index=self.alias, query={"match_all": {}}, size=1)
        self.answered.append((time.monotonic(), response["hits"]["total"]["value"]))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._search()
            except Exception:
                try:
                    self._search()
                except Exception as exc:  # failed twice: a finding of the test
                    self.failures.append(exc)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _documents_per_product(es: Elasticsearch, alias: str) -> dict[str, int]:
    es.indices.refresh(index=alias)
    response = es.search(
        index=alias, size=0, aggs={"products": {"terms": {"field": "product_id", "size": 1000}}}
    )
    return {b["key"]: b["doc_count"] for b in response["aggregations"]["products"]["buckets"]}


def _indexed(es: Elasticsearch, alias: str) -> int:
    es.indices.refresh(index=alias)
    return es.count(index=alias)["count"]


def _node_with_a_primary(es: Elasticsearch, settings: VitrineSettings) -> cluster.ClusterNode:
    """A node holding a primary shard of the product index: stopping it forces a promotion."""
    shards = es.cat.shards(
        index=mappings.product_index_pattern(settings.index_alias), format="json"
    )
    names = {row["node"] for row in shards if row["prirep"] == "p" and row.get("node")}
    return next(node for node in cluster.cluster_nodes(settings, NODES) if node.name in names)


def test_a_node_stops_mid_ingest_and_nothing_is_lost(
    cluster_es: Elasticsearch, cluster_settings: VitrineSettings, tmp_path: Path
):
    es, alias = cluster_es, cluster_settings.index_alias
    queues = [
        cluster_settings.model_copy(update={"queue": f"{cluster_settings.queue}-{name}"})
        for name in ("a", "b")
    ]
    prefix = unique_prefix()
    products = [make_product(tmp_path, seed, prefix=prefix) for seed in range(48)]
    first, second = products[:24], products[24:]
    log_a, log_b = (tmp_path / "worker-a.log").open("w"), (tmp_path / "worker-b.log").open("w")
    with (
        worker_process(queues[0], output=log_a) as app_a,
        worker_process(queues[1], output=log_b) as app_b,
    ):
        searches = SearchLoop(es, alias)
        jobs = enqueue(app_a, first[:12], batch_size=2) + enqueue(app_b, first[12:], batch_size=2)
        deadline = time.monotonic() + 300
        while _indexed(es, alias) < 6:  # the ingest is under way
            assert time.monotonic() < deadline, "the ingest did not start"
            time.sleep(0.5)

        victim = _node_with_a_primary(es, cluster_settings)
        cluster.stop_node(victim)
        stopped_at = time.monotonic()
        # more work while the node is away, on both queues
        jobs += enqueue(app_a, second[:12], batch_size=2)
        jobs += enqueue(app_b, second[12:], batch_size=2)
        statuses = wait_for_jobs(app_a, jobs, timeout_s=600)
        searches.stop()
        ingested_at = time.monotonic()

    assert {s.state for s in statuses.values()} == {"done"}, [
        s.to_dict() for s in statuses.values() if s.state != "done"
    ]
    wanted = {p.product_id: 1 for p in products}
    assert _documents_per_product(es, alias) == wanted  # one document per product, none lost
    assert not searches.failures, searches.failures[:3]
    after = [hits for at, hits in searches.answered if at > stopped_at]
    assert after and max(after) > 0, "search did not answer while the node was away"
    health = es.cluster.health(index=mappings.product_index_pattern(alias))
    assert health["number_of_nodes"] == NODES - 1 and health["status"] in ("green", "yellow")

    cluster.start_node(cluster_settings, victim, NODES)
    health = es.cluster.health(wait_for_nodes=str(NODES), wait_for_status="yellow", timeout="300s")
    assert health["number_of_nodes"] == NODES and health["status"] in ("green", "yellow")
    assert _documents_per_product(es, alias) == wanted
    print(
        f"\n{victim.name} stopped mid-ingest: {len(products)} products indexed "
        f"{ingested_at - stopped_at:.1f} s after the stop, {len(after)} searches answered "
        f"meanwhile, none failed; back in {time.monotonic() - ingested_at:.1f} s, "
        f"health {health['status']}"
    )
