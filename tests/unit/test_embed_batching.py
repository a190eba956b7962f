"""Forward passes shared by jobs running in threads (``pipeline.encoders.batching``): each job
gets exactly its own rows, passes respect the batch size, a failing pass fails only its jobs,
and the embed_image step behaves as without the batcher."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from pipeline import profile
from pipeline.documents import Product
from pipeline.encoders.batching import ImageBatcher
from pipeline.images import LoadedImage
from pipeline.ingest.processors import EmbedImage, IngestItem, ProcessorContext
from pipeline.settings import VitrineSettings

DIM = 64


class CountingEncoder:
    """Embeds image ``n`` (an int standing in for an image) as the unit vector e_n; records
    every pass. ``fail_on`` makes a pass containing that image raise."""

    model_id, dim, input_side = "test:counting:64", DIM, None

    def __init__(self, fail_on: int | None = None, shape: tuple[int, int] | None = None):
        self.passes: list[list[int]] = []
        self.fail_on = fail_on
        self.shape = shape
        self.release = threading.Event()
        self.release.set()

    def embed_images(self, images: Sequence[int]) -> np.ndarray:
        self.release.wait(10)
        self.passes.append(list(images))
        with profile.stage("forward", len(images)):
            if self.fail_on in images:
                raise RuntimeError("forward pass failed")
            if self.shape is not None:
                return np.zeros(self.shape, dtype=np.float32)
            return np.eye(DIM, dtype=np.float32)[list(images)]


def _concurrently(batcher: ImageBatcher, jobs: list[list[int]]) -> list[object]:
    """Each job's images embedded from its own thread, all started together."""
    results: list[object] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = batcher.embed_images(jobs[i])
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_jobs_of_one_image_share_passes_and_each_gets_its_own_row():
    encoder = CountingEncoder()
    batcher = ImageBatcher(lambda: encoder, batch_size=8, max_wait_s=0.5)  # type: ignore[arg-type,return-value]
    jobs = [[n] for n in range(16)]
    results = _concurrently(batcher, jobs)
    for job, result in zip(jobs, results, strict=True):
        assert isinstance(result, np.ndarray) and result.shape == (1, DIM)
        assert int(np.argmax(result[0])) == job[0]  # its own image, not a neighbour's
    assert sorted(n for p in encoder.passes for n in p) == list(range(16))
    assert max(len(p) for p in encoder.passes) <= 8
    assert len(encoder.passes) < len(jobs)  # shared: fewer passes than jobs
    assert batcher.pass_sizes == [len(p) for p in encoder.passes]


def test_a_job_keeps_its_images_together_and_in_order():
    encoder = CountingEncoder()
    batcher = ImageBatcher(lambda: encoder, batch_size=4, max_wait_s=0.2)  # type: ignore[arg-type,return-value]
    jobs = [[0, 1, 2], [3, 4], [5], [6, 7, 8, 9, 10]]  # the last is larger than a pass
    results = _concurrently(batcher, jobs)
    for job, result in zip(jobs, results, strict=True):
        assert isinstance(result, np.ndarray)
        assert [int(i) for i in np.argmax(result, axis=1)] == job
    for job in jobs:  # each job's images lie together in exactly one pass
        holding = [p for p in encoder.passes if job[0] in p]
        assert len(holding) == 1
        start = holding[0].index(job[0])
        assert holding[0][start : start + len(job)] == job
    assert all(len(p) <= 4 or p == jobs[3] for p in encoder.passes)


def test_a_failing_pass_fails_its_jobs_only_and_the_batcher_goes_on():
    encoder = CountingEncoder(fail_on=3)
    batcher = ImageBatcher(lambda: encoder, batch_size=2, max_wait_s=0.0)  # type: ignore[arg-type,return-value]
    with pytest.raises(RuntimeError, match="forward pass failed"):
        batcher.embed_images([3])
    assert int(np.argmax(batcher.embed_images([5])[0])) == 5  # type: ignore[index]


def test_the_pass_profile_is_shared_out_to_the_jobs():
    encoder = CountingEncoder()
    encoder.release.clear()  # hold the first pass until all four jobs wait
    batcher = ImageBatcher(lambda: encoder, batch_size=8, max_wait_s=1.0)  # type: ignore[arg-type,return-value]
    profiles = [profile.StageProfile() for _ in range(4)]

    def job(i: int) -> None:
        with profile.active(profiles[i]):
            batcher.embed_images([i])

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    encoder.release.set()
    for thread in threads:
        thread.join(30)
    assert sum(p.items.get("forward", 0) for p in profiles) == 4
    assert all(p.seconds.get("forward", 0) > 0 for p in profiles)


def _items(n: int) -> list[IngestItem]:
    product = Product(
        merchant_id="m", product_id="p", title="t", images=[f"/{i}.jpg" for i in range(n)]
    )
    items = [IngestItem(product, i) for i in range(n)]
    for i, item in enumerate(items):
        item.image = LoadedImage(i, str(i), 1, 1, "JPEG", 1)  # type: ignore[arg-type]
    return items


@pytest.mark.parametrize("batched", [False, True])
def test_embed_image_fails_every_item_of_a_bad_shaped_output_with_or_without_batcher(batched):
    encoder = CountingEncoder(shape=(1, DIM))  # one row for a batch of three
    batcher = ImageBatcher(lambda: encoder, batch_size=8, max_wait_s=0.0) if batched else None  # type: ignore[arg-type,return-value]
    context = ProcessorContext(VitrineSettings(), lambda: encoder, batcher=batcher)  # type: ignore[arg-type,return-value]
    items = _items(3)
    EmbedImage(context).process_batch(items)
    assert all(item.error is not None and item.vector is None for item in items)


@pytest.mark.parametrize("batched", [False, True])
def test_embed_image_gives_each_item_its_vector_with_or_without_batcher(batched):
    encoder = CountingEncoder()
    batcher = ImageBatcher(lambda: encoder, batch_size=2, max_wait_s=0.0) if batched else None  # type: ignore[arg-type,return-value]
    context = ProcessorContext(VitrineSettings(), lambda: encoder, batcher=batcher)  # type: ignore[arg-type,return-value]
    items = _items(3)
    EmbedImage(context).process_batch(items)
    assert [int(np.argmax(item.vector)) for item in items] == [0, 1, 2]
