"""Pluggable encoders: one interface, implementations found through the ``vitrine.encoders``
entry-point group, and one loaded instance per process (workers and the API load it once).

Only the configured plugin is imported (``pipeline.plugins``), so a broken one elsewhere never
matters. Every vector an encoder returns is checked (``check_vectors``) before it is stored or
searched with: a faulty plugin fails loudly with ``encoder_output_invalid``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import ClassVar

import numpy as np
from PIL import Image

from pipeline import metrics, plugins
from pipeline.settings import VitrineSettings

ENTRY_POINT_GROUP = "vitrine.encoders"
IMAGE, TEXT = "image", "text"
#: How far from 1 the L2 norm of a returned vector may be.
UNIT_TOLERANCE = 1e-3


class EncoderError(RuntimeError):
    """The encoder could not be loaded (unknown or broken plugin, weights unavailable, config)."""


class TextNotSupported(EncoderError):
    """The configured encoder embeds images only (``text`` not in its ``capabilities``)."""

    reason = "text_not_supported"


class EncoderOutputInvalid(EncoderError):
    """An encoder returned vectors of the wrong shape, non-finite values or non-unit vectors.

    ``rows`` maps the index of each bad vector to what is wrong with it; it is empty when the
    output as a whole is unusable (wrong shape), which then concerns every input.
    """

    reason = "encoder_output_invalid"

    def __init__(self, message: str, rows: dict[int, str] | None = None):
        super().__init__(message)
        self.rows = rows or {}


class Encoder(ABC):
    """Turns images (and, if it can, texts) into vectors in one shared space.

    The contract for plugin authors (see docs/plugins.md):

    - ``model_id`` MUST identify everything that changes the vectors: implementation,
      architecture, weights (a tag or a content hash) and ``dim``. It names the product index
      (``<alias>.<model_id slug>.<generation>``) and is stored with every vector; two encoders whose
      vectors differ MUST NOT share a ``model_id``.
    - ``dim`` MUST be the length of every vector returned.
    - ``capabilities`` MUST contain ``"image"``, and ``"text"`` only if ``embed_texts`` maps texts
      into the same space as images. An image-only encoder leaves ``embed_texts`` alone: text
      searches then answer ``text_not_supported`` or fall back to keyword search.
    - ``embed_images`` / ``embed_texts`` MUST return a float32 ``(len(inputs), dim)`` array of
      finite, L2-normalised rows (within ``UNIT_TOLERANCE``), in input order. The pipeline checks
      this and fails the affected products with ``encoder_output_invalid`` otherwise.
    - The factory (the entry point, ``(settings) -> Encoder``) runs once per process, after
      fork; it SHOULD load weights there, once, and read its own options from
      ``settings.encoder_options``. It MUST NOT hang on a network it cannot reach: when the
      weights are not available it raises ``EncoderError`` saying what to do. Respect
      ``settings.device`` and ``settings.torch_threads``.
    - ``embed_*`` MAY be called from several threads (the API's thread pool); guard any state
      that is not thread-safe. They SHOULD batch by ``settings.batch_size``.
    - ``semantic`` SHOULD be False for weights that carry no meaning (random initialisation).
    - ``input_side`` MAY give the short side, in pixels, that the model scales every image to
      (224 for ViT-B-32): images are then decoded no larger than needed. None (the default)
      means the encoder gets images at full size.
    """

    model_id: str
    dim: int
    capabilities: ClassVar[frozenset[str]] = frozenset({IMAGE})
    #: False for random-initialised weights: results are mechanics only, not semantics.
    semantic: bool = True
    #: Short side the model resizes images to; None: it needs them at full size.
    input_side: int | None = None

    @property
    def supports_text(self) -> bool:
        return TEXT in self.capabilities

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return an ``(len(images), dim)`` float32 array of unit vectors."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array of unit vectors (text encoders only)."""
        raise TextNotSupported(f"encoder {self.model_id} embeds images only, not text")

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``embed_images``, checked: what the pipeline calls."""
        with metrics.embedding(IMAGE, len(images)):
            vectors = self.embed_images(images)
        return check_vectors(vectors, len(images), self.dim, self.model_id)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``embed_texts``, checked; ``TextNotSupported`` for an image-only encoder."""
        if not self.supports_text:
            raise TextNotSupported(f"encoder {self.model_id} embeds images only, not text")
        with metrics.embedding(TEXT, len(texts)):
            vectors = self.embed_texts(texts)
        return check_vectors(vectors, len(texts), self.dim, self.model_id)


EncoderFactory = Callable[[VitrineSettings], Encoder]


def check_vectors(vectors: object, n: int, dim: int, model_id: str) -> np.ndarray:
    """``vectors`` as float32 if it is an ``(n, dim)`` array of finite unit rows.

    Raises ``EncoderOutputInvalid``: without ``rows`` for a wrong shape or type, with the bad
    rows otherwise (the good rows of the batch are still usable; see ``valid_rows``).
    """
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EncoderOutputInvalid(f"encoder {model_id} returned no array: {exc}") from exc
    if array.shape != (n, dim):
        raise EncoderOutputInvalid(
            f"encoder {model_id} returned shape {array.shape}, expected ({n}, {dim})"
        )
    bad: dict[int, str] = {}
    finite = np.asarray(np.isfinite(array).all(axis=1))
    norms = np.linalg.norm(np.where(np.isfinite(array), array, 0.0), axis=1)
    for row in range(n):
        if not finite[row]:
            bad[row] = "non-finite values"
        elif not math.isclose(float(norms[row]), 1.0, abs_tol=UNIT_TOLERANCE):
            bad[row] = f"L2 norm {float(norms[row]):.4g}, expected 1"
    if bad:
        first, why = next(iter(bad.items()))
        raise EncoderOutputInvalid(
            f"encoder {model_id} returned {len(bad)} invalid vector(s) of {n} (row {first}: {why})",
            rows=bad,
        )
    return array


def valid_rows(vectors: object, n: int, dim: int) -> tuple[np.ndarray, dict[int, str]]:
    """The float32 array and its bad rows; raises ``EncoderOutputInvalid`` only for a bad shape."""
    try:
        return check_vectors(vectors, n, dim, ""), {}
    except EncoderOutputInvalid as exc:
        if not exc.rows:
            raise
        return np.asarray(vectors, dtype=np.float32), exc.rows


def load_factory(name: str) -> EncoderFactory:
    """Import the factory of encoder plugin ``name`` (only that one); ``EncoderError`` if it is
    missing, broken or not callable."""
    try:
        factory = plugins.load(ENTRY_POINT_GROUP, name)
    except plugins.PluginError as exc:
        raise EncoderError(str(exc)) from exc
    if not callable(factory):
        raise EncoderError(str(plugins.broken(ENTRY_POINT_GROUP, name, "it is not callable")))
    return factory


def available_encoders() -> list[str]:
    """Names of the installed encoder plugins (nothing is imported)."""
    return plugins.installed(ENTRY_POINT_GROUP)


def create_encoder(settings: VitrineSettings) -> Encoder:
    """Build a new encoder from the plugin named by ``settings.encoder`` (only that one loads)."""
    name = settings.encoder
    encoder = load_factory(name)(settings)
    problem = _contract_problem(encoder)
    if problem:
        raise EncoderError(str(plugins.broken(ENTRY_POINT_GROUP, name, problem)))
    return encoder


def _contract_problem(encoder: object) -> str | None:
    if not isinstance(encoder, Encoder):
        return f"its factory returned {type(encoder).__name__}, not an Encoder"
    if not isinstance(getattr(encoder, "model_id", None), str) or not encoder.model_id:
        return "model_id is not a non-empty string"
    dim = getattr(encoder, "dim", None)
    if not isinstance(dim, int) or dim < 1:
        return f"dim {dim!r} is not a positive integer"
    if IMAGE not in encoder.capabilities or not encoder.capabilities <= {IMAGE, TEXT}:
        return f"capabilities {sorted(encoder.capabilities)} must include 'image' (and 'text')"
    if encoder.supports_text and type(encoder).embed_texts is Encoder.embed_texts:
        return "it declares 'text' but does not implement embed_texts"
    return None


def cache_key(settings: VitrineSettings) -> tuple[str, ...]:
    """What makes two settings load the same encoder (its options included)."""
    return (
        settings.encoder,
        settings.model_arch,
        settings.model_pretrained,
        settings.device,
        settings.encoder_runtime,
        str(settings.encoder_min_agreement),
        str(settings.allow_random_weights),
        json.dumps(settings.encoder_options, sort_keys=True, default=str),
    )


def prepare(settings: VitrineSettings) -> None:
    """Build what the encoder caches on disk (ONNX Runtime exports) in a child process, before a
    worker forks its pool: pool processes then only load it, well within Celery's start-up
    timeout, and a refused variant stops the worker at once instead of every pool process."""
    if settings.encoder_runtime == "torch":
        return
    context = multiprocessing.get_context("spawn")  # this process stays free of the model
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        pool.submit(_load_and_drop, settings).result()


def _load_and_drop(settings: VitrineSettings) -> None:
    create_encoder(settings)


_cache: dict[tuple[str, ...], Encoder] = {}
_cache_lock = threading.Lock()


def get_encoder(settings: VitrineSettings) -> Encoder:
    """The process-wide encoder for these settings, loaded once (concurrent callers wait)."""
    key = cache_key(settings)
    with _cache_lock:
        if key not in _cache:
            with metrics.MODEL_LOAD_SECONDS.time():
                _cache[key] = create_encoder(settings)
        return _cache[key]


class LazyEncoder:
    """An encoder loaded on first call and then kept: ``encoder`` when given (tests, the demo),
    else the process-wide ``get_encoder(settings)``. Whatever needs the model in a process
    (ingestor, processors, searcher, API) shares one of these instead of loading it itself, so
    commands that never embed (keyword search, ``--help``) never load a model."""

    def __init__(self, settings: VitrineSettings, encoder: Encoder | None = None) -> None:
        self._settings = settings
        self._encoder = encoder

    def __call__(self) -> Encoder:
        if self._encoder is None:
            self._encoder = get_encoder(self._settings)
        return self._encoder


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
