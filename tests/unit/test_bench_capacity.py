"""docs/capacity.md's arithmetic: sizes from a worker's documents, workers per runtime."""

from bench.capacity import per_document, plan, render

MACHINE = {"date": "2026-11-24 00:00 UTC", "cpu": "test CPU", "cores": 2}
QUERY = {
    "machine": MACHINE,
    "data": {
        "memory": {
            "int8_hnsw": {"docs": 100_000, "hot": 55_000_000, "vex": 3_400_000, "knn": 260_000_000},
            "hnsw": {"docs": 20_000, "hot": 41_600_000},
        }
    },
}
INGEST = {
    "runtimes": {
        "torch": {"products_per_s": 8.0, "products_per_cpu_s": 5.0},
        "onnx-int8": {"products_per_s": 20.0, "products_per_cpu_s": 15.0},
    },
    "document": {
        "docs": 400,
        "disk": 12_000.0,
        "knn": 2_700.0,
        "stored": 8_000.0,
        "source_json": 17_000.0,
        "vector_json": 6_400.0,
        "fingerprint_json": 9_300.0,
    },
    "products": 400,
    "machine": MACHINE,
    "how": "test",
}


def test_disk_is_a_worker_documents_with_the_large_index_vector_files():
    per_doc = per_document(QUERY, INGEST["document"])
    assert per_doc["disk"] == 12_000 - 2_700 + 2_600
    assert per_doc["hot"] == 550 and per_doc["float_hot"] == 2_080


def test_workers_per_runtime_from_one_workers_rate():
    p = plan(1_000_000, per_document(QUERY, INGEST["document"]), {"torch": 10.0, "onnx": 40.0})
    assert p["workers"] == {"torch": (2, 1), "onnx": (1, 1)}  # 1M / (10/s x 86,400 s) = 1.16
    assert round(p["days_1_worker"]["torch"], 2) == 1.16
    assert p["disk"] == 1_000_000 * 11_900 * 2 * 1.3  # one replica, merge headroom


def test_the_page_shows_each_runtime_and_the_documents_parts():
    page = render(QUERY, None, INGEST)
    assert "torch 10.0, onnx-int8 30.0" in page  # products per CPU-second x 2 cores
    assert "**11900 B/document on disk**" in page
    assert "the vector is 38% and the fingerprint 55%" in page
    header = next(line for line in page.splitlines() if line.startswith("| images |"))
    assert "torch workers to ingest" in header and "onnx-int8 workers to ingest" in header
    row = next(line for line in page.splitlines() if line.startswith("| 1,000,000 |"))
    assert row.count("|") == header.count("|")
