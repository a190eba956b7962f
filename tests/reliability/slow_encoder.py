"""Encoder plugins for worker-recovery tests: the tiny open_clip model made slow, so that a test
can kill a worker while a job runs, and show that a pool process whose model load takes longer
than Celery's default start-up timeout (4 s) is not killed while it loads.

A worker process finds them through the ``vitrine.encoders`` entry points that
``install_plugins`` writes into a folder on its ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.encoders import Encoder
from pipeline.settings import VitrineSettings

#: Longer than Celery's default ``worker_proc_alive_timeout`` (4 s).
LOAD_DELAY_S = 6.0
#: Per embedding call: a job lasts long enough to be killed in the middle.
EMBED_DELAY_S = 1.0


class SlowEncoder(Encoder):
    """Another encoder's vectors, each call ``EMBED_DELAY_S`` later."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.model_id, self.dim, self.semantic = inner.model_id, inner.dim, inner.semantic

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        time.sleep(EMBED_DELAY_S)
        return self.inner.embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


def _open_clip(settings: VitrineSettings) -> Encoder:
    from pipeline.encoders.open_clip_encoder import OpenClipEncoder

    return OpenClipEncoder.from_settings(settings)


def slow_batches(settings: VitrineSettings) -> Encoder:
    return SlowEncoder(_open_clip(settings))


def slow_start(settings: VitrineSettings) -> Encoder:
    time.sleep(LOAD_DELAY_S)
    return SlowEncoder(_open_clip(settings))


def install_plugins(directory: Path) -> Path:
    """Write a distribution declaring these encoders into ``directory``; returns it."""
    dist = directory / "vitrine_recovery_test_plugins-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vitrine-recovery-test-plugins\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[vitrine.encoders]\n"
        f"slow_batches = {__name__}:slow_batches\n"
        f"slow_start = {__name__}:slow_start\n"
    )
    return directory
