"""``example_colour``: the dominant colour name and the mean brightness of each image."""

from __future__ import annotations

import numpy as np

from pipeline.ingest.processors import IngestError, IngestItem, Processor

PALETTE = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 200),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (130, 50, 160),
    "brown": (120, 75, 40),
}


class DominantColour(Processor):
    """Writes ``example_colour`` (keyword, filterable) and ``example_brightness`` (0..1)."""

    name = "example_colour"
    fields = {
        "example_colour": {"type": "keyword"},
        "example_brightness": {"type": "float"},
    }

    def __init__(self, context):
        super().__init__(context)  # per process, after fork: load models here, not at import
        self.names = list(PALETTE)
        self.colours = np.array(list(PALETTE.values()), dtype=np.float32)

    def process(self, item: IngestItem) -> None:
        if item.image is None:  # the chain must decode first
            raise IngestError("example_colour_unordered", "example_colour needs decode_image first")
        pixels = np.asarray(item.image.image.convert("RGB").resize((32, 32)), dtype=np.float32)
        pixels = pixels.reshape(-1, 3)
        nearest = np.linalg.norm(pixels[:, None, :] - self.colours[None], axis=2).argmin(axis=1)
        item.extra["example_colour"] = self.names[int(np.bincount(nearest).argmax())]
        item.extra["example_brightness"] = round(float(pixels.mean() / 255.0), 4)
