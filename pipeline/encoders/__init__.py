"""Pluggable encoders: one interface, implementations found through the ``vitrine.encoders``
entry-point group, and one loaded instance per process (workers and the API load it once)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

import numpy as np
from PIL import Image

from pipeline.settings import VitrineSettings

ENTRY_POINT_GROUP = "vitrine.encoders"


class EncoderError(RuntimeError):
    """The encoder could not be loaded (unknown plugin, weights unavailable, bad config)."""


class Encoder(ABC):
    """Turns images and texts into L2-normalised float32 vectors in one shared space.

    ``model_id`` identifies architecture, weights and dimensions; it is stored with every
    vector so that only vectors from the same model are ever compared.
    """

    model_id: str
    dim: int
    #: False for random-initialised weights: results are mechanics only, not semantics.
    semantic: bool = True

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return an ``(len(images), dim)`` float32 array of unit vectors."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array of unit vectors."""


EncoderFactory = Callable[[VitrineSettings], Encoder]


def available_encoders() -> dict[str, EncoderFactory]:
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def create_encoder(settings: VitrineSettings) -> Encoder:
    """Build a new encoder from the plugin named by ``settings.encoder``."""
    factories = available_encoders()
    if settings.encoder not in factories:
        raise EncoderError(
            f"unknown encoder {settings.encoder!r}; installed: {', '.join(sorted(factories))}"
        )
    return factories[settings.encoder](settings)


_cache: dict[tuple[str, ...], Encoder] = {}
_cache_lock = threading.Lock()


def get_encoder(settings: VitrineSettings) -> Encoder:
    """The process-wide encoder for these settings, loaded once (concurrent callers wait)."""
    key = (
        settings.encoder,
        settings.model_arch,
        settings.model_pretrained,
        settings.device,
        str(settings.allow_random_weights),
    )
    with _cache_lock:
        if key not in _cache:
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
