"""Batch preprocessing for CLIP image towers: the same tensor as open_clip's eval transform
(short side resized, centre crop, 0..1, normalised), built for the whole batch at once.

open_clip's torchvision transform converts and normalises each image as its own tensor; here
each image is only resized and cropped (Pillow, in C) and the batch is converted and
normalised in one vectorised step. The resize and crop follow torchvision's arithmetic exactly,
so the result equals open_clip's within float rounding (unit-tested against it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize the short side to ``size``, centre-crop ``size`` x ``size``, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Image.Resampling = Image.Resampling.BICUBIC

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ClipPreprocess | None:
        """From an open_clip ``preprocess_cfg``; None for transforms this does not reproduce
        (another resize mode, a non-square input, another interpolation)."""
        size = cfg.get("size")
        side = size if isinstance(size, int) else None
        if isinstance(size, tuple | list) and len(size) == 2 and size[0] == size[1]:
            side = int(size[0])
        resample = _RESAMPLING.get(str(cfg.get("interpolation", "bicubic")))
        if (
            side is None
            or resample is None
            or cfg.get("resize_mode", "shortest") != "shortest"
            or cfg.get("mode", "RGB") != "RGB"
        ):
            return None
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        return cls(side, mean, std, resample)  # type: ignore[arg-type]

    def resize_crop(self, image: Image.Image) -> np.ndarray:
        """``(size, size, 3)`` uint8: torchvision's Resize(size) then CenterCrop(size)."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.size * long / short)  # torchvision truncates
        new_size = (self.size, new_long) if width <= height else (new_long, self.size)
        if new_size != image.size:
            image = image.resize(new_size, self.resample)
        left = int(round((new_size[0] - self.size) / 2.0))
        top = int(round((new_size[1] - self.size) / 2.0))
        return np.asarray(image.crop((left, top, left + self.size, top + self.size)))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(len(images), 3, size, size)`` float32, normalised."""
        pixels = np.stack([self.resize_crop(image) for image in images])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return batch.sub_(mean).div_(std).contiguous()
