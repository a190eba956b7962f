"""Write docs/capacity.md from measured numbers: `python -m bench.capacity [--measure-ingest]`.

Inputs: vector bytes per document (bench/results/bench_query.json, int8_hnsw at 100k and float
hnsw), query latency vs index size (bench/results/bench_growth.json), and what one worker
process ingests per CPU-second with each runtime and what a document it writes takes on disk
(bench/results/capacity_ingest.json, written by ``--measure-ingest``: the real ingest path in
process, the default processor chain, ViT-B-32 with random weights, into the benchmark's own
Elasticsearch). Re-run the benchmarks, then this, to refresh the page.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import harness
from pipeline.settings import VitrineSettings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "capacity.md"
CATALOGUES = (1_000_000, 10_000_000, 100_000_000)
NODE_RAM_GB = 64  # a common data-node size: 31 GB heap, the rest page cache
HEAP_GB = 31
REPLICAS = 1
SHARD_GB = 40  # within Elasticsearch's advice of 10-50 GB per shard
HEADROOM = 1.3  # merges need room; watermarks stop writes at 85-95 % full
WORKER_CORES = 2  # one worker of 2 cores: prefork x2, or one process of 2 threads
RUNTIMES = ("torch", "onnx-int8")  # the default, and the fastest measured (README)
BATCH = 16  # products per ingest call, as a worker's catalogue jobs carry them


def measure_ingest(results_dir: Path, products: int = 400) -> dict[str, Any]:
    """Products per CPU-second of one process through the real ingest path (decode, the default
    processor chain, embedding, near-duplicate matching, bulk write) with each runtime, and
    the bytes a document it writes takes (the first runtime's index, merged to one segment)."""
    from bench import search_data as data
    from bench.bench_ingest import photos
    from bench.bench_ingest import products as photo_products
    from pipeline.encoders.open_clip_encoder import create_random_checkpoint
    from pipeline.ingest.ingestor import Ingestor

    run = uuid.uuid4().hex[:6]
    rates: dict[str, dict[str, float]] = {}
    document: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = photo_products(photos(folder, products + BATCH), "capacity")
        checkpoint = create_random_checkpoint("ViT-B-32", folder / "random.pt")
        for runtime in RUNTIMES:
            settings = data.bench_settings(f"bench-capacity-{run}-{runtime}").model_copy(
                update={
                    "model_arch": "ViT-B-32",
                    "model_pretrained": str(checkpoint),
                    "encoder_runtime": runtime,
                }
            )
            es = data.start(settings)
            ingestor = Ingestor(settings, es=es)
            try:
                ingestor.ingest(items[:BATCH])  # loads the model, creates the index
                start, cpu = time.perf_counter(), time.process_time()
                for i in range(BATCH, len(items), BATCH):
                    ingestor.ingest(items[i : i + BATCH])
                rates[runtime] = {
                    "products_per_s": products / (time.perf_counter() - start),
                    "products_per_cpu_s": products / (time.process_time() - cpu),
                }
                document = document or stored_document(es, settings.index_alias)
            finally:
                data.delete_alias(es, settings.index_alias)
                es.indices.delete(index=settings.errors_index, ignore_unavailable=True)
    result = {
        "runtimes": rates,
        "document": document,
        "products": products,
        "machine": harness.machine(),
        "how": f"Ingestor.ingest in one process, batches of {BATCH} products (one 640x480 "
        "photo each, bench ingest's), the default processor chain and near-duplicate "
        "matching, ViT-B-32 random weights, into Elasticsearch (no queue)",
    }
    (results_dir / "capacity_ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def stored_document(es: Any, alias: str) -> dict[str, float]:
    """Bytes per document of a worker-written index, merged to one segment: on disk in all,
    its vector files, its stored fields (``_source``), and the mean ``_source`` JSON with the
    vector's and the fingerprint's share of it."""
    from bench import search_data as data

    [index] = es.indices.get(index=alias)
    es.indices.refresh(index=index)
    data.settle(es, index)
    files = data.vector_files(es, index, "int8_hnsw")
    sources = [h["_source"] for h in es.search(index=index, size=100)["hits"]["hits"]]

    def json_bytes(field: str | None) -> float:
        picked = (source if field is None else source.get(field) for source in sources)
        return sum(len(orjson.dumps(value)) for value in picked) / len(sources)

    docs = files["docs"]
    return {
        "docs": docs,
        "disk": files["total"] / docs,
        "knn": files["knn"] / docs,
        "stored": files["source"] / docs,
        "source_json": json_bytes(None),
        "vector_json": json_bytes("image_vector"),
        "fingerprint_json": json_bytes("fingerprint"),
    }


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.2f} TiB"


def days(n: float) -> str:
    return f"{n:.1f} days" if n < 10 else f"{n:,.0f} days"


def plan(n: int, per_doc: dict[str, float], rates: dict[str, float]) -> dict[str, Any]:
    """Nodes, RAM, disk, and workers per runtime (``rates``: products/s of one worker) for
    ``n`` images (one image document each)."""
    hot = n * per_doc["hot"] * (1 + REPLICAS)
    disk = n * per_doc["disk"] * (1 + REPLICAS) * HEADROOM
    cache_per_node = (NODE_RAM_GB - HEAP_GB - 2) * 2**30
    nodes = max(3, math.ceil(hot / cache_per_node), math.ceil(disk / (2 * 2**40)))
    primaries = max(1, math.ceil(n * per_doc["disk"] / (SHARD_GB * 2**30)))
    return {
        "hot": hot,
        "float_hot": n * per_doc["float_hot"] * (1 + REPLICAS),
        "disk": disk,
        "nodes": nodes,
        "primaries": primaries,
        "workers": {
            runtime: (math.ceil(n / (rate * 86_400)), math.ceil(n / (rate * 7 * 86_400)))
            for runtime, rate in rates.items()
        },
        "days_1_worker": {runtime: n / rate / 86_400 for runtime, rate in rates.items()},
    }


def per_document(query: dict[str, Any], document: dict[str, float]) -> dict[str, float]:
    """Bytes per image document: vector memory from the 100k benchmark index, disk as a worker
    writes it (its own index's files less its vector files, plus the 100k index's vector
    files: a graph of a few hundred vectors is smaller than at scale)."""
    mem = query["data"]["memory"]
    int8, flt = mem["int8_hnsw"], mem["hnsw"]
    return {
        "hot": int8["hot"] / int8["docs"],
        "float_hot": flt["hot"] / flt["docs"],
        "graph": int8["vex"] / int8["docs"],
        "knn": int8["knn"] / int8["docs"],
        "disk": document["disk"] - document["knn"] + int8["knn"] / int8["docs"],
    }


def render(query: dict[str, Any], growth: dict[str, Any] | None, ingest: dict[str, Any]) -> str:
    docs = query["data"]["memory"]["int8_hnsw"]["docs"]
    document = ingest["document"]
    per_doc = per_document(query, document)
    # CPU time, not wall time: what a process keeps its cores busy with, whatever else ran on
    # the machine; a worker of WORKER_CORES cores turns CPU-seconds into products at this rate
    rates = {
        runtime: measured["products_per_cpu_s"] * WORKER_CORES
        for runtime, measured in ingest["runtimes"].items()
    }
    exact_max = VitrineSettings.model_fields["search_exact_max_docs"].default
    default_runtime = VitrineSettings.model_fields["encoder_runtime"].default
    share = {f: document[f"{f}_json"] / document["source_json"] for f in ("vector", "fingerprint")}
    dims = 512
    walls = ", ".join(
        f"{runtime} {measured['products_per_s']:.1f}"
        for runtime, measured in ingest["runtimes"].items()
    )
    lines = [
        "# Capacity: workers, nodes, RAM and disk for 1M, 10M and 100M images",
        "",
        "Generated by `python -m bench.capacity` from measured numbers (re-run the benchmarks and",
        "this script to refresh). Measured on machines of "
        f"{query['machine']['cores']} cores, no GPU: vectors {query['machine']['date']} "
        f"({query['machine']['cpu']}), ingest and documents {ingest['machine']['date']} "
        f"({ingest['machine']['cpu']}).",
        "",
        "## Measured inputs",
        "",
        f"- **Ingest, one worker of {WORKER_CORES} cores**, products/s: "
        + ", ".join(f"{runtime} {rate:.1f}" for runtime, rate in rates.items())
        + f" ({default_runtime} is the default runtime; see the README's encoder runtimes). "
        f"Products per CPU-second of one process ({ingest['products']} products; "
        f"{ingest['how']}; random weights have the real model's FLOPs) times {WORKER_CORES}: "
        f"CPU time is what the worker's cores are busy with whatever else runs on the machine "
        f"(wall clock in that run, with Elasticsearch on the same cores: {walls} products/s). "
        "Elasticsearch's own CPU is not included: it runs on the data nodes.",
        f"- **A worker's document** ({document['docs']:.0f} written above, merged to one "
        f"segment, `_disk_usage` API): {document['disk']:.0f} B on disk, of which stored fields "
        f"{document['stored']:.0f} B (compressed `_source`: {document['source_json']:.0f} B of "
        f"JSON, the vector {document['vector_json']:.0f} B and the fingerprint "
        f"{document['fingerprint_json']:.0f} B of it) and vector files "
        f"{document['knn']:.0f} B; with the vector files of the {docs:,}-document index "
        f"below, **{per_doc['disk']:.0f} B/document on disk**.",
        f"- **Vectors, {dims}-d, int8_hnsw (m 16, ef_construction 100), {docs:,} documents, one "
        "shard** (`_disk_usage` API on the query benchmark's index):",
        f"  - int8 copies `d + 4` = {dims + 4} B/vector (the formula; Lucene `.veq`), HNSW graph "
        f"{per_doc['graph']:.0f} B/vector (measured: vector files minus the two copies),",
        f"  - **search-hot memory {per_doc['hot']:.0f} B/vector** (int8 copies + graph: what kNN "
        "reads at random and must stay in the page cache),",
        f"  - floats `4·d` = {4 * dims} B/vector stay on disk (read only for the re-scored hits);"
        f" all vector files {per_doc['knn']:.0f} B/vector.",
        f"- **Float `hnsw` instead**: search-hot {per_doc['float_hot']:.0f} B/vector (`4·d` + "
        f"graph), {per_doc['float_hot'] / per_doc['hot']:.1f}x the int8 figure.",
        "",
        "## Sizing",
        "",
        f"Assumptions: one image per product, {REPLICAS} replica, data nodes of {NODE_RAM_GB} GB "
        f"RAM ({HEAP_GB} GB heap, the rest page cache), at least 3 nodes for availability, disk "
        f"x{HEADROOM} headroom for merges and watermarks, primaries of <= {SHARD_GB} GB.",
        "",
        "| images | search-hot RAM (int8, with replica) | same with float hnsw | disk (with "
        "replica, headroom) | data nodes | primary shards | "
        + " | ".join(
            f"{runtime} workers to ingest in 1 day / 7 days | 1 {runtime} worker takes"
            for runtime in rates
        )
        + " |",
        "|---|---|---|---|---|---|" + "---|---|" * len(rates),
    ]
    for n in CATALOGUES:
        p = plan(n, per_doc, rates)
        workers = " | ".join(
            f"{one_day} / {one_week} | {days(p['days_1_worker'][runtime])}"
            for runtime, (one_day, one_week) in p["workers"].items()
        )
        lines.append(
            f"| {n:,} | {gib(p['hot'])} | {gib(p['float_hot'])} | {gib(p['disk'])} | "
            f"{p['nodes']} | {p['primaries']} | {workers} |"
        )
    lines += [
        "",
        f"Workers have {WORKER_CORES} cores each. Re-embedding a catalogue with a new model "
        "(`vitrine reindex`) costs the same worker time. RAM for the page cache is what keeps "
        "kNN fast: below the search-hot figure every query reads the graph from disk. Of a "
        f"document's `_source` JSON, the vector is {share['vector']:.0%} and the fingerprint "
        f"{share['fingerprint']:.0%}: "
        "both stay in `_source`, because partial updates (a duplicate group backfilled, a "
        "visual cluster named) rebuild a document from it, and the product-vector look-up "
        "reads the vector there.",
        "",
    ]
    if growth:
        lines += [
            "## Query latency vs index size",
            "",
            f"Measured with `{growth['command']}` ({growth['machine']['date']}; unfiltered, "
            "k=10, one shard, the 'clustered' synthetic set; the README's growth benchmark says "
            "how):",
            "",
            "| documents | Vitrine plan | recall@10 | Vitrine p50 / p95 ms | exact p50 / p95 ms "
            "| search-hot MiB | JVM heap used MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in growth["rows"]:
            r = dict(zip(growth["columns"], row, strict=True))
            lines.append(
                f"| {r['docs']:,} | {r['plan']} | {r['recall@10']} | {r['p50 ms']} / "
                f"{r['p95 ms']} | {r['exact p50']} / {r['exact p95']} | {r['hot MiB']} | "
                f"{r['heap MiB']} |"
            )
        lines += [
            "",
            "Exact search grows in proportion to the documents a filter keeps; HNSW grows "
            "roughly with the logarithm of the index size. The query planner therefore searches "
            f"exactly only up to `search_exact_max_docs` documents (default {exact_max:,}) and "
            "uses HNSW above; see the README's query benchmark for recall and latency by filter.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--measure-ingest",
        action="store_true",
        help="measure the ingest rates and a worker document's bytes again (2 min here; starts "
        "the benchmarks' own Elasticsearch), else read them from capacity_ingest.json",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=harness.RESULTS_DIR,
        help="where the benchmarks' JSON results are read and capacity_ingest.json is written",
    )
    parser.add_argument("--out", type=Path, default=DOCS, help="the page to write")
    args = parser.parse_args(argv)
    ingest_file = args.results_dir / "capacity_ingest.json"
    if args.measure_ingest or not ingest_file.exists():
        ingest = measure_ingest(args.results_dir)
    else:
        ingest = json.loads(ingest_file.read_text())
    query = json.loads((args.results_dir / "bench_query.json").read_text())
    growth_file = args.results_dir / "bench_growth.json"
    growth = json.loads(growth_file.read_text()) if growth_file.exists() else None
    args.out.write_text(render(query, growth, ingest))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
