"""Recommendation latency (p50/p95) at 100k documents, against a plain kNN of the same k.

Why: a recommendation is more than one kNN (one _msearch for the viewed products' vectors, a
kNN that over-fetches candidates with their vectors, MMR in Python); this says what that costs.

Needs the local Elasticsearch (`vitrine services start`). Bulk-loads synthetic vectors (clustered,
so neighbourhoods look like a catalogue's; a tenth of the products in duplicate pairs) straight
into an index of its own, which it deletes afterwards. Every query uses a random history of
`--history` products from the index; timings are wall-clock from this process (client
included), the same queries for every variant, interleaved.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from elasticsearch.helpers import streaming_bulk

from bench import harness
from pipeline.es import mappings
from pipeline.es.client import make_client
from pipeline.es.indexing import ensure_indices
from pipeline.search.query import Filters, KnnQuery, ProductRef
from pipeline.search.recommend import Recommender, Viewed
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings

MODEL_ID = "bench-synthetic"
CATEGORIES = ["shoes", "bags", "shirts", "hats", "mugs"]


def documents(n: int, dims: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``n`` product documents around ``n // 100`` cluster centres; every tenth product and the
    next one form a duplicate pair (nearly the same vector)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 100), dims)).astype(np.float32)
    vector: np.ndarray = centres[0]
    for i in range(n):
        if i % 10 == 1:  # the copy of product i - 1
            vector = vector + rng.normal(scale=0.01, size=dims).astype(np.float32)
            group: str | None = f"dup-{i - 1}"
        else:
            vector = centres[rng.integers(len(centres))] + rng.normal(scale=0.6, size=dims)
            group = f"dup-{i}" if i % 10 == 0 else None
        yield (
            f"doc-{i}",
            {
                "merchant_id": f"m{i % 7}",
                "product_id": f"p{i}",
                "title": f"Product {i}",
                "category": CATEGORIES[i % len(CATEGORIES)],
                "price": float(i % 200),
                "in_stock": i % 4 != 0,
                "image_index": 0,
                "model_id": MODEL_ID,
                "duplicate_group": group,
                "image_vector": np.round(vector / np.linalg.norm(vector), 5).tolist(),
            },
        )


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000


def interleaved(variants: dict[str, list[Callable[[], Any]]]) -> dict[str, list[float]]:
    """Seconds per call. Query ``i`` of every variant runs back to back (in a rotating order), so
    a slow spell of the shared machine hits all variants alike."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(len(variants[names[0]])):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            start = time.perf_counter()
            variants[name][i]()
            out[name].append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=512, help="ViT-B-32's dimensions")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--history", type=int, default=5, help="viewed products per query")
    parser.add_argument("-k", type=int, default=20, help="products recommended")
    args = parser.parse_args(argv)
    if args.quick:
        args.documents, args.queries = min(args.documents, 10_000), min(args.queries, 60)

    run = uuid.uuid4().hex[:8]
    settings = VitrineSettings(
        index_alias=f"bench-recs-{run}", errors_index=f"bench-recs-errors-{run}"
    )
    es = make_client(settings)
    report = harness.Report(
        "bench_recommend",
        f"Recommendation latency, {args.documents:,} documents x {args.dims} dims, k={args.k}",
        ["variant", "p50 ms", "p95 ms", "p50 x baseline", "p95 x baseline"],
    )
    try:
        index = ensure_indices(es, settings, MODEL_ID, args.dims)
        es.indices.put_settings(index=index, settings={"refresh_interval": "-1"})
        start = time.perf_counter()
        actions = mappings.index_actions(index, documents(args.documents, args.dims, seed=7))
        for ok, item in streaming_bulk(es, actions, chunk_size=500, max_retries=5):
            assert ok, item
        es.indices.put_settings(index=index, settings={"refresh_interval": "1s"})
        es.indices.refresh(index=index)
        es.indices.forcemerge(index=index, max_num_segments=1, request_timeout=1800)
        load_s = time.perf_counter() - start
        report.note(f"bulk load, refresh and force-merge to one segment: {load_s:.0f} s")

        recommender = Recommender(Searcher(settings, es))
        rng = np.random.default_rng(11)
        histories = [
            [
                Viewed(ProductRef(f"m{i % 7}", f"p{i}"))
                for i in rng.choice(args.documents, args.history, replace=False)
            ]
            for _ in range(args.queries)
        ]
        now = time.time()
        profiles = [recommender.profile(h, now=now) for h in histories]  # also warms up
        shoes = Filters(category="shoes", in_stock=True)

        def knn(vector: list[float], filters: Filters | None = None) -> Callable[[], Any]:
            body = KnnQuery(vector, MODEL_ID, filters or Filters(), k=args.k).body()
            return lambda: es.search(index=settings.index_alias, **body)

        def recommend(history: list[Viewed], filters: Filters | None = None) -> Callable[[], Any]:
            return lambda: recommender.recommend(history, now=now, filters=filters, k=args.k)

        variants = {
            "plain kNN, same k (baseline)": [knn(p.vector) for p in profiles],
            "profile only (one _msearch)": [
                (lambda h=h: recommender.profile(h, now=now)) for h in histories
            ],
            "recommend (profile + kNN + MMR)": [recommend(h) for h in histories],
            "plain kNN, filtered (baseline)": [knn(p.vector, shoes) for p in profiles],
            "recommend, filtered": [recommend(h, shoes) for h in histories],
        }
        interleaved({name: calls[:5] for name, calls in variants.items()})  # warm-up
        results = {name: percentiles(t) for name, t in interleaved(variants).items()}
        base = results["plain kNN, same k (baseline)"]
        filtered_base = results["plain kNN, filtered (baseline)"]
        for name, (p50, p95) in results.items():
            ref = filtered_base if "filtered" in name else base
            report.add(name, p50, p95, p50 / ref[0], p95 / ref[1])
        report.data = {"args": vars(args) | {"results_dir": str(args.results_dir)}}
        report.note(
            f"{args.queries} queries, histories of {args.history} products; candidates "
            f"k x {settings.recommend_overfetch} with vectors; MMR lambda "
            f"{settings.recommend_mmr_lambda}; filtered: category + in_stock (about 15% match)"
        )
        report.note("synthetic clustered vectors; Elasticsearch 8.12 on this machine, shared")
    finally:
        for name in es.indices.get(
            index=mappings.product_index_pattern(settings.index_alias), expand_wildcards="all"
        ):
            es.indices.delete(index=name)
        es.options(ignore_status=404).indices.delete(index=settings.errors_index)
        for template in (
            mappings.product_template_name(settings.index_alias),
            settings.errors_index,
        ):
            es.options(ignore_status=404).indices.delete_index_template(name=template)
        for script in mappings.search_templates(settings.index_alias):
            es.options(ignore_status=404).delete_script(id=script)
        es.close()

    def plot(ax: Any) -> None:
        names = list(results)
        ax.barh(names, [results[n][1] for n in names], color="#c9d6e8", label="p95")
        ax.barh(names, [results[n][0] for n in names], color="#3465a4", label="p50")
        ax.set_xlabel("ms")
        ax.invert_yaxis()
        ax.legend()

    report.save(args.results_dir, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
