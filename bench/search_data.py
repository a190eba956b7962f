"""Shared by the query benchmarks: the benchmark's own Elasticsearch, synthetic vector sets,
a fast bulk load (no encoder) and what the vectors take on disk and in memory.

Why a separate Elasticsearch (port 9251, ``/var/lib/vitrine-bench``, 2 GB heap): loading 100k
to 1M vectors must not disturb the shared development node on 9200 that tests use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch, helpers

from pipeline.dev.services import start_elasticsearch, start_redis
from pipeline.es import mappings
from pipeline.es.client import make_client
from pipeline.es.indexing import ensure_indices
from pipeline.settings import VitrineSettings

DIMS = 512
MODEL_ID = "bench/synthetic-512"
SETS = ("clustered", "cluster+noise", "isotropic", "near-duplicates")


def bench_settings(alias: str) -> VitrineSettings:
    services = Path(os.environ.get("VITRINE_BENCH_SERVICES_DIR", "/var/lib/vitrine-bench"))
    return VitrineSettings(
        es_url=os.environ.get("VITRINE_BENCH_ES_URL", "http://127.0.0.1:9251"),
        redis_url=os.environ.get("VITRINE_BENCH_REDIS_URL", "redis://127.0.0.1:6391/0"),
        es_request_timeout_s=600,
        services_dir=services,
        es_heap=os.environ.get("VITRINE_BENCH_ES_HEAP", "2g"),
        es_transport_port=9351,
        index_alias=alias,
        errors_index=f"bench-errors-{alias}",  # not "<alias>-*": index templates clash
        search_rate_limit=10**9,
        search_rate_limit_per_address=10**9,
    )


def start(settings: VitrineSettings) -> Elasticsearch:
    """The benchmark's own Elasticsearch and Redis (the API's rate limits); started once."""
    print(start_elasticsearch(settings).detail, flush=True)
    print(start_redis(settings, persistent=False).detail, flush=True)
    return make_client(settings)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_set(name: str, n: int, queries: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors and ``queries`` unit query vectors (new draws from the same
    distribution, not indexed). The vectors do not depend on ``queries``, so an index kept with
    ``--keep`` is the same set whatever ``--queries`` a later ``--reuse`` run asks for."""
    rng = np.random.default_rng(seed)
    draw: Callable[[np.random.Generator, int], np.ndarray]
    if name == "clustered":  # a mixture in a 48-d latent space, projected to 512-d
        centres, projection = rng.normal(size=(200, 48)), rng.normal(size=(48, DIMS))

        def draw(g: np.random.Generator, count: int) -> np.ndarray:
            latent = centres[g.integers(0, 200, count)] + 0.35 * g.normal(size=(count, 48))
            return latent @ projection + 0.35 * g.normal(size=(count, DIMS))

    elif name == "cluster+noise":  # 1000 centres, isotropic noise as large as the centres
        unit_centres = _unit(rng.normal(size=(1000, DIMS)))

        def draw(g: np.random.Generator, count: int) -> np.ndarray:
            return unit_centres[g.integers(0, 1000, count)] + _unit(g.normal(size=(count, DIMS)))

    elif name == "isotropic":  # no structure at all: the worst case

        def draw(g: np.random.Generator, count: int) -> np.ndarray:
            return g.normal(size=(count, DIMS))

    elif name == "near-duplicates":  # catalogues: groups of 1-8 near-identical images
        bases, _ = make_set("clustered", n // 4 + 1, 0, seed + 1)

        def draw(g: np.random.Generator, count: int) -> np.ndarray:
            group = g.integers(0, len(bases), count)
            return bases[group] + 0.32 / np.sqrt(DIMS) * g.normal(size=(count, DIMS))

    else:
        raise ValueError(name)
    indexed, asked = (np.random.default_rng([seed, stream]) for stream in (1, 2))
    return _unit(draw(indexed, n)), _unit(draw(asked, queries))


#: Tag -> share of documents it is on (nested: one uniform draw per document decides all).
TAGS = {"p20": 0.2, "p2": 0.02, "p05": 0.005}
#: Filter -> share of documents it keeps (None: no filter); each filter is one tag of ``TAGS``.
SELECTIVITY = {"100%": None, **{f"{100 * share:g}%": share for share in TAGS.values()}}


def tags_for(n: int, seed: int = 11, shares: dict[str, float] = TAGS) -> list[list[str]]:
    """Nested selectivity tags: by default ``p20`` on ~20 % of documents, ``p2`` on 2 %,
    ``p05`` on 0.5 %."""
    u = np.random.default_rng(seed).random(n)
    return [[t for t, share in shares.items() if v < share] for v in u]


def price_caps(count: int, seed: int = 13) -> list[float]:
    """``count`` different price caps (cents) from 1 to 1,000 times every document's price, as
    a price slider sets them: a filter with one keeps the same documents as without it, but is
    new to the planner's per-filter counts."""
    caps = PRICE * np.exp(np.random.default_rng(seed).uniform(0, np.log(1000), 4 * count))
    return list(dict.fromkeys(round(float(c), 2) for c in caps))[:count]


def selectivity_tag(share: float | None) -> str | None:
    return None if share is None else {v: t for t, v in TAGS.items()}[share]


def create_index(
    es: Elasticsearch, settings: VitrineSettings, *, index_type: str = "int8_hnsw"
) -> str:
    """A fresh product index behind the settings' alias (the real template and mapping);
    ``index_type`` other than int8_hnsw replaces the vector field's index_options type."""
    delete_alias(es, settings.index_alias)
    if index_type == "int8_hnsw":
        index = ensure_indices(es, settings, MODEL_ID, DIMS)
    else:
        alias = settings.index_alias
        es.indices.put_index_template(
            name=mappings.product_template_name(alias), **mappings.products_index_template(alias)
        )
        body = mappings.product_index_body(alias, MODEL_ID, DIMS)
        body["mappings"]["properties"]["image_vector"]["index_options"]["type"] = index_type
        index = mappings.product_index_name(alias, MODEL_ID)
        es.indices.create(index=index, **body)
    return index


def loaded_index(es: Elasticsearch, settings: VitrineSettings, n: int) -> str | None:
    """The index behind the alias when it already holds ``n`` documents (``--reuse``)."""
    if not es.indices.exists_alias(name=settings.index_alias):
        return None
    index = next(iter(es.indices.get_alias(name=settings.index_alias)))
    return index if int(es.count(index=index)["count"]) == n else None


def delete_alias(es: Elasticsearch, alias: str) -> None:
    for index in es.indices.get(
        index=mappings.product_index_pattern(alias), ignore_unavailable=True, allow_no_indices=True
    ):
        es.indices.delete(index=index)


#: Every synthetic document's price.
PRICE = 10.0

#: The fields every synthetic document shares (a complete product document, as the API shows it).
_DOCUMENT: dict[str, Any] = {
    "merchant_id": "bench",
    "description": "",
    "category": None,
    "price": PRICE,
    "currency": "EUR",
    "in_stock": True,
    "image_index": 0,
    "image_sha256": "0" * 64,
    "width": 640,
    "height": 480,
    "quality_flags": [],
    "auto_tags": [],
    "auto_tag_scores": [],
    "model_id": MODEL_ID,
    "content_hash": "0" * 64,
    "indexed_at": "2026-11-23T00:00:00+00:00",
}


def _actions(
    index: str, vectors: np.ndarray, tags: list[list[str]], offset: int
) -> Iterator[dict[str, Any]]:
    for i, vector in enumerate(vectors, start=offset):
        yield {
            "_index": index,
            "_id": str(i),
            "_source": {
                **_DOCUMENT,
                "product_id": str(i),
                "title": f"Product {i}",
                "image_url": f"https://shop.example/{i}.jpg",
                "tags": tags[i - offset],
                "image_vector": [round(float(v), 6) for v in vector],
            },
        }


def load(
    es: Elasticsearch, index: str, vectors: np.ndarray, tags: list[list[str]], offset: int = 0
) -> float:
    """Bulk-load the vectors (ids from ``offset``; 3 parallel requests of 500), refresh;
    seconds taken. Failures raise (parallel_bulk does not retry, so it cannot loop)."""
    start = time.perf_counter()
    es.indices.put_settings(index=index, settings={"refresh_interval": "-1"})
    actions = _actions(index, vectors, tags, offset)
    for ok, item in helpers.parallel_bulk(
        es, actions, thread_count=3, chunk_size=500, queue_size=3
    ):
        if not ok:
            raise RuntimeError(f"bulk failed: {item}")
    es.indices.put_settings(index=index, settings={"refresh_interval": "1s"})
    es.indices.refresh(index=index)
    return time.perf_counter() - start


def settle(es: Elasticsearch, index: str) -> float:
    """Merge the index to one segment and wait: queries are measured on a settled index, as a
    catalogue is between bulk loads, not against a merge still running after the load (which
    takes CPU from the queries and leaves a graph per segment to search). Seconds taken."""
    start = time.perf_counter()
    es.options(request_timeout=3600).indices.forcemerge(
        index=index, max_num_segments=1, wait_for_completion=True
    )
    return time.perf_counter() - start


def vector_files(es: Elasticsearch, index: str, index_type: str) -> dict[str, int]:
    """Bytes on disk, from the disk-usage API: ``knn`` all vector files, split into ``vec`` raw
    floats (4·d per vector), ``veq`` int8 copies (d + 4, int8_hnsw only) and ``vex`` the HNSW
    graph (the rest); ``source`` stored fields (``_source`` keeps the vector as JSON)."""
    usage = es.indices.disk_usage(index=index, run_expensive_tasks=True)[index]
    docs = int(es.count(index=index)["count"])
    knn = int(usage["all_fields"]["knn_vectors_in_bytes"])
    vec = 4 * DIMS * docs
    veq = (DIMS + 4) * docs if index_type == "int8_hnsw" else 0
    return {
        "docs": docs,
        "knn": knn,
        "vec": vec,
        "veq": veq,
        "vex": knn - vec - veq,
        "source": int(usage["all_fields"]["stored_fields_in_bytes"]),
        "total": int(usage["store_size_in_bytes"]),
    }


def hot_bytes(files: dict[str, int], index_type: str) -> int:
    """What HNSW search reads at random (keep it in RAM): the graph plus the vectors it compares
    (int8 copies for int8_hnsw, floats for hnsw); the floats of int8_hnsw are read only for the
    few re-scored hits."""
    return files["vex"] + (files["veq"] if index_type == "int8_hnsw" else files["vec"])


def exact_top(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, k: int) -> list:
    """Ground truth: ids of the k nearest (float cosine) among the masked documents."""
    ids = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    sims = queries @ vectors[ids].T
    top = np.argsort(-sims, axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in top]


def percentiles(latencies_ms: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return float(p50), float(p95), float(p99)
