"""Visual clusters: mini-batch k-means over every product vector of the write index, written
back as ``visual_cluster`` (a stable id) and ``visual_cluster_name`` (the nearest taxonomy
category, when the encoder embeds text); the centroids are stored so that ingest assigns new
documents to the nearest one (``pipeline.ingest.enrich.visual_cluster``).

Memory does not grow with the catalogue size n: vectors are read through a point-in-time
search in pages of ``batch_size`` (one page of batch·d floats at a time), the model is k·d
centroids, the start (and automatic k) comes from a bounded sample (the first ``sample_size``
vectors in page order, freed before the passes) and the write-back streams bulk
updates page by page. Time is O((epochs + 1) · n · k · d) for the passes plus the JSON transfer
of the vectors and, on the first run, Elasticsearch re-indexing every updated document (its
vector included): that write-back dominates. Re-runs that change nothing are no-op updates.

Idempotent: pages come in a fixed pseudo-random order (sorted by image hash, then merchant,
product and image index), the start is k-means++ (best of 3) with a fixed seed on the first
``sample_size`` vectors of that order, so the same data and seed give the same centroids and
the same assignment. Cluster ids are matched to the
previously stored centroids (Hungarian assignment on cosine similarity), so a re-run keeps a
cluster's id even when the data moved a little; updates that change nothing are no-ops.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch, NotFoundError
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import silhouette_score

from pipeline.encoders import Encoder, l2_normalise
from pipeline.es import indexing, mappings
from pipeline.es.client import write_index_info
from pipeline.ingest.enrich.tagging import label_vectors
from pipeline.ingest.enrich.taxonomy import CATEGORY_FACET, load_taxonomy
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

#: A fixed, pseudo-random page order: image hashes are uniformly spread, the rest breaks ties.
PAGE_ORDER = [
    {"image_sha256": "asc"},
    {"merchant_id": "asc"},
    {"product_id": "asc"},
    {"image_index": "asc"},
]
PIT_KEEP_ALIVE = "5m"


class ClusteringError(RuntimeError):
    """Nothing to cluster, or not enough of it."""


@dataclass(frozen=True)
class ClusterModel:
    """Centroids (unit rows) of one model's vectors, with stable ids and optional names."""

    model_id: str
    ids: list[str]
    names: list[str | None]
    centroids: np.ndarray
    seed: int = 0
    sizes: tuple[int, ...] = ()
    fitted_at: str | None = None

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        """Row index of the nearest centroid (highest cosine) for each vector."""
        return np.asarray(l2_normalise(np.asarray(vectors, np.float32)) @ self.centroids.T).argmax(
            axis=1
        )

    def fields(self, row: int) -> dict[str, str | None]:
        return {"visual_cluster": self.ids[row], "visual_cluster_name": self.names[row]}

    def to_source(self) -> dict[str, Any]:
        centroids = np.ascontiguousarray(self.centroids, dtype="<f4")
        return {
            "model_id": self.model_id,
            "dims": int(centroids.shape[1]),
            "k": len(self.ids),
            "seed": self.seed,
            "ids": self.ids,
            "names": self.names,
            "sizes": list(self.sizes),
            "centroids": base64.b64encode(centroids.tobytes()).decode(),
            "documents": int(sum(self.sizes)),
            "fitted_at": self.fitted_at,
        }

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> ClusterModel:
        raw = np.frombuffer(base64.b64decode(source["centroids"]), dtype="<f4")
        return cls(
            model_id=source["model_id"],
            ids=list(source["ids"]),
            names=list(source["names"]),
            centroids=raw.reshape(int(source["k"]), int(source["dims"])).astype(np.float32),
            seed=int(source.get("seed", 0)),
            sizes=tuple(source.get("sizes", ())),
            fitted_at=source.get("fitted_at"),
        )


# ----------------------------------------------------------------------------- stored centroids


def load_model(es: Elasticsearch, alias: str, model_id: str) -> ClusterModel | None:
    """The stored centroids of ``model_id``'s vectors behind ``alias``, if any."""
    try:
        found = es.get(index=mappings.clusters_index_name(alias), id=mappings.model_slug(model_id))
    except NotFoundError:
        return None
    return ClusterModel.from_source(found["_source"])


def save_model(es: Elasticsearch, alias: str, model: ClusterModel) -> None:
    index = mappings.clusters_index_name(alias)
    if not es.indices.exists(index=index):
        es.options(ignore_status=400).indices.create(index=index, **mappings.clusters_index_body())
    es.index(
        index=index,
        id=mappings.model_slug(model.model_id),
        document=model.to_source(),
        refresh="wait_for",
    )


# ------------------------------------------------------------------------------- reading vectors


@dataclass(frozen=True)
class Page:
    ids: list[str]
    indices: list[str]
    vectors: np.ndarray  # unit rows


class VectorReader:
    """Pages of one index's vectors of one model, in ``PAGE_ORDER``, inside one point in time
    (every pass sees the same snapshot)."""

    def __init__(self, es: Elasticsearch, pit_id: str, model_id: str, batch_size: int):
        self.es, self.pit_id, self.model_id, self.batch_size = es, pit_id, model_id, batch_size

    def pages(self) -> Iterator[Page]:
        search_after = None
        while True:
            response = self.es.search(
                pit={"id": self.pit_id, "keep_alive": PIT_KEEP_ALIVE},
                query={"term": {"model_id": self.model_id}},
                sort=PAGE_ORDER,
                size=self.batch_size,
                search_after=search_after,
                source_includes=["image_vector"],
                track_total_hits=False,
                filter_path=[
                    "pit_id",
                    "hits.hits._id",
                    "hits.hits._index",
                    "hits.hits.sort",
                    "hits.hits._source",
                ],
            )
            self.pit_id = response.get("pit_id", self.pit_id)
            hits = response.get("hits", {}).get("hits", [])
            if not hits:
                return
            vectors = np.asarray([h["_source"]["image_vector"] for h in hits], dtype=np.float32)
            yield Page([h["_id"] for h in hits], [h["_index"] for h in hits], l2_normalise(vectors))
            search_after = hits[-1]["sort"]

    def head(self, size: int) -> np.ndarray:
        """The first ``size`` vectors in page order: a uniform sample, since pages are sorted by
        image hash (SHA-256 values are spread uniformly)."""
        parts, count = [], 0
        for page in self.pages():
            parts.append(page.vectors[: size - count])
            count += len(parts[-1])
            if count >= size:
                break
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


@contextmanager
def open_reader(
    es: Elasticsearch, index: str, model_id: str, batch_size: int
) -> Iterator[VectorReader]:
    pit_id = es.open_point_in_time(index=index, keep_alive=PIT_KEEP_ALIVE)["id"]
    reader = VectorReader(es, pit_id, model_id, batch_size)
    try:
        yield reader
    finally:
        es.options(ignore_status=404).close_point_in_time(id=reader.pit_id)


# ---------------------------------------------------------------------------------- the k-means


def choose_k(sample: np.ndarray, candidates: range, seed: int) -> dict[int, float]:
    """Silhouette score (cosine) of a full k-means on the sample for each candidate k."""
    scores: dict[int, float] = {}
    for k in candidates:
        if k >= len(sample):
            break
        labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(sample)
        scores[k] = float(
            silhouette_score(
                sample,
                labels,
                metric="cosine",
                sample_size=min(len(sample), 4000),
                random_state=seed,
            )
        )
    if not scores:
        raise ClusteringError(f"too few vectors ({len(sample)}) to choose k")
    return scores


def initial_centroids(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Full k-means (best of 3 k-means++ starts) on the sample: where mini-batch k-means starts.
    A start from one page would often merge two groups and split another."""
    if len(sample) < k:
        raise ClusteringError(f"k={k} needs at least {k} vectors; the index has {len(sample)}")
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=3).fit(sample)
    return np.asarray(kmeans.cluster_centers_, dtype=np.float32)


def fit_centroids(
    reader: VectorReader,
    init: np.ndarray,
    *,
    epochs: int,
    seed: int,
    on_page: Callable[[int], None],
) -> np.ndarray:
    """Mini-batch k-means from ``init`` over ``epochs`` passes of the pages; unit centroids."""
    kmeans = MiniBatchKMeans(
        n_clusters=len(init), init=init, n_init=1, random_state=seed, batch_size=reader.batch_size
    )
    for _ in range(epochs):
        for page in reader.pages():
            kmeans.partial_fit(page.vectors)
            on_page(len(page.ids))
    return l2_normalise(np.asarray(kmeans.cluster_centers_, dtype=np.float32))


def stable_ids(centroids: np.ndarray, previous: ClusterModel | None) -> list[str]:
    """Ids for new centroids: a previous cluster's id goes to the centroid matched to it (one to
    one, most similar overall); unmatched centroids get fresh numbers."""
    ids: list[str | None] = [None] * len(centroids)
    used: set[str] = set()
    if previous is not None and previous.centroids.shape[1] == centroids.shape[1]:
        rows, cols = linear_sum_assignment(-(centroids @ previous.centroids.T))
        for row, col in zip(rows, cols, strict=True):
            ids[row] = previous.ids[col]
            used.add(previous.ids[col])
    number = 0
    for row in range(len(ids)):
        while ids[row] is None:
            candidate = f"c{number:03d}"
            number += 1
            if candidate not in used:
                ids[row] = candidate
    return [i for i in ids if i is not None]


def cluster_names(
    centroids: np.ndarray, encoder: Encoder | None, settings: VitrineSettings
) -> list[str | None]:
    """Each centroid's nearest category label of the taxonomy, when the encoder embeds text
    (and has meaningful weights, or ``auto_tag_on_random_weights`` allows noise, as for
    ``auto_tag``). Two clusters may share a name; their ids differ."""
    if encoder is None or not encoder.supports_text:
        return [None] * len(centroids)
    if not encoder.semantic and not settings.auto_tag_on_random_weights:
        return [None] * len(centroids)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    facets = label_vectors(encoder, taxonomy, settings.home / "labels").facets
    if CATEGORY_FACET not in facets:
        return [None] * len(centroids)
    names, vectors = facets[CATEGORY_FACET]
    return [names[int(i)] for i in (centroids @ vectors.T).argmax(axis=1)]


# ---------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class ClusterRun:
    model: ClusterModel
    index: str
    updated: int
    failed: int
    silhouette: dict[int, float]


def cluster_catalogue(
    es: Elasticsearch,
    settings: VitrineSettings,
    *,
    k: int | None,
    encoder: Encoder | None = None,
    seed: int = 0,
    epochs: int = 1,
    batch_size: int = 1000,
    k_range: range = range(2, 21),
    sample_size: int = 5000,
    write: bool = True,
    on_page: Callable[[str, int], None] = lambda phase, n: None,
) -> ClusterRun:
    """Fit, store and write back the visual clusters of the alias's write index.

    ``k=None`` chooses k by the best silhouette on a sample. ``encoder`` (the configured one)
    names clusters when it embeds text and is the index's model. ``write=False`` only counts
    the cluster sizes (nothing stored or updated). ``on_page(phase, n)`` reports progress
    (``fit`` or ``assign``, vectors in the page).
    """
    current = write_index_info(es, settings.index_alias)
    if current is None:
        raise ClusteringError(f"alias {settings.index_alias} has no index")
    if encoder is not None and encoder.model_id != current.model_id:
        log.warning("encoder %s is not the index's model: clusters stay unnamed", encoder.model_id)
        encoder = None
    es.indices.refresh(index=current.index)
    scores: dict[int, float] = {}
    with open_reader(es, current.index, current.model_id, batch_size) as reader:
        sample = reader.head(sample_size)
        if len(sample) == 0:
            raise ClusteringError("the index holds no vectors of this model")
        if k is None:
            scores = choose_k(sample, k_range, seed)
            k = max(scores, key=lambda c: scores[c])
            log.info("chose k=%d (silhouette %.3f)", k, scores[k])
        init = initial_centroids(sample, k, seed)
        del sample
        centroids = fit_centroids(
            reader, init, epochs=epochs, seed=seed, on_page=lambda n: on_page("fit", n)
        )
        previous = load_model(es, settings.index_alias, current.model_id)
        model = ClusterModel(
            model_id=current.model_id,
            ids=stable_ids(centroids, previous),
            names=cluster_names(centroids, encoder, settings),
            centroids=centroids,
            seed=seed,
            fitted_at=datetime.now(UTC).isoformat(),
        )
        sizes = np.zeros(k, dtype=np.int64)

        def updates() -> Iterator[dict[str, Any]]:
            for page in reader.pages():
                rows = model.nearest(page.vectors)
                np.add.at(sizes, rows, 1)
                for doc_id, index, row in zip(page.ids, page.indices, rows, strict=True):
                    yield {
                        "_op_type": "update",
                        "_index": index,
                        "_id": doc_id,
                        "doc": model.fields(int(row)),
                        "retry_on_conflict": 3,
                    }
                on_page("assign", len(page.ids))

        if write:
            # stored before the write-back, so ingest assigns with these centroids meanwhile
            save_model(es, settings.index_alias, model)
            outcome = indexing.bulk_write(es, updates(), settings)
        else:
            outcome = indexing.BulkOutcome()
            for _ in updates():
                pass
    final = dataclasses.replace(model, sizes=tuple(int(s) for s in sizes))
    if write:
        save_model(es, settings.index_alias, final)
        es.indices.refresh(index=current.index)
    return ClusterRun(final, current.index, len(outcome.written), len(outcome.failed), scores)
