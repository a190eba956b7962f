"""A real worker with ``encoder_runtime=onnx-int8`` indexes a product: the export is built in the
worker process, the documents carry the variant's ``model_id``, and the index is its own."""

from __future__ import annotations

from pathlib import Path

from pipeline.dev.worker_process import worker_process
from pipeline.encoders.onnx_runtime import DEFAULT_INT8
from pipeline.es import mappings
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.settings import VitrineSettings
from tests.integration.helpers import make_product, unique_prefix


def test_a_worker_with_the_int8_runtime_indexes_a_product(
    es, settings: VitrineSettings, session_id: str, tmp_path: Path
):
    name = f"test-onnx-{session_id}"
    onnx = settings.model_copy(
        update={"index_alias": name, "queue": name, "encoder_runtime": "onnx-int8"}
    )
    product = make_product(tmp_path, 3, prefix=unique_prefix())
    try:
        with worker_process(onnx) as app:
            job_ids = enqueue(app, [product])
            statuses = wait_for_jobs(app, job_ids, timeout_s=300)
        assert statuses[job_ids[0]].state == "done", statuses
        es.indices.refresh(index=name)
        hits = es.search(index=name, query={"term": {"product_id": product.product_id}})
        source = hits["hits"]["hits"][0]["_source"]
        assert source["model_id"].endswith(f":onnx-{DEFAULT_INT8.name}")
        assert list(es.indices.get(index=name)) == [
            mappings.product_index_name(name, source["model_id"])
        ]
        assert list((onnx.models_dir / "onnx").glob("*/int8-*.onnx"))
    finally:
        for index in es.indices.get(index=f"{name}-*", expand_wildcards="all"):
            es.indices.delete(index=index)
        es.options(ignore_status=404).indices.delete_index_template(name=f"{name}-products")
        for script in mappings.search_templates(name):
            es.options(ignore_status=404).delete_script(id=script)
