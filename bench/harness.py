"""Shared plumbing for benchmarks: one results folder, and per run a table, JSON and a PNG plot.

Why: every benchmark reports the same way (ratios against a baseline measured in the same run,
the machine it ran on, the command), so the README can show the latest table of each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def command() -> str:
    """How this run was started, as a benchmark's results record it: ``python -m bench NAME
    ...`` also when a benchmark's module was run as a script."""
    script = Path(sys.argv[0]).stem
    name = [] if script == "__main__" else [script.removeprefix("bench_")]
    return "python -m bench " + shlex.join([*name, *sys.argv[1:]])


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for `bench all --quick`")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON/PNG go")
    return p


@dataclass
class Report:
    """One benchmark run: a table of rows plus free-form notes, saved as JSON, Markdown and PNG."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (raw series)
    machine: dict[str, Any] = field(default_factory=machine)
    command: str = field(default_factory=command)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text)

    def markdown(self) -> str:
        def cell(value: Any) -> str:
            return f"{value:.3g}" if isinstance(value, float) else str(value)

        lines = [
            f"**{self.title}** — {self.machine['date']}, {self.machine['cores']} cores "
            f"({self.machine['cpu']}), `{self.command}`",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows),
        ]
        if self.notes:
            lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines)

    def save(self, results_dir: Path, plot: Callable[[Any], None] | None = None) -> Path:
        """Print the table; write `<name>.json`, `<name>.md` and (given a plot) `<name>.png`."""
        results_dir.mkdir(parents=True, exist_ok=True)
        text = self.markdown()
        print("\n" + text + "\n")
        (results_dir / f"{self.name}.md").write_text(text + "\n")
        body = {
            k: getattr(self, k)
            for k in ("name", "title", "columns", "rows", "notes", "data", "machine", "command")
        }
        out = results_dir / f"{self.name}.json"
        out.write_text(json.dumps(body, indent=2, default=str) + "\n")
        if plot is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
            plot(ax)
            ax.set_title(self.title, fontsize=10)
            fig.tight_layout()
            fig.savefig(results_dir / f"{self.name}.png")
            plt.close(fig)
        print(f"results: {out}")
        return out


def run_all(modules: Sequence[str], argv: Sequence[str]) -> int:
    """Run each benchmark's `main(argv)` in turn; a failure is reported, the rest still run.
    Each one's time is printed, and the total: `all --quick` is meant to stay under 10 min."""
    import importlib

    failed: list[str] = []
    took: dict[str, float] = {}
    started = time.perf_counter()
    for module in modules:
        print(f"\n=== {module} {' '.join(argv)}", flush=True)
        begun = time.perf_counter()
        try:
            importlib.import_module(f"bench.{module}").main(list(argv))
        except Exception as exc:  # noqa: BLE001 - keep going, report at the end
            print(f"{module} failed: {exc!r}", file=sys.stderr)
            failed.append(module)
        took[module] = time.perf_counter() - begun
    print(
        f"\n{len(modules)} benchmarks in {time.perf_counter() - started:.0f} s: "
        + ", ".join(f"{m.removeprefix('bench_')} {s:.0f} s" for m, s in took.items())
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
