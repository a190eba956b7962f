"""Transient faults are retried with back-off; when the retry budget is spent the failure is
recorded."""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.jobs import enqueue, wait_for_jobs
from tests.integration.helpers import make_product, pattern_image, unique_prefix


class FlakyImageHost:
    """Serves ``/flaky-N/<name>.jpg`` with 503 for the first N requests, then the image;
    ``/down/<name>.jpg`` always answers 503."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        buffer = io.BytesIO()
        pattern_image(900).save(buffer, format="JPEG")
        self.image = buffer.getvalue()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                host.hits[self.path] += 1
                failures = (
                    int(self.path.split("/")[1].split("-")[1]) if "flaky-" in self.path else 10**9
                )
                if host.hits[self.path] <= failures:
                    self.send_error(503, "try later")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(host.image)))
                self.end_headers()
                self.wfile.write(host.image)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def image_host() -> Iterator[FlakyImageHost]:
    host = FlakyImageHost()
    thread = threading.Thread(target=host.server.serve_forever, daemon=True)
    thread.start()
    yield host
    host.server.shutdown()
    host.server.server_close()
    thread.join(timeout=5)


def test_unreachable_image_host_is_retried_until_it_answers(
    worker, es, settings, image_host, tmp_path
):
    prefix = unique_prefix()
    flaky = make_product(
        tmp_path, 1, prefix=prefix, images=[f"{image_host.url}/flaky-2/{prefix}.jpg"]
    )
    good = make_product(tmp_path, 2, prefix=prefix)
    [job_id] = enqueue(worker, [flaky, good], batch_size=2)
    status = wait_for_jobs(worker, [job_id], timeout_s=120)[job_id]

    assert status.state == "done"
    assert {r["product_id"]: r["status"] for r in status.results} == {
        flaky.product_id: "indexed",
        good.product_id: "indexed",
    }
    assert image_host.hits[f"/flaky-2/{prefix}.jpg"] == 3  # two 503s, then the image
    es.indices.refresh(index=settings.index_alias)
    count = es.count(index=settings.index_alias, query={"prefix": {"product_id": prefix}})["count"]
    assert count == 2


def test_retries_are_bounded_and_the_failure_is_recorded(
    worker, es, settings, image_host, tmp_path
):
    prefix = unique_prefix()
    down = make_product(tmp_path, 3, prefix=prefix, images=[f"{image_host.url}/down/{prefix}.jpg"])
    [job_id] = enqueue(worker, [down])
    status = wait_for_jobs(worker, [job_id], timeout_s=120)[job_id]

    assert status.state == "failed"
    assert status.results[0]["reason"] == "fetch_failed"
    attempts = image_host.hits[f"/down/{prefix}.jpg"]
    assert attempts >= 2  # retried until the time budget was spent, then given up
    es.indices.refresh(index=settings.errors_index)
    [error] = es.search(
        index=settings.errors_index, query={"term": {"product_id": down.product_id}}
    )["hits"]["hits"]
    assert error["_source"]["reason"] == "fetch_failed"
    assert error["_source"]["attempts"] == attempts
