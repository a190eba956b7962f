"""Shared fixtures.

Unit tests use none of the services. Integration tests (``tests/integration``) get a real local
Elasticsearch and Redis (started through ``pipeline.dev.services``, as ``vitrine services start``
does), a tiny random-initialised open_clip checkpoint loaded through the real
``pretrained=<path>`` path, and a real ``vitrine worker`` process. Names (alias, errors index,
queue) are unique per test session, so sessions never see each other's data.

With an ``https://`` ``VITRINE_ES_URL`` (``scripts/test.sh``'s second pass) Elasticsearch runs
with security and TLS: the tests' own client is the admin (the CA and ``elastic`` credentials
come from the environment), and the worker process gets a least-privilege worker API key.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

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
        task_retry_backoff_max_s=2,
        reconcile_max_sends=2,
        image_fetch_timeout_s=2.0,
        # The tests' image servers run on 127.0.0.1, an address the fetch guard refuses unless
        # allow-listed (tests/reliability proves the refusal with settings without this).
        fetch_allow=["127.0.0.1"],
        image_max_bytes=2 * 1024 * 1024,
        image_max_pixels=4_000_000,
        search_rate_limit_per_address=100_000,  # every test client shares one address
        # The random-weight test model maps all images to cosines near 0.98: duplicates are
        # told apart by the perceptual hash, with a cosine gate above distinct images' (<0.997).
        duplicate_min_cosine=0.99,
        duplicate_max_phash_distance=16,
        # The tests' blocky patterns (6x6 blocks) line up badly with the 8x8 colour thumbnails,
        # so a small JPEG copy can correlate below the default 0.93: over 1,200 random seeds,
        # copies' colours correlated at least 0.866 (3 of 6,010 pairs below 0.93, two of them
        # failing CI runs) and distinct patterns' at most 0.34.
        duplicate_min_colour_correlation=0.75,
        duplicate_sure_cosine=0.9995,
        duplicate_close_colour_min_cosine=0.99,
        duplicate_same_picture_min_cosine=0.99,
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
    created = list(client.indices.get(index=f"{settings.index_alias}.*", expand_wildcards="all"))
    for index in [*created, settings.errors_index]:
        client.options(ignore_status=404).indices.delete(index=index)
    for template in (f"{settings.index_alias}-products", settings.errors_index):
        client.options(ignore_status=404).indices.delete_index_template(name=template)
    for script in mappings.search_templates(settings.index_alias):
        client.options(ignore_status=404).delete_script(id=script)
    client.close()


def with_api_key(settings: VitrineSettings, api_key: str) -> VitrineSettings:
    """``settings`` authenticating with ``api_key`` alone."""
    update = {"es_api_key": SecretStr(api_key), "es_username": None, "es_password": None}
    return settings.model_copy(update=update)


@pytest.fixture(scope="session")
def es_api_keys(es, settings: VitrineSettings) -> Iterator[dict[str, str]]:
    """With security on, ``{role: API key}`` for this session's least-privilege roles
    (``pipeline.es.security``); ``{}`` against a plain Elasticsearch."""
    from pipeline.es import security

    if not settings.es_url.startswith("https://"):
        yield {}
        return
    keys = security.setup_security(es, settings, expiration="1d")
    yield {role: key.encoded for role, key in keys.items()}
    security.remove_security(es, settings)


@pytest.fixture(scope="session")
def worker_settings(
    request: pytest.FixtureRequest, es, settings: VitrineSettings, es_api_keys
) -> VitrineSettings:
    """The worker process's settings: with security on, the worker API key, after an admin (the
    tests' client) has set up templates and indices, which a worker may not do."""
    if not es_api_keys:
        return settings
    from pipeline.ingest.ingestor import Ingestor

    Ingestor(settings, es=es, encoder=request.getfixturevalue("encoder")).ensure_index()
    return with_api_key(settings, es_api_keys["worker"])


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
def worker(es, worker_settings: VitrineSettings, worker_log: Path) -> Iterator:
    """A real worker process (prefork, one child) consuming this session's queue."""
    from pipeline.dev.worker_process import worker_process

    log_path = worker_log
    with log_path.open("w") as log:
        try:
            with worker_process(worker_settings, output=log) as app:
                yield app
        finally:
            sys.stderr.write(f"\nworker log: {log_path}\n")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path).replace(os.sep, "/")
        if "tests/integration" in path or "tests/reliability" in path:
            item.add_marker(pytest.mark.integration)
