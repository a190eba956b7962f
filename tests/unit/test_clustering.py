"""Visual clusters without Elasticsearch: the stored form of the centroids, stable ids across
re-runs, the choice of k, and the ingest processor's assignment."""

from __future__ import annotations

import numpy as np

from pipeline.documents import Product
from pipeline.encoders import l2_normalise
from pipeline.es import mappings
from pipeline.ingest import clustering
from pipeline.ingest.clustering import ClusterModel, choose_k, stable_ids
from pipeline.ingest.enrich.visual_cluster import VisualCluster
from pipeline.ingest.processors import IngestItem, ProcessorContext
from pipeline.settings import VitrineSettings


def blobs(k: int, per: int, dim: int = 16, noise: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(k, dim)).astype(np.float32))
    points = np.concatenate([c + rng.normal(0, noise, (per, dim)) for c in centres])
    return centres, l2_normalise(points.astype(np.float32))


def model(centroids: np.ndarray, **kw) -> ClusterModel:
    ids = [f"c{i:03d}" for i in range(len(centroids))]
    return ClusterModel("m", ids, [None] * len(ids), centroids, **kw)


def test_model_round_trips_through_its_stored_form():
    centres, _ = blobs(3, 1)
    original = ClusterModel(
        "m:1",
        ["c000", "c001", "c002"],
        ["bag", None, "bag"],
        centres,
        seed=5,
        sizes=(1, 2, 3),
        fitted_at="2026-11-23T00:00:00+00:00",
    )
    source = original.to_source()
    assert source["k"] == 3 and source["dims"] == 16 and source["documents"] == 6
    back = ClusterModel.from_source(source)
    assert back.ids == original.ids and back.names == original.names and back.sizes == (1, 2, 3)
    np.testing.assert_array_equal(back.centroids, centres)


def test_nearest_is_the_highest_cosine():
    centres, points = blobs(4, 10)
    rows = model(centres).nearest(points * 3.0)  # scale does not matter: rows are normalised
    assert list(rows) == [i for i in range(4) for _ in range(10)]


def test_ids_follow_the_previous_centroids_and_new_ones_get_fresh_numbers():
    centres, _ = blobs(4, 1)
    previous = ClusterModel("m", ["c000", "c001", "c007", "c003"], [None] * 4, centres)
    permuted = centres[[2, 0, 3, 1]]
    assert stable_ids(permuted, previous) == ["c007", "c000", "c003", "c001"]
    grown = np.concatenate([permuted, blobs(1, 1, seed=9)[0]])
    assert stable_ids(grown, previous) == ["c007", "c000", "c003", "c001", "c002"]
    assert stable_ids(centres, None) == ["c000", "c001", "c002", "c003"]


def test_choose_k_prefers_the_true_number_of_groups():
    _, points = blobs(5, 40, noise=0.05)
    scores = choose_k(points, range(2, 9), seed=0)
    assert max(scores, key=lambda k: scores[k]) == 5


def test_clusters_index_is_outside_the_product_pattern():
    name = mappings.clusters_index_name("shop")
    pattern = mappings.products_index_template("shop")["index_patterns"][0]
    assert not name.startswith(pattern.rstrip("*"))
    assert mappings.clusters_index_body()["mappings"]["properties"]["centroids"]["type"] == "binary"


class FixedEncoder:
    model_id = "m"
    dim = 16


def test_processor_assigns_the_nearest_stored_centroid(monkeypatch):
    centres, points = blobs(3, 2)
    stored = ClusterModel("m", ["a", "b", "c"], ["bag", "shoe", None], centres)
    reads = []

    def fake_load(es, alias, model_id):
        reads.append(model_id)
        return stored

    monkeypatch.setattr("pipeline.ingest.enrich.visual_cluster.load_model", fake_load)
    monkeypatch.setattr("pipeline.ingest.enrich.visual_cluster.make_client", lambda s: object())
    settings = VitrineSettings(cluster_refresh_s=3600)
    processor = VisualCluster(ProcessorContext(settings, lambda: FixedEncoder()))  # type: ignore[arg-type,return-value]
    product = Product(product_id="p", merchant_id="m", title="t", images=["/x.png"])
    items = [IngestItem(product, 0, vector=v) for v in points]
    items.append(IngestItem(product, 0))  # not embedded: untouched
    processor.process_batch(items)
    processor.process_batch(items[:1])
    assert [i.visual_cluster for i in items] == ["a", "a", "b", "b", "c", "c", None]
    assert [i.visual_cluster_name for i in items[:4]] == ["bag", "bag", "shoe", "shoe"]
    assert reads == ["m"]  # read once, then cached for cluster_refresh_s


def test_processor_leaves_fields_empty_without_centroids(monkeypatch):
    monkeypatch.setattr(clustering, "load_model", lambda *a: None)
    monkeypatch.setattr("pipeline.ingest.enrich.visual_cluster.load_model", lambda *a: None)
    monkeypatch.setattr("pipeline.ingest.enrich.visual_cluster.make_client", lambda s: object())
    processor = VisualCluster(ProcessorContext(VitrineSettings(), lambda: FixedEncoder()))  # type: ignore[arg-type,return-value]
    product = Product(product_id="p", merchant_id="m", title="t", images=["/x.png"])
    item = IngestItem(product, 0, vector=np.ones(16, np.float32))
    processor.process_batch([item])
    assert item.ok and item.visual_cluster is None
