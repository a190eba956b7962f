"""Queries: Vitrine (through ``Searcher``, with its query planner) vs exact brute force
(``script_score`` cosine over the same filter), on synthetic 512-d sets, four filter
selectivities, at concurrency 1 and 8; recall@10 against float ground truth; vector memory
and disk of int8_hnsw vs float hnsw; QPS and p95 at 1/4/16 clients through ``/v1/search`` (a
real uvicorn) and through the stored ``knn`` template.

Runs its own Elasticsearch (127.0.0.1:9251, /var/lib/vitrine-bench); vectors are bulk-loaded
directly, no encoder. Default 100k vectors per set; ``--quick`` 10k.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np

from bench import harness
from bench import search_data as data
from pipeline import metrics
from pipeline.es import mappings
from pipeline.search.planner import contrast
from pipeline.search.query import ExactQuery, Filters, KnnQuery
from pipeline.search.searcher import Searcher, SearchQuery

K = 10
#: Queries per client in each block of a paired run with several clients (``paired``).
BLOCK_PER_CLIENT = 4


def timed(fn: Any, items: list[Any], concurrency: int) -> tuple[list[Any], list[float]]:
    """Run ``fn`` on every item with ``concurrency`` threads; results and latencies (ms)."""

    def one(item: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        out = fn(item)
        return out, (time.perf_counter() - start) * 1000

    with ThreadPoolExecutor(concurrency) as pool:
        pairs = list(pool.map(one, items))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def paired(a: Any, b: Any, items: list[Any], concurrency: int) -> tuple[list, list, list, list]:
    """Run ``a`` and ``b`` on every item; results and latencies (ms) of each.

    One client: each item runs through ``a`` and ``b`` back to back (alternating which goes
    first), so both meet the same moment of this machine's drift. Several clients: mixed in
    flight, each one's searches would queue behind the other's in Elasticsearch's search
    threads, pulling both latencies toward the mix's. So the items run in blocks of
    ``BLOCK_PER_CLIENT`` x ``concurrency``, each block all through one with ``concurrency``
    clients and then all through the other (alternating which goes first): each meets its own
    load, and both the same minutes."""
    if concurrency == 1:

        def one(pair: tuple[int, Any]) -> tuple[Any, float, Any, float]:
            i, item = pair
            out: dict[Any, tuple[Any, float]] = {}
            for fn in (a, b) if i % 2 == 0 else (b, a):
                start = time.perf_counter()
                out[fn] = fn(item), (time.perf_counter() - start) * 1000
            return (*out[a], *out[b])

        rows = [one(pair) for pair in enumerate(items)]
        return (
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )
    runs: dict[Any, tuple[list, list]] = {a: ([], []), b: ([], [])}
    size = BLOCK_PER_CLIENT * concurrency
    for n, start in enumerate(range(0, len(items), size)):
        for fn in (a, b) if n % 2 == 0 else (b, a):
            results, ms = timed(fn, items[start : start + size], concurrency)
            runs[fn][0].extend(results)
            runs[fn][1].extend(ms)
    return (*runs[a], *runs[b])


def planned(searcher: Searcher, filters: Filters | None = None) -> Any:
    """A search under ``filters`` as ``searcher`` plans it, without ``explain`` as a frontend
    searches: the product ids (the plans show in ``plans``). Without ``filters``, a function of
    (query vector, filters)."""

    def search(q: np.ndarray, filters: Filters | None = filters) -> set[int]:
        query = SearchQuery(vector=q.tolist(), vector_model_id=data.MODEL_ID, k=K, filters=filters)
        return {int(h["product_id"]) for h in searcher.search(query).hits}

    return search


def unpacked(fn: Any) -> Any:
    """``fn`` called with the items of the one argument it is given."""
    return lambda item: fn(*item)


def exact_ids(es: Any, alias: str, q: np.ndarray, filters: Filters) -> set[int]:
    """The product ids of the exact brute-force search, the baseline."""
    hits = es.search(index=alias, **ExactQuery(q, data.MODEL_ID, filters, K).body())["hits"]
    return {int(h["_id"]) for h in hits["hits"]}


def plans() -> Counter[str]:
    """Vector searches run in this process so far by plan (``exact``, ``knn``, ``knn+wide``,
    ``exact+wide``), from the searcher's ``vitrine_search_plans`` metric."""
    counts: Counter[str] = Counter()
    for metric in metrics.SEARCH_PLANS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                wide = "+wide" if sample.labels["widened"] == "true" else ""
                counts[sample.labels["method"] + wide] += int(sample.value)
    return counts


def plans_since(before: Counter[str]) -> list[str]:
    """The plans searches ran by since ``before`` (a ``plans()``), sorted."""
    return sorted(plans() - before)  # a Counter's difference keeps the positive counts


def run_set(
    name: str, es: Any, args: Any, report: harness.Report, series: dict[str, Any]
) -> np.ndarray:
    settings = data.bench_settings(f"bench-q-{name.replace('+', '-')}")
    vectors, queries = data.make_set(name, args.n, args.queries)
    tags = data.tags_for(args.n)
    index = data.loaded_index(es, settings, args.n) if args.reuse else None
    if index is None:
        index = data.create_index(es, settings)
        seconds = data.load(es, index, vectors, tags)
        print(f"{name}: loaded {args.n} vectors in {seconds:.0f}s", flush=True)
    print(f"{name}: merged to one segment in {data.settle(es, index):.0f}s", flush=True)
    searcher = Searcher(settings, es)
    searched = planned(searcher)
    for label, share in data.SELECTIVITY.items():
        tag = data.selectivity_tag(share)
        mask = None if tag is None else np.array([tag in t for t in tags])
        truth = data.exact_top(vectors, queries, mask, K)
        filters = Filters(tags_all=[tag] if tag else [])

        vitrine = planned(searcher, filters)

        def exact(q: np.ndarray, filters: Filters = filters) -> set[int]:
            return exact_ids(es, settings.index_alias, q, filters)

        qs = list(queries)
        exact(qs[0]), vitrine(qs[0])  # warm caches (and the planner's count)
        # one client again, each query with a price cap new to the planner (a slider): the
        # same documents kept, a filter it has not counted
        capped = [
            (q, filters.model_copy(update={"max_price": cap}))
            for q, cap in zip(qs, data.price_caps(len(qs)), strict=True)
        ]
        runs: list[tuple[str, int, Any, Any, list[Any]]] = [
            (label, 1, vitrine, exact, qs),
            (label, 8, vitrine, exact, qs),
            (f"{label}, new price cap", 1, unpacked(searched), unpacked(exact), capped),
        ]
        for row_label, concurrency, vitrine_fn, exact_fn, items in runs:
            before = plans()
            got, v_ms, exact_hits, e_ms = paired(vitrine_fn, exact_fn, items, concurrency)
            recall = float(np.mean([len(g & t) / len(t) for g, t in zip(got, truth, strict=True)]))
            exact_recall = float(
                np.mean([len(g & t) / len(t) for g, t in zip(exact_hits, truth, strict=True)])
            )
            methods = plans_since(before)
            v, e = data.percentiles(v_ms), data.percentiles(e_ms)
            report.add(
                name, row_label, concurrency, "/".join(methods), round(recall, 3),
                round(exact_recall, 3), *[round(x, 1) for x in v], *[round(x, 1) for x in e],
                round(v[1] / e[1], 2),
            )  # fmt: skip
            series[f"{name}|{row_label}|{concurrency}"] = {"vitrine_ms": v_ms, "exact_ms": e_ms}
    # contrast of the first-pass kNN scores (what the planner's widening looks at)
    spreads = []
    for q in queries[:20]:
        body = KnnQuery(q, data.MODEL_ID, k=3 * K, num_candidates=100).body()
        hits = es.search(index=settings.index_alias, **body)["hits"]["hits"]
        spreads.append(contrast([h["_score"] for h in hits]))
    series[f"{name}|contrast"] = spreads
    report.note(f"{name}: first-pass contrast median {np.median(spreads):.3f} (20 queries)")
    if name != "clustered" and not args.keep:  # clustered: for the memory and concurrency runs
        data.delete_alias(es, settings.index_alias)
    return vectors


def memory(es: Any, args: Any, vectors: np.ndarray, report: harness.Report) -> dict[str, Any]:
    """Vector files of the clustered set as int8_hnsw (kept from the runs) and as float hnsw
    (the first 20k vectors: bytes per vector do not depend on the count, and it loads fast)."""
    out = {}
    for index_type in ("int8_hnsw", "hnsw"):
        settings = data.bench_settings(f"bench-q-mem-{index_type.replace('_', '-')}")
        if index_type == "int8_hnsw":
            settings = data.bench_settings("bench-q-clustered")
            index = next(iter(es.indices.get_alias(name=settings.index_alias)))
        else:
            index = data.create_index(es, settings, index_type=index_type)
            vectors = vectors[:20_000]
            data.load(es, index, vectors, data.tags_for(len(vectors)))
        es.indices.flush(index=index)
        files = data.vector_files(es, index, index_type)
        hot = data.hot_bytes(files, index_type)
        out[index_type] = {**files, "hot": hot, "docs": len(vectors)}
        report.note(
            f"{index_type}: {len(vectors)} x {data.DIMS}-d: search-hot (graph + compared vectors)"
            f" {hot / 2**20:.1f} MiB = {hot / len(vectors):.0f} B/vector (graph "
            f"{files['vex'] / len(vectors):.0f} B/vector); all vector files "
            f"{files['knn'] / len(vectors):.0f} B/vector, _source "
            f"{files['source'] / len(vectors):.0f} B/vector; index on disk "
            f"{files['total'] / 2**20:.1f} MiB"
        )
        if index_type != "int8_hnsw":
            data.delete_alias(es, settings.index_alias)
    return out


def app_without_model() -> Any:
    """The API without loading a model (the benchmark searches by vector): the factory its
    uvicorn workers call."""
    from pipeline.api.app import create_app
    from pipeline.settings import VitrineSettings

    return create_app(VitrineSettings(), load_model=False)


@contextmanager
def api(settings: Any, port: int, workers: int) -> Iterator[httpx.Client]:
    """The API on a real uvicorn with ``workers`` processes on ``port`` (as ``vitrine serve``
    runs them), and a client."""
    env = {
        **os.environ,
        **{f"VITRINE_{k.upper()}": str(v) for k, v in settings.model_dump().items()
           if k in ("es_url", "redis_url", "index_alias", "errors_index", "search_rate_limit",
                    "search_rate_limit_per_address")},
        "VITRINE_REDIS_PREFIX": "bench-query",
    }  # fmt: skip
    code = (
        "from pipeline.cli.app import run_workers; run_workers('bench.bench_query:"
        f"app_without_model', host='127.0.0.1', port={port}, workers={workers}, "
        "log_level='warning')"
    )
    server = subprocess.Popen([sys.executable, "-c", code], env=env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        for _ in range(240):
            try:
                client.get("/healthz")
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(30)


def concurrency(es: Any, args: Any, report: harness.Report) -> dict[str, Any]:
    """QPS and p95 at 1/4/16 clients: /v1/search on a real uvicorn (one process, and two
    workers), and the stored template."""
    settings = data.bench_settings("bench-q-clustered")
    _, queries = data.make_set("clustered", args.n, args.queries)
    template_id = mappings.search_template_id(settings.index_alias, "knn")
    out: dict[str, Any] = {}

    def measure(path: str, fn: Any) -> None:
        fn(qs[0])
        for clients in (1, 4, 16):
            start = time.perf_counter()
            _, ms = timed(fn, qs, clients)
            qps = len(qs) / (time.perf_counter() - start)
            p50, p95, p99 = data.percentiles(ms)
            out[f"{path}|{clients}"] = {"qps": qps, "p50": p50, "p95": p95}
            report.note(
                f"{path}, {clients} clients: {qps:.0f} QPS, p50 {p50:.1f} ms, "
                f"p95 {p95:.1f} ms, p99 {p99:.1f} ms"
            )

    def template(q: np.ndarray) -> None:
        params = KnnQuery(q, data.MODEL_ID, k=3 * K, num_candidates=100).template_params()
        es.search_template(index=settings.index_alias, id=template_id, params=params)

    qs = list(queries) * 2
    for workers in (1, 2):
        with api(settings, 8791, workers) as client:

            def search(q: np.ndarray, client: httpx.Client = client) -> None:
                body = {"vector": q.tolist(), "model_id": data.MODEL_ID, "k": K}
                client.post("/v1/search", json=body).raise_for_status()

            measure("/v1/search" if workers == 1 else f"/v1/search, {workers} workers", search)
    measure("template knn", template)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="vectors per set")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the indices afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a kept index of the same set and size"
    )
    parser.add_argument("--sets", default="clustered,isotropic,near-duplicates,cluster+noise")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries = min(args.n, 10_000), min(args.queries, 50)
    es = data.start(data.bench_settings("bench-q"))
    report = harness.Report(
        "bench_query",
        f"Queries: Vitrine vs exact brute force, {args.n} x {data.DIMS}-d, k={K}",
        ["set", "filter keeps", "conc.", "plan", "recall@10", "exact recall", "p50 ms",
         "p95 ms", "p99 ms", "exact p50", "exact p95", "exact p99", "p95 / exact"],
    )  # fmt: skip
    report.data["series"] = series = {}
    report.note(
        "Vitrine = Searcher.search without explain, as a frontend calls it (planner: exact when "
        "the filter keeps <= search_exact_max_docs, k documents as every product has one image; "
        "else int8 HNSW kNN k=30/num_candidates=100 re-scored with the float cosine, searched "
        "again when the first pass is flat: exactly up to search_flat_exact_max_docs, else 1000 "
        "re-scored / 2000 candidates; once most first passes under a filter were flat, it starts "
        "there). exact = script_score cosine over the same filter. Recall vs numpy float ground "
        "truth."
    )

    def plot(ax: Any) -> None:
        rows = [r for r in report.rows if r[2] == 1]
        labels = [f"{r[0][:9]} {r[1]}" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[7] for r in rows], 0.4, label="Vitrine p95")
        ax.bar(x + 0.2, [r[10] for r in rows], 0.4, label="exact p95")
        ax.set_xticks(x, labels, rotation=70, fontsize=7)
        ax.set_ylabel("ms (concurrency 1)")
        ax.legend()

    for name in args.sets.split(","):  # saved after each set: a long run keeps what it measured
        vectors = run_set(name, es, args, report, series)
        if name == "clustered":
            report.data["memory"] = memory(es, args, vectors, report)
            report.data["concurrency"] = concurrency(es, args, report)
            if not args.keep:
                data.delete_alias(es, "bench-q-clustered")
        report.save(args.results_dir, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
