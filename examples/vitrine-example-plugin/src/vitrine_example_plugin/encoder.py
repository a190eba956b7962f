"""``example_histogram``: an image-only encoder, a normalised joint RGB colour histogram.

Fast and deterministic, with no model file: it finds images of similar colours. Its option
``bins`` (per channel, ``VITRINE_ENCODER_OPTIONS='{"bins": 4}'``) sets ``dim = bins**3``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline.encoders import IMAGE, Encoder, EncoderError, l2_normalise
from pipeline.settings import VitrineSettings


class ColourHistogramEncoder(Encoder):
    capabilities = frozenset({IMAGE})  # no text tower: text searches use keywords

    def __init__(self, bins: int):
        if not 2 <= bins <= 16:
            raise EncoderError(f"example_histogram: bins must be 2..16, not {bins}")
        self.bins = bins
        self.dim = bins**3
        # everything that changes the vectors, and the dimension: it names the index
        self.model_id = f"example:colour-histogram:bins{bins}:{self.dim}"

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> ColourHistogramEncoder:
        return cls(int(settings.encoder_options.get("bins", 4)))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for row, image in enumerate(images):  # stateless: safe from several threads
            pixels = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int64)
            q = pixels * self.bins // 256
            codes = (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]
            out[row] = np.sqrt(np.bincount(codes.ravel(), minlength=self.dim))
        return l2_normalise(out)
