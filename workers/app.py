"""The Celery application (Redis broker and result backend).

``celery -A workers.app worker`` and ``vitrine worker`` use the module-level ``app``, built from
``VITRINE_*`` settings here, at the entry point. Delivery is at-least-once (late acks, requeue
when a worker dies); tasks are idempotent, so a redelivered job just rewrites the same documents.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger

from pipeline.settings import VitrineSettings


def create_celery(settings: VitrineSettings) -> Celery:
    app = Celery("vitrine", broker=settings.redis_url, backend=settings.redis_url)
    # A task may wait for its retry countdown while reserved: the visibility timeout must exceed
    # the longest task plus the longest back-off, or Redis redelivers it to another worker.
    visibility_timeout = max(3600, 2 * settings.task_time_limit_s + 300)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_default_queue=settings.queue,
        task_track_started=True,
        result_extended=True,
        result_expires=7 * 24 * 3600,
        broker_transport_options={"visibility_timeout": visibility_timeout},
        result_backend_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        imports=["workers.tasks"],
    )
    app.vitrine_settings = settings  # type: ignore[attr-defined]
    return app


@after_setup_logger.connect
def _quiet_http_clients(**_: object) -> None:
    """Keep worker logs about products, not about every HTTP request to Elasticsearch."""
    for name in ("elastic_transport", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


app = create_celery(VitrineSettings())
