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
