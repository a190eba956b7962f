"""Shared fixtures.

Unit tests use none of the services. Integration tests (``tests/integration``) get a real local
Elasticsearch and Redis (started through ``pipeline.dev.services``, as ``vitrine services start``
does), a tiny random-initialised open_clip checkpoint loaded through the real
``pretrained=<path>`` path, and a real ``vitrine worker`` process. Names (alias, errors index,
queue) are unique per test session, so sessions never see each other's data.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import VitrineSettings

TINY_ARCH = "vitrine-tiny-vit"


@pytest.fixture(scope="session")
def session_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.encoders.open_clip_encoder import create_random_checkpoint

    return create_random_checkpoint(TINY_ARCH, tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="session")
def settings(session_id: str, tiny_checkpoint: Path, tmp_path_factory) -> VitrineSettings:
    return VitrineSettings(
        index_alias=f"test-{session_id}",
        errors_index=f"test-errors-{session_id}",
        queue=f"test-{session_id}",
        redis_prefix=f"test-{session_id}",
        model_arch=TINY_ARCH,
        model_pretrained=str(tiny_checkpoint),
        min_image_side=64,
        batch_size=8,
        task_retry_budget_s=6,
        task_retry_backoff_s=1,
        task_retry_max_backoff_s=2,
        reconcile_max_sends=2,
        image_fetch_timeout_s=2.0,
        image_max_bytes=2 * 1024 * 1024,
        image_max_pixels=4_000_000,
        home=tmp_path_factory.mktemp("home"),
    )


@pytest.fixture(scope="session")
def services(settings: VitrineSettings) -> None:
    from pipeline.dev import services as local_services

    local_services.start_all(settings)


@pytest.fixture(scope="session")
def es(services, settings: VitrineSettings) -> Iterator:
    from pipeline.es import mappings
    from pipeline.es.client import make_client

    client = make_client(settings)
    yield client
    created = list(client.indices.get(index=f"{settings.index_alias}-*", expand_wildcards="all"))
    for index in [*created, settings.errors_index]:
        client.options(ignore_status=404).indices.delete(index=index)
    for template in (f"{settings.index_alias}-products", settings.errors_index):
        client.options(ignore_status=404).indices.delete_index_template(name=template)
    for script in mappings.search_templates(settings.index_alias):
        client.options(ignore_status=404).delete_script(id=script)
    client.close()


@pytest.fixture(scope="session")
def encoder(settings: VitrineSettings):
    from pipeline.encoders import get_encoder

    return get_encoder(settings)


@pytest.fixture(scope="session")
def celery_app(services, settings: VitrineSettings):
    from pipeline.jobs import create_celery

    return create_celery(settings)


@pytest.fixture(scope="session")
def worker_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker") / "worker.log"


@pytest.fixture(scope="session")
def worker(es, settings: VitrineSettings, worker_log: Path) -> Iterator:
    """A real worker process (prefork, one child) consuming this session's queue."""
    from pipeline.dev.worker_process import worker_process

    log_path = worker_log
    with log_path.open("w") as log:
        try:
            with worker_process(settings, output=log) as app:
                yield app
        finally:
            sys.stderr.write(f"\nworker log: {log_path}\n")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
