"""The ingest path as a chain of named processors, like Elasticsearch ingest processors.

Each processor works on a batch of ``IngestItem``s (one per product image) so that the encoder
can embed a whole batch in one forward pass. An item that fails is marked and skipped by the
processors after it; the rest of the batch goes on. Third parties add processors through the
``vitrine.processors`` entry-point group and enable them with ``VITRINE_PROCESSORS``.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from pipeline.documents import Product
from pipeline.encoders import Encoder
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


@dataclass(frozen=True)
class TextBox:
    """A line of text read from the image: its four corner points in pixels, and a score."""

    text: str
    score: float
    points: list[list[float]]


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
    # enrichment (pipeline.ingest.enrich)
    auto_category: str | None = None
    auto_category_score: float | None = None
    auto_tag_scores: dict[str, float] = field(default_factory=dict)
    image_text: str | None = None
    text_boxes: list[TextBox] = field(default_factory=list)
    phash: str | None = None

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
    """Fetch and safely decode the image (limits, EXIF orientation, RGB, SHA-256)."""

    name = "decode_image"

    def process(self, item: IngestItem) -> None:
        try:
            item.image = load_image(item.source, ImageLimits.from_settings(self.context.settings))
        except ImageError as exc:
            raise IngestError(exc.reason, str(exc), transient=exc.transient) from exc


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
