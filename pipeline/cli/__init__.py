"""The ``vitrine`` command line (the ``vitrine`` console script is ``pipeline.cli:main``)."""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
