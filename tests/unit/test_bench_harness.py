"""The benchmark harness writes what the README quotes: a table, JSON and a plot."""

import json

from bench.__main__ import available
from bench.harness import Report, command


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


def test_the_recorded_command_names_the_benchmark_however_it_was_started(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/repo/bench/__main__.py", "ingest", "--images", "10"])
    assert command() == "python -m bench ingest --images 10"
    monkeypatch.setattr("sys.argv", ["bench/bench_ingest.py", "--images", "10"])
    assert command() == "python -m bench ingest --images 10"


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


def test_the_planner_crossover_is_where_knn_stays_at_least_as_fast():
    """bench_planner: from which filter size kNN's p95 is at most exact's on every set."""
    from bench.bench_planner import crossover, verdict

    rows = [
        ("clustered", 2_000, 1.8), ("clustered", 10_000, 1.1), ("clustered", 20_000, 0.9),
        ("noise", 2_000, 1.9), ("noise", 10_000, 0.95), ("noise", 20_000, 1.0),
    ]  # fmt: skip
    assert crossover(rows) == 20_000  # at 10k one set still favours exact
    assert crossover([*rows, ("noise", 30_000, 1.2)]) is None  # exact faster at the largest
    assert crossover([r for r in rows if r[1] > 2_000 and r[0] == "noise"]) == 10_000
    assert "from 10000 up to 19999" in verdict(rows, 15_000)
    assert "every filter measured" in verdict([("a", 5, 0.5)], 15_000)


def test_run_all_keeps_going_past_a_failure_and_times_each(monkeypatch, capsys):
    """`bench all`: one benchmark failing leaves the rest to run; each one's time is printed."""
    import sys
    import types

    from bench.harness import run_all

    ran = []

    def module(name, fails):
        def main(argv):
            ran.append((name, argv))
            if fails:
                raise RuntimeError("no Elasticsearch")

        monkeypatch.setitem(sys.modules, f"bench.{name}", types.SimpleNamespace(main=main))

    module("bench_first", fails=True)
    module("bench_second", fails=False)
    assert run_all(["bench_first", "bench_second"], ["--quick"]) == 1
    assert ran == [("bench_first", ["--quick"]), ("bench_second", ["--quick"])]
    out, err = capsys.readouterr()
    assert "bench_first failed: RuntimeError('no Elasticsearch')" in err
    assert "failed: bench_first" in err
    assert "2 benchmarks in 0 s: first 0 s, second 0 s" in out


def test_the_ingest_profile_sets_the_chain_alone_beside_the_worker():
    """bench_ingest: each stage's ms per product in the worker and in the chain's own runs."""
    from bench.bench_ingest import profile_rows
    from pipeline.profile import StageProfile

    worker = StageProfile(products=10)
    for stage, seconds in [("queue_wait", 5.0), ("embed_image", 0.6), ("forward", 0.5),
                           ("duplicate_match", 0.2), ("es_bulk", 0.2)]:  # fmt: skip
        worker.add(stage, seconds)
    chain = StageProfile(products=20)
    chain.add("embed_image", 0.8)
    chain.add("forward", 0.6)
    rows = {
        row[0]: row[1:]
        for row in profile_rows({"profile": worker.to_dict(), "refresh_s": 0.01}, chain)
    }
    assert rows["queue_wait"] == [500.0, "backlog", "-"]
    assert rows["embed_image"] == [60.0, "60%", 40.0]  # busy: embed, match, bulk (not forward)
    assert rows["  forward (in embed_image)"] == [50.0, "50%", 30.0]
    assert rows["duplicate_match"] == [20.0, "20%", "-"]  # the chain neither matches nor writes
    assert rows["refresh (bench, once at the end)"] == [1.0, "-", "-"]
    assert profile_rows({"profile": worker.to_dict(), "refresh_s": 0}, None)[1][3] == "-"
