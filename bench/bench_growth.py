"""Growth: query latency, recall and vector memory as one index grows from 10k to 50k and
100k documents (and 1M with ``--full``), Vitrine (``Searcher``, unfiltered, k=10) beside exact
brute force in the same run. The "clustered" synthetic set, 512-d, int8_hnsw, one shard; each
size adds documents to the same index, so the steps measure growth, not rebuilds.

Runs its own Elasticsearch (127.0.0.1:9251, /var/lib/vitrine-bench). ``--quick``: 2k/5k/10k.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from bench import harness
from bench import search_data as data
from bench.bench_query import paired
from pipeline.search.query import ExactQuery
from pipeline.search.searcher import Searcher, SearchQuery

K = 10


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--full", action="store_true", help="also 1M documents (long)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards")
    parser.add_argument("--set", default="clustered", choices=data.SETS)
    args = parser.parse_args(argv)
    sizes = [10_000, 50_000, 100_000] + ([1_000_000] if args.full else [])
    if args.quick:
        sizes, args.queries = [2_000, 5_000, 10_000], min(args.queries, 50)
    # the query benchmark's alias: with --keep, `bench query --reuse` skips loading 100k again
    settings = data.bench_settings(f"bench-q-{args.set.replace('+', '-')}")
    es = data.start(settings)
    vectors, queries = data.make_set(args.set, sizes[-1], args.queries)
    tags = data.tags_for(sizes[-1])
    index = data.create_index(es, settings)
    report = harness.Report(
        "bench_growth",
        f"Query latency and vector memory vs index size ({args.set}, {data.DIMS}-d, k={K})",
        ["docs", "load s", "segments", "plan", "recall@10", "p50 ms", "p95 ms", "exact p50",
         "exact p95", "p95 / exact", "hot MiB", "disk MiB", "heap MiB"],
    )  # fmt: skip
    loaded, started = 0, time.perf_counter()
    try:
        for size in sizes:
            seconds = data.load(es, index, vectors[loaded:size], tags[loaded:size], offset=loaded)
            seconds += data.settle(es, index)  # load s: bulk load and merge to one segment
            loaded = size
            searcher = Searcher(settings, es)  # a fresh planner count cache for this size
            truth = data.exact_top(vectors[:size], queries, None, K)
            qs = list(queries)

            def vitrine(q: np.ndarray, searcher: Searcher = searcher) -> tuple[set[int], str]:
                query = SearchQuery(
                    vector=q.tolist(), vector_model_id=data.MODEL_ID, k=K, explain=True
                )
                result = searcher.search(query)
                plan = result.plan or {}
                method = plan.get("method", "?") + ("+wide" if plan.get("widened") else "")
                return {int(h["product_id"]) for h in result.hits}, method

            def exact(q: np.ndarray) -> None:
                es.search(index=settings.index_alias, **ExactQuery(q, data.MODEL_ID, k=K).body())

            vitrine(qs[0]), exact(qs[0])
            got, v_ms, _, e_ms = paired(vitrine, exact, qs, 1)
            recall = float(
                np.mean([len(g[0] & t) / len(t) for g, t in zip(got, truth, strict=True)])
            )
            v, e = data.percentiles(v_ms), data.percentiles(e_ms)
            files = data.vector_files(es, index, "int8_hnsw")
            segments = len(es.cat.segments(index=index, format="json"))
            heap = es.nodes.stats(metric="jvm")["nodes"]
            heap_mib = sum(n["jvm"]["mem"]["heap_used_in_bytes"] for n in heap.values()) / 2**20
            report.add(
                size, round(seconds), segments, "/".join(sorted({g[1] for g in got})),
                round(recall, 3), round(v[0], 1), round(v[1], 1), round(e[0], 1),
                round(e[1], 1), round(v[1] / e[1], 2),
                round(data.hot_bytes(files, "int8_hnsw") / 2**20, 1),
                round(files["total"] / 2**20, 1), round(heap_mib),
            )  # fmt: skip
            report.data[str(size)] = {"vitrine_ms": v_ms, "exact_ms": e_ms, "files": files}
            print(report.rows[-1], flush=True)
    finally:
        if not args.keep:
            data.delete_alias(es, settings.index_alias)
    report.note(
        f"whole run {time.perf_counter() - started:.0f} s; 'hot' = HNSW graph + int8 vectors "
        "(what kNN reads at random); heap = Elasticsearch JVM heap used after the step"
    )

    def plot(ax: Any) -> None:
        docs = [r[0] for r in report.rows]
        ax.plot(docs, [r[6] for r in report.rows], "o-", label="Vitrine p95")
        ax.plot(docs, [r[8] for r in report.rows], "s-", label="exact p95")
        ax.set_xscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel("ms")
        ax.legend()

    report.save(args.results_dir, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
