"""The ingest path as a chain of named processors, like Elasticsearch ingest processors.

Each processor works on a batch of ``IngestItem``s (one per product image) so that the encoder
can embed a whole batch in one forward pass. An item that fails is marked and skipped by the
processors after it; the rest of the batch goes on. Third parties add processors through the
``vitrine.processors`` entry-point group and enable them with ``VITRINE_PROCESSORS``; only the
configured names are imported, so a broken plugin that is not configured never matters.
"""

from __future__ import annotations

import time
from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipeline import metrics, plugins
from pipeline.documents import Product
from pipeline.encoders import IMAGE, Encoder, EncoderOutputInvalid, valid_rows
from pipeline.encoders.batching import ImageBatcher
from pipeline.es import mappings
from pipeline.fetch import FetchPolicy
from pipeline.images import DecodeSize, ImageError, ImageLimits, LoadedImage, load_image
from pipeline.profile import stage
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
    #: Document fields written by plugin processors; each name declared in a ``fields`` mapping.
    extra: dict[str, Any] = field(default_factory=dict)
    error: IngestError | None = None
    # enrichment (pipeline.ingest.enrich)
    auto_category: str | None = None
    auto_category_score: float | None = None
    auto_tag_scores: dict[str, float] = field(default_factory=dict)
    image_text: str | None = None
    text_boxes: list[TextBox] = field(default_factory=list)
    phash: str | None = None
    fingerprint: str | None = None
    phash_bands: list[str] = field(default_factory=list)
    visual_cluster: str | None = None
    visual_cluster_name: str | None = None
    duplicate_group: str | None = None

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
    #: How far ``decode_image`` may scale JPEGs down: what the chain needs (None: full size).
    decode_size: DecodeSize | None = None
    #: Shares forward passes between jobs running in threads (``pipeline.encoders.batching``).
    batcher: ImageBatcher | None = None

    @property
    def encoder(self) -> Encoder:
        return self.encoder_factory()

    def embed_images(self, images: Sequence[Any]) -> object:
        """The encoder's ``embed_images``, through the batcher when there is one."""
        if self.batcher is not None:
            return self.batcher.embed_images(images)
        with metrics.embedding(IMAGE, len(images)):
            return self.encoder.embed_images(images)


class Processor(ABC):
    """Base class of every ingest step. The contract for plugin authors (docs/plugins.md):

    - ``name`` MUST equal the entry-point name under ``vitrine.processors``.
    - A processor MUST override ``process`` (one item) or ``process_batch`` (all items at once,
      e.g. one model call per batch). It MUST skip items that are not ``ok`` (the default
      ``process_batch`` does) and MUST NOT raise for one bad item: raise ``IngestError`` from
      ``process`` (or set ``item.error`` in ``process_batch``) so only that product fails.
      ``transient=True`` marks faults worth a retry (a host that did not answer).
    - Document fields it writes go into ``item.extra`` and MUST be declared in ``fields``
      (name -> Elasticsearch mapping); the index gets those mappings. Names MUST NOT clash with
      Vitrine's own fields or another processor's, and SHOULD carry a prefix naming the plugin.
      A value written under an undeclared name fails the item (``processor_output_invalid``).
    - ``__init__`` runs once per worker process, after fork: load models there (or lazily),
      never at import time. Read settings from ``self.context.settings``; use the encoder only
      through ``self.context.encoder`` (loaded once per process).
    - A processor MUST be thread-safe: in a threads-pool worker (``--pool threads``) jobs run the
      chain at once on the same processor objects (guard lazily built state with a lock). It
      SHOULD be deterministic and SHOULD NOT do network IO other than fetching the item's own
      image.
    - ``decode_size`` MAY say how few pixels of ``item.image.image`` it needs (JPEGs are then
      decoded scaled down, when every processor of the chain allows it); the default, None,
      asks for the full image. ``item.image.width``/``height`` are always the original's.
    """

    name: ClassVar[str]
    #: Elasticsearch mappings of the document fields this processor writes into ``item.extra``.
    fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: Vitrine's own document fields (``pipeline.documents.ProductDocument``) this processor
    #: fills through ``IngestItem`` attributes: the built-in processors' declaration.
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: ProcessorContext):
        self.context = context

    def decode_size(self) -> DecodeSize | None:
        """The least image this processor needs (None: the full image)."""
        return None

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

    def decode_size(self) -> DecodeSize | None:
        return DecodeSize()

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        settings = self.context.settings
        limits = ImageLimits.from_settings(settings)
        policy = FetchPolicy.from_settings(settings)
        deadline = time.monotonic() + settings.task_soft_time_limit_s / 2
        pending = [item for item in items if item.ok]
        if not pending:
            return
        with ThreadPoolExecutor(min(self.max_concurrent_fetches, len(pending))) as pool:
            size = self.context.decode_size if settings.decode_draft else None
            loaded = pool.map(
                lambda item: self._load(item, limits, policy, deadline, size), pending
            )
            for item, result in zip(pending, loaded, strict=True):
                if isinstance(result, IngestError):
                    item.error = result
                else:
                    item.image = result

    @staticmethod
    def _load(
        item: IngestItem,
        limits: ImageLimits,
        policy: FetchPolicy,
        deadline: float,
        size: DecodeSize | None,
    ) -> LoadedImage | IngestError:
        try:
            return load_image(item.source, limits, policy=policy, deadline=deadline, size=size)
        except ImageError as exc:
            return IngestError(exc.reason, str(exc), transient=exc.transient)


class EmbedImage(Processor):
    """Embed all decoded images of the batch in as few forward passes as the batch size allows."""

    name = "embed_image"

    def decode_size(self) -> DecodeSize | None:
        side = self.context.encoder.input_side
        return None if side is None else DecodeSize(short=side)

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        ready = [(item, item.image) for item in items if item.ok and item.image is not None]
        if not ready:
            return
        encoder = self.context.encoder
        output = self.context.embed_images([image.image for _, image in ready])
        try:
            vectors, bad = valid_rows(output, len(ready), encoder.dim)
        except EncoderOutputInvalid as exc:  # unusable as a whole: every item of the batch
            for item, _ in ready:
                item.error = IngestError(exc.reason, f"{encoder.model_id}: {exc}")
            return
        for row, (item, _) in enumerate(ready):
            if row in bad:
                message = f"encoder {encoder.model_id} returned an invalid vector: {bad[row]}"
                item.error = IngestError(EncoderOutputInvalid.reason, message)
            else:
                item.vector = vectors[row]


def available_processors() -> list[str]:
    """Names of the installed processor plugins (nothing is imported)."""
    return plugins.installed(ENTRY_POINT_GROUP)


def load_processor(name: str) -> type[Processor]:
    """The processor class behind entry point ``name``; ``PluginError`` if missing or broken."""
    loaded = plugins.load(ENTRY_POINT_GROUP, name)
    if not (isinstance(loaded, type) and issubclass(loaded, Processor)):
        raise plugins.broken(ENTRY_POINT_GROUP, name, f"{loaded!r} is not a Processor subclass")
    return loaded


def load_chain(names: Sequence[str]) -> list[type[Processor]]:
    """The processor classes named, in order, checked as a chain (imports them, builds none).

    Raises ``PluginError`` naming every missing or broken processor, or a field clash.
    """
    if "embed_image" not in names:
        raise plugins.PluginError(
            "the processor chain (VITRINE_PROCESSORS) must contain embed_image"
        )
    classes, problems = [], []
    for name in names:
        try:
            classes.append(load_processor(name))
        except plugins.PluginError as exc:
            problems.append(str(exc))
    if problems:
        raise plugins.PluginError("; ".join(problems))
    declared_fields(classes)
    return classes


class ProcessorChain:
    """The configured processors, in order; only these are imported."""

    def __init__(self, names: Sequence[str], context: ProcessorContext):
        classes = load_chain(names)
        self.field_mappings = declared_fields(classes)
        self.context = context
        self.processors = [cls(context) for cls in classes]
        self._sized = False

    def decode_size(self) -> DecodeSize | None:
        """What the chain needs of an image: the largest need, None if one wants it all."""
        need = DecodeSize()
        for processor in self.processors:
            size = processor.decode_size()
            if size is None:
                return None
            need = need.merge(size)
        return need

    def run(self, items: Sequence[IngestItem]) -> None:
        if not self._sized:  # on first use: the encoder's input size needs the model loaded
            self.context.decode_size = self.decode_size()
            self._sized = True
        for processor in self.processors:
            with stage(processor.name, len(items)):
                processor.process_batch(items)
        for item in items:
            undeclared = sorted(set(item.extra) - set(self.field_mappings))
            if item.ok and undeclared:
                item.error = IngestError(
                    "processor_output_invalid",
                    f"field(s) {', '.join(undeclared)} written but declared by no processor",
                )
            elif item.ok and item.vector is None:
                item.error = IngestError("not_embedded", "no processor produced a vector")


def declared_fields(classes: Sequence[type[Processor]]) -> dict[str, dict[str, Any]]:
    """The processors' field mappings; a name clashing with Vitrine's or another's is refused."""
    core = mappings.products_index_template("-")["template"]["mappings"]["properties"]
    owners: dict[str, str] = {}
    declared: dict[str, dict[str, Any]] = {}
    for cls in classes:
        for name, spec in cls.fields.items():
            owner = "Vitrine" if name in core or name == "image_vector" else owners.get(name)
            if owner and owner != cls.name:
                raise plugins.broken(
                    ENTRY_POINT_GROUP, cls.name, f"it declares field {name!r}, owned by {owner}"
                )
            owners[name] = cls.name
            declared[name] = dict(spec)
    return declared
