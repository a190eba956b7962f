"""Visual clusters at catalogue scale: time, peak memory and purity of `vitrine cluster`
(mini-batch k-means over a point-in-time scroll, bulk write-back) against a naive baseline in the
same run (fetch every vector into one array, full-batch k-means, the same write-back).

Synthetic vectors with known structure (``--groups`` unit centres in ``--dim`` dimensions plus
Gaussian noise; the true group is stored as the document's ``category``) are bulk-loaded into a
fresh index behind a unique alias on the local Elasticsearch (started if needed, never
restarted), at each size of ``--sizes``. Each method runs in a fresh process: memory is that
process's peak RSS minus its RSS once the libraries are imported, so it shows what clustering
itself holds. Purity is read back from the index (per cluster, the share of its biggest true
group). The alias, indices and templates are removed afterwards.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
import uuid
from queue import Empty
from typing import Any

import numpy as np

from bench import harness
from pipeline.settings import VitrineSettings

MODEL_ID = "bench:synthetic"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load(settings: VitrineSettings, n: int, dim: int, groups: int, noise: float) -> float:
    """Bulk-load n synthetic vectors; returns seconds."""
    from elasticsearch.helpers import streaming_bulk

    from pipeline.encoders import l2_normalise
    from pipeline.es import indexing
    from pipeline.es.client import make_client

    es = make_client(settings)
    indexing.ensure_indices(es, settings, MODEL_ID, dim)
    rng = np.random.default_rng(1)
    centres = l2_normalise(rng.normal(size=(groups, dim)).astype(np.float32))

    def actions():
        for start in range(0, n, 5000):
            count = min(5000, n - start)
            truth = rng.integers(0, groups, count)
            vectors = l2_normalise(centres[truth] + rng.normal(0, noise, (count, dim)))
            for i in range(count):
                number = start + i
                yield {
                    "_index": settings.index_alias,
                    "_id": f"d{number}",
                    "_source": {
                        "product_id": f"p{number}",
                        "merchant_id": "bench",
                        "image_sha256": uuid.UUID(int=rng.integers(1 << 62).item()).hex,
                        "image_index": 0,
                        "category": f"g{truth[i]}",
                        "model_id": MODEL_ID,
                        "image_vector": [round(float(x), 6) for x in vectors[i]],
                    },
                }

    started = time.perf_counter()
    for ok, item in streaming_bulk(es, actions(), chunk_size=500, max_retries=5):
        assert ok, item
    es.indices.refresh(index=settings.index_alias)
    return time.perf_counter() - started


def purity(settings: VitrineSettings, centroids: np.ndarray, n: int) -> float:
    """Per cluster, the share of its biggest true group (read from ``category``), over all."""
    from pipeline.es.client import make_client

    es = make_client(settings)
    counts: dict[tuple[int, str], int] = {}
    search_after = None
    while True:
        hits = es.search(
            index=settings.index_alias, size=2000, sort=[{"product_id": "asc"}],
            search_after=search_after, source_includes=["category", "image_vector"],
        )["hits"]["hits"]  # fmt: skip
        if not hits:
            break
        vectors = np.asarray([h["_source"]["image_vector"] for h in hits], dtype=np.float32)
        rows = (vectors @ centroids.T).argmax(axis=1)
        for hit, row in zip(hits, rows, strict=True):
            key = (int(row), hit["_source"]["category"])
            counts[key] = counts.get(key, 0) + 1
        search_after = hits[-1]["sort"]
    best: dict[int, int] = {}
    for (row, _), count in counts.items():
        best[row] = max(best.get(row, 0), count)
    return sum(best.values()) / n


def streaming(settings: VitrineSettings, k: int, batch: int, epochs: int, write: bool):
    """`vitrine cluster` itself (``write=False``: `--dry-run`, sizes only)."""
    from pipeline.es.client import make_client
    from pipeline.ingest.clustering import cluster_catalogue

    es = make_client(settings)
    run = cluster_catalogue(es, settings, k=k, epochs=epochs, batch_size=batch, write=write)
    return run.model.centroids, {"failed": run.failed, "updated": run.updated}


def naive(settings: VitrineSettings, k: int, batch: int, epochs: int, write: bool):
    """Every vector in one array and sklearn's full-batch KMeans (labels kept in memory)."""
    from sklearn.cluster import KMeans

    from pipeline.encoders import l2_normalise
    from pipeline.es.client import make_client, write_index_info
    from pipeline.ingest.clustering import open_reader

    es = make_client(settings)
    info = write_index_info(es, settings.index_alias)
    assert info is not None and not write
    with open_reader(es, info.index, MODEL_ID, batch) as reader:
        ids, pages = [], []
        for page in reader.pages():
            ids += page.ids
            pages.append(page.vectors)
    vectors = np.concatenate(pages)
    kmeans = KMeans(n_clusters=k, random_state=0, n_init=1).fit(vectors)
    labels = dict(zip(ids, kmeans.labels_.tolist(), strict=True))
    return l2_normalise(kmeans.cluster_centers_.astype(np.float32)), {"labels": len(labels)}


def _child(method: str, settings: dict, args: tuple, n: int, queue: Any) -> None:
    import pipeline.ingest.clustering  # noqa: F401  (libraries loaded before the baseline RSS)

    current = VitrineSettings.model_validate(settings)
    before = rss_mib()
    started = time.perf_counter()
    centroids, result = {"streaming": streaming, "naive": naive}[method](current, *args)
    result["seconds"] = time.perf_counter() - started
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    result["purity"] = purity(current, centroids, n)  # after the measurements
    queue.put(result)


def measure(method: str, settings: VitrineSettings, n: int, *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(method, settings.model_dump(), args, n, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"{method} failed (exit code {process.exitcode})") from None
    process.join()
    return result


def cleanup(settings: VitrineSettings) -> None:
    from pipeline.es import mappings
    from pipeline.es.client import make_client

    es = make_client(settings)
    alias = settings.index_alias
    created = list(
        es.indices.get(index=mappings.product_index_pattern(alias), expand_wildcards="all")
    )
    for index in [*created, mappings.clusters_index_name(alias), settings.errors_index]:
        es.options(ignore_status=404).indices.delete(index=index)
    for template in (mappings.product_template_name(alias), settings.errors_index):
        es.options(ignore_status=404).indices.delete_index_template(name=template)
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="catalogue sizes (vectors)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--groups", type=int, default=20, help="true groups = k")
    parser.add_argument("--noise", type=float, default=0.015, help="per-dimension noise sd")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--no-write-back",
        dest="write_back",
        action="store_false",
        help="skip the write-back run (at the first size; Elasticsearch re-indexes every vector)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "2500,10000"
    from pipeline.dev.services import start_all

    report = harness.Report(
        "bench_cluster",
        f"Clustering {args.dim}-d vectors into k={args.groups}: streaming mini-batch vs naive",
        [
            "vectors",
            "method",
            "seconds",
            "vectors/s",
            "peak RSS MiB",
            "purity",
            "time ratio",
            "memory ratio",
        ],
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    report.note(
        f"streaming = `vitrine cluster --k {args.groups} --epochs {args.epochs} --batch-size "
        f"{args.batch_size} --dry-run` (sample + start, fit pass(es), assign pass; sizes only); "
        "`+ write-back` = the same without --dry-run (stores centroids, bulk-updates every "
        "document, which Elasticsearch re-indexes with its vector). naive = fetch every vector "
        "into one array, sklearn KMeans(n_init=1), labels in memory (no write-back). Peak RSS is "
        "the child process's high-water mark above its RSS after imports. Purity: per cluster, "
        "the share of its biggest true group. Shared 2-core machine: compare ratios."
    )
    report.data = {"sizes": sizes, "dim": args.dim, "groups": args.groups, "noise": args.noise}

    def plot(ax: Any) -> None:
        for method in ("naive", "streaming"):
            rows = [r for r in report.rows if r[1] == method]
            ax.plot([r[0] for r in rows], [r[4] for r in rows], marker="o", label=method)
        ax.set_xlabel("vectors")
        ax.set_ylabel("peak RSS above baseline (MiB)")
        ax.legend()

    for n in sizes:
        run_id = uuid.uuid4().hex[:8]
        settings = VitrineSettings(
            index_alias=f"bench-cluster-{run_id}",
            errors_index=f"bench-cluster-errors_{run_id}",
            es_request_timeout_s=300,  # a shared, busy Elasticsearch: slow is not failed
        )
        start_all(settings)
        try:
            seconds = load(settings, n, args.dim, args.groups, args.noise)
            report.note(f"{n} vectors bulk-loaded in {seconds:.1f} s")
            results = {}
            options = (args.groups, args.batch_size, args.epochs)
            results["naive"] = measure("naive", settings, n, *options, False)
            results["streaming"] = measure("streaming", settings, n, *options, False)
            if n == sizes[0] and args.write_back:  # re-indexes every document: measured once
                results["streaming + write-back"] = measure(
                    "streaming", settings, n, *options, True
                )
            base = results["naive"]
            for method, r in results.items():
                report.add(
                    n,
                    method,
                    round(r["seconds"], 1),
                    round(n / r["seconds"]),
                    round(r["peak_mib"], 1),
                    round(r["purity"], 3),
                    round(r["seconds"] / base["seconds"], 2),
                    round(r["peak_mib"] / max(base["peak_mib"], 0.1), 2),
                )
        finally:
            cleanup(settings)
        report.save(args.results_dir, plot)  # after each size: a later failure keeps these


if __name__ == "__main__":
    main(sys.argv[1:])
