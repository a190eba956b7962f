"""The benchmark harness writes what the README quotes: a table, JSON and a plot."""

import json

from bench.__main__ import available
from bench.harness import Report


def test_report_saves_table_json_and_plot(tmp_path):
    report = Report("demo", "A demo", ["batch", "img/s", "x baseline"])
    report.add(1, 10.0, 1.0)
    report.add(8, 21.5, 2.15)
    report.note("ratios from the same run")
    report.save(tmp_path, plot=lambda ax: ax.plot([1, 8], [10.0, 21.5]))
    body = json.loads((tmp_path / "demo.json").read_text())
    assert body["rows"] == [[1, 10.0, 1.0], [8, 21.5, 2.15]]
    assert body["machine"]["cores"] >= 1
    table = (tmp_path / "demo.md").read_text()
    assert "| 8 | 21.5 | 2.15 |" in table and "- ratios from the same run" in table
    assert (tmp_path / "demo.png").read_bytes().startswith(b"\x89PNG")


def test_every_benchmark_module_is_listed():
    assert {"embed", "ingest", "quality"} <= set(available())


def test_paired_queries_with_several_clients_never_have_both_in_flight():
    """Mixed in flight, each one's searches would queue behind the other's (bench_query)."""
    import threading
    import time

    from bench.bench_query import paired

    in_flight, lock, mixed = {"a": 0, "b": 0}, threading.Lock(), []

    def client(name: str, other: str):
        def search(item: int) -> tuple[str, int]:
            with lock:
                in_flight[name] += 1
                mixed.append(in_flight[other] > 0)
            time.sleep(0.002)
            with lock:
                in_flight[name] -= 1
            return name, item

        return search

    items = list(range(50))
    for concurrency in (1, 4):
        a_hits, a_ms, b_hits, b_ms = paired(client("a", "b"), client("b", "a"), items, concurrency)
        assert a_hits == [("a", i) for i in items] and b_hits == [("b", i) for i in items]
        assert len(a_ms) == len(b_ms) == len(items) and min(a_ms + b_ms) >= 2
    assert mixed and not any(mixed)
