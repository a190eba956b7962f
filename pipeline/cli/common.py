"""What every ``vitrine`` command shares: the settings (read once, from ``VITRINE_*``), logging,
and the one-line error exit."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import NoReturn

import typer

from pipeline.settings import VitrineSettings


def settings() -> VitrineSettings:
    return VitrineSettings()


def setup_logging(level: str = "INFO") -> None:
    """Vitrine's own loggers at ``level``; libraries (HTTP clients, open_clip, which logs on the
    root logger) only from warnings up."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for ours in ("pipeline", "workers"):
        logging.getLogger(ours).setLevel(level)
    # the ES client logs each retry with a traceback; the final error is reported once instead
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def exec_with_metrics_dir(current: VitrineSettings) -> None:
    """A worker that exports metrics runs prometheus_client's multiprocess mode (its pool
    processes record, its main process serves), which the library picks when it is imported,
    from ``PROMETHEUS_MULTIPROC_DIR``: without that variable, start this command again with a
    fresh directory in it. A directory the deployment set is kept (empty it between runs)."""
    if current.worker_metrics_port is None or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="vitrine-metrics-")}
    os.execve(sys.executable, [sys.executable, "-m", "pipeline.cli", *sys.argv[1:]], env)
