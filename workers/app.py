"""The target of ``celery -A workers.app worker``: Celery's own command line needs a module with
an ``app``. It is built from ``VITRINE_*`` settings when Celery first asks for it, not at import.

``vitrine worker`` builds the same app from the settings it was given (``pipeline.jobs``).
"""

from __future__ import annotations

from functools import cache

from pipeline.jobs import VitrineCelery, create_celery
from pipeline.settings import VitrineSettings


@cache
def _app() -> VitrineCelery:
    return create_celery(VitrineSettings(), worker=True)


def __getattr__(name: str) -> VitrineCelery:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
