"""The ingest path as a chain of named processors, like Elasticsearch ingest processors.

Each processor works on a batch of ``IngestItem``s (one per product image) so that the encoder
can embed a whole batch in one forward pass. An item that fails is marked and skipped by the
processors after it; the rest of the batch goes on. Third parties add processors through the
``vitrine.processors`` entry-point group and enable them with ``VITRINE_PROCESSORS``.
"""

from __future__ import annotations

import time
from abc import ABC
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from pipeline.documents import Product
from pipeline.encoders import Encoder
from pipeline.fetch import FetchPolicy
from pipeline.images import ImageError, ImageLimits, LoadedImage, load_image
from pipeline.settings import VitrineSettings

ENTRY_POINT_GROUP = "vitrine.processors"


class IngestError(Exception):
    """A product image that cannot be indexed. ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient


@dataclass
class IngestItem:
    """One product image on its way to becoming a document."""

    product: Product
    image_index: int
    image: LoadedImage | None = None
    vector: np.ndarray | None = None
    quality_flags: list[str] = field(default_factory=list)
    auto_tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: IngestError | None = None

    @property
    def source(self) -> str:
        return self.product.images[self.image_index]

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ProcessorContext:
    """What processors may use; the encoder is loaded on first use, once per process."""

    settings: VitrineSettings
    encoder_factory: Callable[[], Encoder]

    @property
    def encoder(self) -> Encoder:
        return self.encoder_factory()


class Processor(ABC):
    """Base class: override ``process`` (one item) or ``process_batch`` (all items at once)."""

    name: ClassVar[str]

    def __init__(self, context: ProcessorContext):
        self.context = context

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        for item in items:
            if item.ok:
                try:
                    self.process(item)
                except IngestError as exc:
                    item.error = exc

    def process(self, item: IngestItem) -> None:
        raise NotImplementedError(f"{type(self).__name__} must override process or process_batch")


class DecodeImage(Processor):
    """Fetch (through the SSRF guard) and safely decode the images (limits, EXIF orientation,
    RGB, SHA-256).

    The batch's images are fetched concurrently, and all fetches end within half the task's
    soft time limit: a slow image host fails its own products (``fetch_timeout``, retried) while
    the rest of the batch is still embedded and reported before the limit."""

    name = "decode_image"
    max_concurrent_fetches = 8

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        settings = self.context.settings
        limits = ImageLimits.from_settings(settings)
        policy = FetchPolicy.from_settings(settings)
        deadline = time.monotonic() + settings.task_soft_time_limit_s / 2
        pending = [item for item in items if item.ok]
        if not pending:
            return
        with ThreadPoolExecutor(min(self.max_concurrent_fetches, len(pending))) as pool:
            loaded = pool.map(lambda item: self._load(item, limits, policy, deadline), pending)
            for item, result in zip(pending, loaded, strict=True):
                if isinstance(result, IngestError):
                    item.error = result
                else:
                    item.image = result

    @staticmethod
    def _load(
        item: IngestItem, limits: ImageLimits, policy: FetchPolicy, deadline: float
    ) -> LoadedImage | IngestError:
        try:
            return load_image(item.source, limits, policy=policy, deadline=deadline)
        except ImageError as exc:
            return IngestError(exc.reason, str(exc), transient=exc.transient)


class ImageQuality(Processor):
    """Flag images too small to show or to embed well."""

    name = "image_quality"

    def process(self, item: IngestItem) -> None:
        assert item.image is not None, "image_quality must run after decode_image"
        minimum = self.context.settings.min_image_side
        if min(item.image.width, item.image.height) < minimum:
            item.quality_flags.append("low_resolution")


class EmbedImage(Processor):
    """Embed all decoded images of the batch in as few forward passes as the batch size allows."""

    name = "embed_image"

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        ready = [(item, item.image) for item in items if item.ok and item.image is not None]
        if not ready:
            return
        vectors = self.context.encoder.embed_images([image.image for _, image in ready])
        for (item, _), vector in zip(ready, vectors, strict=True):
            item.vector = vector


def available_processors() -> dict[str, type[Processor]]:
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


class ProcessorChain:
    """The configured processors, in order."""

    def __init__(self, names: Sequence[str], context: ProcessorContext):
        known = available_processors()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"unknown processor(s) {', '.join(unknown)}; installed: {', '.join(sorted(known))}"
            )
        if "embed_image" not in names:
            raise ValueError("the processor chain must contain embed_image")
        self.processors = [known[name](context) for name in names]

    def run(self, items: Sequence[IngestItem]) -> None:
        for processor in self.processors:
            processor.process_batch(items)
        for item in items:
            if item.ok and item.vector is None:
                item.error = IngestError("not_embedded", "no processor produced a vector")
