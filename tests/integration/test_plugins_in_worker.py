"""Third-party plugins as an outside author ships them: the example distribution in
``examples/vitrine-example-plugin`` is built and pip-installed (offline), then a real worker
indexes with its processor and encoder; an installed broken plugin leaves the default path
alone; searches with its image-only encoder never need a text tower."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.dev.worker_process import worker_process
from pipeline.documents import Product
from pipeline.es import mappings
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.search.plan import QueryError, SearchQuery
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings
from tests.broken_plugin import write_broken_distribution
from tests.integration.helpers import make_product, unique_prefix

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vitrine-example-plugin"
PROCESSORS = ["decode_image", "image_quality", "example_colour", "embed_image"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Iterator[str]:
    """``PYTHONPATH`` with the example plugin pip-installed into it and the broken plugin."""
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), str(EXAMPLE)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (site / "vitrine_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    broken = write_broken_distribution(tmp_path_factory.mktemp("broken-site"))
    paths = [str(site), str(broken), os.environ.get("PYTHONPATH", "")]
    with pytest.MonkeyPatch.context() as patch:  # this process sees them too (searches below)
        patch.syspath_prepend(str(site))
        patch.syspath_prepend(str(broken))
        yield os.pathsep.join(p for p in paths if p)


@pytest.fixture(scope="module")
def plugin_settings(settings: VitrineSettings, session_id: str) -> VitrineSettings:
    name = f"test-plugin-{session_id}"
    return settings.model_copy(
        update={
            "index_alias": name,
            "queue": name,
            "encoder": "example_histogram",
            "encoder_options": {"bins": 4},
            "processors": PROCESSORS,
        }
    )


@pytest.fixture(scope="module")
def plugin_worker(es, plugin_settings, plugin_path, tmp_path_factory) -> Iterator:
    log_path = tmp_path_factory.mktemp("plugin-worker") / "worker.log"
    try:
        with (
            mock.patch.dict(os.environ, {"PYTHONPATH": plugin_path}),
            log_path.open("w") as log,
            worker_process(plugin_settings, output=log) as app,
        ):
            yield app
    finally:
        sys.stderr.write(f"\nplugin worker log: {log_path}\n")
        _drop_alias(es, plugin_settings.index_alias)


def _drop_alias(es, alias: str) -> None:
    for index in es.indices.get(index=f"{alias}.*", expand_wildcards="all"):
        es.indices.delete(index=index)
    es.options(ignore_status=404).indices.delete_index_template(name=f"{alias}-products")
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)


def _product(tmp_path: Path, prefix: str, colour: str, rgb: tuple[int, int, int]) -> Product:
    path = tmp_path / f"{prefix}-{colour}.png"
    Image.new("RGB", (96, 96), rgb).save(path)
    return Product(
        product_id=f"{prefix}-{colour}",
        merchant_id="merchant-p",
        title=f"Plain {colour} tote",
        tags=[prefix],
        images=[str(path)],
    )


@pytest.fixture(scope="module")
def indexed(plugin_worker, es, plugin_settings, tmp_path_factory) -> list[Product]:
    directory, prefix = tmp_path_factory.mktemp("plugin-products"), unique_prefix()
    products = [
        _product(directory, prefix, "red", (220, 30, 30)),
        _product(directory, prefix, "blue", (30, 60, 200)),
    ]
    job_ids = enqueue(plugin_worker, products, batch_size=2)
    statuses = wait_for_jobs(plugin_worker, job_ids, timeout_s=180)
    assert [statuses[j].state for j in job_ids] == ["done"], statuses
    es.indices.refresh(index=plugin_settings.index_alias)
    return products


def test_documents_carry_what_the_plugins_wrote(indexed, es, plugin_settings):
    alias = plugin_settings.index_alias
    for product, colour in zip(indexed, ("red", "blue"), strict=True):
        hits = es.search(index=alias, query={"term": {"product_id": product.product_id}})
        source = hits["hits"]["hits"][0]["_source"]
        assert source["model_id"] == "example:colour-histogram:bins4:64"
        assert len(source["image_vector"]) == 64
        assert source["example_colour"] == colour and 0 < source["example_brightness"] < 1
    red = es.search(index=alias, query={"term": {"example_colour": "red"}})["hits"]["hits"]
    assert [h["_source"]["product_id"] for h in red] == [indexed[0].product_id]
    mapping = next(iter(es.indices.get_mapping(index=alias).values()))["mappings"]
    assert mapping["properties"]["example_colour"] == {"type": "keyword"}


def test_an_image_only_encoder_searches_images_and_keywords(indexed, es, plugin_settings):
    searcher = Searcher(plugin_settings, es)
    probe = Image.new("RGB", (50, 50), (200, 40, 40))
    hits = searcher.search(SearchQuery(image=probe, k=2)).hits
    assert hits[0]["product_id"] == indexed[0].product_id
    hybrid = searcher.search(SearchQuery(text="blue tote", k=5, explain=True))
    assert [r["list"] for r in hybrid.requests or []] == ["keyword"]
    assert hybrid.hits[0]["product_id"] == indexed[1].product_id
    for attempt in (
        lambda: searcher.search(SearchQuery(text="blue tote", text_mode="vector")),
        lambda: searcher.embed(text="blue tote"),
    ):
        with pytest.raises(QueryError) as info:
            attempt()
        assert info.value.reason == "text_not_supported"


def test_the_api_answers_text_not_supported_not_503(indexed, plugin_settings):
    from pipeline.api.app import create_app

    with TestClient(create_app(plugin_settings)) as client:
        response = client.post("/v1/search", json={"text": "tote", "text_mode": "vector"})
        assert response.status_code == 400
        assert response.json()["detail"]["reason"] == "text_not_supported"
        response = client.post("/v1/search", json={"text": "red tote"})
        assert response.status_code == 200 and response.json()["hits"]


def test_a_broken_plugin_installed_leaves_the_default_path_alone(
    es, settings, session_id, plugin_path, tmp_path
):
    default = settings.model_copy(update={"queue": f"test-broken-{session_id}"})
    product = make_product(tmp_path, 7, prefix=unique_prefix())
    with (
        mock.patch.dict(os.environ, {"PYTHONPATH": plugin_path}),
        worker_process(default) as app,
    ):
        job_ids = enqueue(app, [product])
        statuses = wait_for_jobs(app, job_ids, timeout_s=180)
    assert statuses[job_ids[0]].state == "done"
    es.indices.refresh(index=settings.index_alias)
    query = {"term": {"product_id": product.product_id}}
    assert es.search(index=settings.index_alias, query=query)["hits"]["total"]["value"] == 1
