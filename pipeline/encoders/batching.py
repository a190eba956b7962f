"""One forward pass for the images of several jobs.

A worker whose pool runs jobs in threads (``vitrine worker --pool threads``) holds several
one-product jobs at once; embedded one by one they would each pay a batch-1 forward pass. Each
job's ``embed_image`` step hands its images to the process's ``ImageBatcher`` and waits; one
thread runs the forward pass over every image waiting, up to ``batch_size``. The first image of
a pass waits at most ``max_wait_s`` from its arrival for others: under load the images queue up
while the previous pass runs, so a pass starts full and at once; on an idle worker a lone job
waits ``max_wait_s`` at most. Meanwhile the other jobs decode their images and write their
documents, so decoding and writing overlap the forward pass.

Jobs keep their own messages, acknowledgements, retries and results: a job's message is
acknowledged when that job returns, after its documents are written, so batching changes
nothing in at-least-once delivery. A forward pass that raises fails every job that was in it
(each then fails or retries as it would have alone).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import metrics
from pipeline.encoders import IMAGE, Encoder
from pipeline.profile import StageProfile, active, record


@dataclass
class _Request:
    images: Sequence[Any]
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    output: object = None
    error: BaseException | None = None
    #: this request's share of the pass's profiled stages (preprocess, forward)
    profile: StageProfile = field(default_factory=StageProfile)


class ImageBatcher:
    """``embed_images`` for many threads, served by one forward-pass thread (started on first
    use, so a forked process starts its own)."""

    def __init__(
        self, encoder: Callable[[], Encoder], *, batch_size: int, max_wait_s: float
    ) -> None:
        self._encoder = encoder
        self.batch_size = max(1, batch_size)
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: images per forward pass so far (tests and the benchmark read it)
        self.pass_sizes: list[int] = []

    def embed_images(self, images: Sequence[Any]) -> object:
        """What ``Encoder.embed_images(images)`` would return, from a shared forward pass."""
        request = _Request(list(images))
        self._ensure_thread()
        self._queue.put(request)
        request.done.wait()
        for name, seconds in request.profile.seconds.items():
            record(name, seconds, request.profile.items.get(name, 0))
        if request.error is not None:
            raise request.error
        return request.output

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="vitrine-embed-batcher", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        carried: _Request | None = None
        while True:
            batch = [carried or self._queue.get()]
            carried = None
            size = len(batch[0].images)
            deadline = batch[0].arrived + self.max_wait_s
            while size < self.batch_size:
                try:
                    request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if size + len(request.images) > self.batch_size:
                    carried = request  # opens the next pass
                    break
                batch.append(request)
                size += len(request.images)
            self._forward(batch, size)

    def _forward(self, batch: list[_Request], size: int) -> None:
        self.pass_sizes.append(size)
        profile = StageProfile()
        try:
            with active(profile), metrics.embedding(IMAGE, size):
                output = self._encoder().embed_images([i for r in batch for i in r.images])
        except BaseException as exc:  # every job of the pass fails or retries as it would alone
            for request in batch:
                request.error = exc
                request.done.set()
            return
        rows = _rows(output, size)
        start = 0
        for request in batch:
            n = len(request.images)
            request.output = output if rows is None else rows[start : start + n]
            start += n
            share = n / size
            for name, seconds in profile.seconds.items():
                request.profile.add(name, seconds * share, round(profile.items[name] * share))
            request.done.set()


def _rows(output: object, size: int) -> np.ndarray | None:
    """The output as one row per image, or None when it has another shape (each job then
    gets it whole, and its own shape check fails its items as it would without batching)."""
    try:
        array = np.asarray(output, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 2 and array.shape[0] == size else None
