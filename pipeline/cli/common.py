"""What every ``vitrine`` command shares: the settings (read once, from ``VITRINE_*``), logging,
and the one-line error exit."""

from __future__ import annotations

import logging
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
