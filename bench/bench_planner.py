"""Where kNN overtakes exact search under a filter: the measurement behind the query planner's
``search_exact_max_docs``. For filters keeping 30 / 20 / 10 / 5 / 2 % of 100k documents, every
query runs through ``Searcher`` twice, back to back (alternating order): once planned as kNN
(``search_exact_max_docs`` 0; a flat first pass is still searched again, as the planner does),
once as exact search. Prints p50/p95 and recall@10 of both, the ratio of their p95s, and the
filter size from which kNN is at least as fast on every set: the threshold belongs below it.

Exact search costs in proportion to the documents a filter keeps; filtered HNSW costs about
the same whatever it keeps (Lucene explores further the fewer documents pass), so the two
cross. Runs on the query benchmarks' own Elasticsearch (127.0.0.1:9251). ``--quick``: 20k
documents, 30 queries, the clustered set only.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from bench import harness
from bench import search_data as data
from bench.bench_query import K, paired, planned, plans, plans_since
from pipeline.search.query import Filters
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings

#: Filter tag -> share of documents it keeps (nested).
SHARES = {"p30": 0.3, "p20": 0.2, "p10": 0.1, "p5": 0.05, "p2": 0.02}


def crossover(rows: list[tuple[str, int, float]]) -> int | None:
    """The fewest documents kept from which kNN's p95 is at most exact's on every set and at
    every larger filter measured (``rows``: set, documents kept, kNN p95 / exact p95); None
    when no such filter was measured."""
    for docs in sorted({d for _, d, _ in rows}):
        if all(ratio <= 1 for _, d, ratio in rows if d >= docs):
            return docs
    return None


def verdict(rows: list[tuple[str, int, float]], default: int) -> str:
    """Where the measurements put ``search_exact_max_docs``, beside its ``default``."""
    docs = crossover(rows)
    if docs is None:
        return f"exact is faster at the largest filter measured; the default is {default}"
    below = [d for _, d, _ in rows if d < docs]
    if not below:
        return f"kNN is as fast as exact at every filter measured; the default is {default}"
    return (
        f"kNN's p95 is at most exact's from {docs} documents kept on every set, exact is faster "
        f"somewhere at {max(below)}: a threshold from {max(below)} up to {docs - 1} picks the "
        f"faster plan at every filter measured; the default is {default}"
    )


def recall(hits: list[set[int]], truth: list[set[int]]) -> float:
    return round(float(np.mean([len(h & t) / K for h, t in zip(hits, truth, strict=True)])), 3)


def run_set(name: str, es: Any, args: Any, report: harness.Report) -> list[tuple[str, int, float]]:
    settings = data.bench_settings(f"bench-planner-{name.replace('+', '-')}")
    vectors, queries = data.make_set(name, args.n, args.queries)
    tags = data.tags_for(args.n, shares=SHARES)
    index = data.create_index(es, settings)
    print(f"{name}: loaded {args.n} vectors in {data.load(es, index, vectors, tags):.0f}s")
    print(f"{name}: merged to one segment in {data.settle(es, index):.0f}s", flush=True)
    searchers = {
        "knn": Searcher(settings.model_copy(update={"search_exact_max_docs": 0}), es),
        "exact": Searcher(settings.model_copy(update={"search_exact_max_docs": 10**9}), es),
    }
    ratios = []
    for tag, share in SHARES.items():
        mask = np.array([tag in t for t in tags])
        truth = data.exact_top(vectors, queries, mask, K)
        filters = Filters(tags_all=[tag])

        knn, exact = planned(searchers["knn"], filters), planned(searchers["exact"], filters)
        knn(queries[0]), exact(queries[0])  # warm caches (and the planner's count)
        before = plans()
        knn_hits, knn_ms, exact_hits, exact_ms = paired(knn, exact, list(queries), 1)
        knn_plans = [p for p in plans_since(before) if p != "exact"]  # "exact": the other one
        v, e = data.percentiles(knn_ms), data.percentiles(exact_ms)
        ratio = round(v[1] / e[1], 2)
        docs = int(mask.sum())
        report.add(
            name, f"{100 * share:g}%", docs, "/".join(knn_plans),
            recall(knn_hits, truth), recall(exact_hits, truth), round(v[0], 1), round(v[1], 1),
            round(e[0], 1), round(e[1], 1), ratio,
        )  # fmt: skip
        ratios.append((name, docs, ratio))
    data.delete_alias(es, settings.index_alias)
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="vectors per set")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--sets", default="clustered,near-duplicates,cluster+noise")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.sets = min(args.n, 20_000), min(args.queries, 30), "clustered"
    es = data.start(data.bench_settings("bench-planner"))
    report = harness.Report(
        "bench_planner",
        f"Filtered search: kNN vs exact as the planner runs them, {args.n} x {data.DIMS}-d, k={K}",
        ["set", "filter keeps", "docs", "kNN plan", "kNN recall", "exact recall", "kNN p50",
         "kNN p95", "exact p50", "exact p95", "kNN p95 / exact"],
    )  # fmt: skip
    ratios = [r for name in args.sets.split(",") for r in run_set(name, es, args, report)]
    default = VitrineSettings.model_fields["search_exact_max_docs"].default
    report.note(
        "Each query through Searcher as kNN (search_exact_max_docs 0) and as exact search, back "
        "to back, alternating which goes first; one client; recall@10 against numpy's float "
        "ground truth."
    )
    report.note(verdict(ratios, default))
    report.data["ratios"] = ratios

    def plot(ax: Any) -> None:
        for name in args.sets.split(","):
            mine = sorted((d, r) for n, d, r in ratios if n == name)
            ax.plot([d for d, _ in mine], [r for _, r in mine], "o-", label=name)
        ax.axhline(1.0, color="grey", ls="--")
        ax.axvline(default, color="black", ls=":", label="search_exact_max_docs default")
        ax.set_xscale("log")
        ax.set_xlabel("documents the filter keeps")
        ax.set_ylabel("kNN p95 / exact p95")
        ax.legend(fontsize="small")

    report.save(args.results_dir, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
