"""Visual clusters against the real Elasticsearch: a catalogue with known structure (vectors
drawn around four concept axes by a test encoder with known vectors) is clustered, the clusters
found are the groups put in, they are named after the matching taxonomy labels, a re-run gives
the same assignment and ids, and a product ingested afterwards gets the nearest centroid."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

from pipeline.documents import Product, build_document, document_id
from pipeline.encoders import IMAGE, TEXT, Encoder, l2_normalise
from pipeline.es import indexing, mappings
from pipeline.ingest.clustering import cluster_catalogue, load_model
from pipeline.ingest.ingestor import Ingestor

pytestmark = pytest.mark.integration

AXES = ["bag", "shoe", "hat", "mug", "lamp", "other", "x1", "x2"]
GROUPS = ["bag", "shoe", "hat", "mug"]
PER_GROUP = 60
TAXONOMY = """
facets:
  category:
    threshold: 0.5
    templates: ["a photo of a {}."]
    labels: {bag: ["bag"], shoe: ["shoe"], hat: ["hat"], mug: ["mug"], lamp: ["lamp"]}
"""


def axis(name: str) -> np.ndarray:
    vector = np.zeros(len(AXES), dtype=np.float32)
    vector[AXES.index(name)] = 1.0
    return vector


class KnownVectors(Encoder):
    """Texts map to the axis they name; an image's vector is registered by its size."""

    model_id = "test:known-vectors:8"
    dim = len(AXES)
    capabilities = frozenset({IMAGE, TEXT})

    def __init__(self) -> None:
        self.by_size: dict[tuple[int, int], np.ndarray] = {}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        words = [set(re.findall(r"[a-z]+", t.lower())) & set(AXES) for t in texts]
        return np.stack([axis(sorted(w)[0]) if w else axis("other") for w in words])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return l2_normalise(np.stack([self.by_size[image.size] for image in images]))


@pytest.fixture
def catalogue(es, settings, tmp_path) -> Iterator[tuple[object, dict[str, str]]]:
    """An index of 4 x 60 vectors around four axes (noise 0.25); ``{doc id: group}``."""
    alias = f"test-clusters-{uuid.uuid4().hex[:8]}"
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY)
    local = settings.model_copy(
        update={
            "index_alias": alias,
            "errors_index": f"{alias}_errors",
            "taxonomy_path": taxonomy,
            "home": tmp_path,
            "processors": ["decode_image", "embed_image", "visual_cluster"],
            "cluster_refresh_s": 0,
        }
    )
    encoder = KnownVectors()
    indexing.ensure_indices(es, local, encoder.model_id, encoder.dim)
    rng = np.random.default_rng(7)
    truth: dict[str, str] = {}
    documents = []
    for group in GROUPS:
        for n in range(PER_GROUP):
            vector = l2_normalise((axis(group) + rng.normal(0, 0.25, len(AXES)))[None])[0]
            product = Product(
                product_id=f"{group}-{n}",
                merchant_id="m1",
                title=f"{group} {n}",
                images=[f"/img/{group}-{n}.png"],
            )
            sha = uuid.uuid5(uuid.NAMESPACE_URL, f"{group}-{n}").hex * 2
            doc_id = document_id("m1", product.product_id, sha)
            truth[doc_id] = group
            documents.append(
                (
                    doc_id,
                    build_document(
                        product,
                        image_index=0,
                        image_sha256=sha,
                        width=100,
                        height=100,
                        vector=vector,
                        model_id=encoder.model_id,
                    ),
                )
            )
    outcome = indexing.bulk_write(es, mappings.index_actions(alias, documents), local)
    assert not outcome.failed
    es.indices.refresh(index=alias)
    yield (local, encoder), truth
    created = list(es.indices.get(index=f"{alias}.*", expand_wildcards="all"))
    for index in [*created, mappings.clusters_index_name(alias), local.errors_index]:
        es.options(ignore_status=404).indices.delete(index=index)
    for template in (mappings.product_template_name(alias), local.errors_index):
        es.options(ignore_status=404).indices.delete_index_template(name=template)
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)


def assignment(es, alias: str) -> dict[str, tuple[str, str | None]]:
    hits = es.search(index=alias, size=1000, source=["visual_cluster", "visual_cluster_name"])
    return {
        h["_id"]: (h["_source"]["visual_cluster"], h["_source"]["visual_cluster_name"])
        for h in hits["hits"]["hits"]
    }


def test_clusters_match_the_known_structure_and_rerun_is_idempotent(es, catalogue):
    (local, encoder), truth = catalogue
    run = cluster_catalogue(es, local, k=None, encoder=encoder, batch_size=50, k_range=range(2, 9))
    assert len(run.model.ids) == 4, run.silhouette  # automatic k finds the four groups
    assert run.failed == 0 and run.updated == len(truth)
    assert sorted(run.model.sizes) == [PER_GROUP] * 4

    found = assignment(es, local.index_alias)
    assert set(found) == set(truth)
    # one cluster per group and one group per cluster, named after the group's taxonomy label
    by_group = {group: {found[d] for d, g in truth.items() if g == group} for group in GROUPS}
    assert all(len(clusters) == 1 for clusters in by_group.values()), by_group
    assert {group: next(iter(c))[1] for group, c in by_group.items()} == {g: g for g in GROUPS}
    assert len({next(iter(c))[0] for c in by_group.values()}) == 4

    again = cluster_catalogue(es, local, k=4, encoder=encoder, batch_size=50)
    assert assignment(es, local.index_alias) == found  # same data and seed: same ids, same docs
    assert again.model.ids == run.model.ids
    stored = load_model(es, local.index_alias, encoder.model_id)
    assert stored is not None and stored.ids == run.model.ids
    np.testing.assert_allclose(stored.centroids, again.model.centroids, atol=1e-6)


def test_products_ingested_later_get_the_nearest_centroid(es, catalogue, tmp_path):
    (local, encoder), truth = catalogue
    run = cluster_catalogue(es, local, k=4, encoder=encoder, batch_size=50)
    found = assignment(es, local.index_alias)
    shoe_cluster = next(found[d] for d, g in truth.items() if g == "shoe")

    image = tmp_path / "new-shoe.png"
    Image.new("RGB", (123, 77), "white").save(image)
    encoder.by_size[(123, 77)] = axis("shoe") + 0.1 * axis("hat")
    product = Product(
        product_id="late-shoe", merchant_id="m2", title="A late shoe", images=[str(image)]
    )
    ingestor = Ingestor(local, es=es, encoder=encoder)
    (result,) = ingestor.ingest([product])
    assert result.status == "indexed", result
    source = es.get(index=local.index_alias, id=result.documents[0])["_source"]
    assert (source["visual_cluster"], source["visual_cluster_name"]) == shoe_cluster
    assert shoe_cluster[0] in run.model.ids
