"""A fixed, generated image set for quantisation calibration and runtime agreement checks.

Why generated: no photo set ships with the runtime dependencies, and the check must give the
same answer on every machine. Drawn product-like scenes (flat shapes on light backgrounds) and
photo-like ones (smooth colour fields, texture, clutter) cover both kinds of catalogue image.
Calibration and agreement use disjoint seeds, so the agreement is measured on held-out images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (320, 256)
#: Seeds of the agreement set start here; calibration seeds stay below.
AGREEMENT_SEED = 10_000


def _smooth_field(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A low-frequency colour field with fine noise: the look of a photo's background."""
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(field, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def generated_image(seed: int) -> Image.Image:
    """One deterministic RGB image: product-like for even seeds, photo-like for odd ones."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    if seed % 2 == 0:
        shade = int(rng.integers(215, 250))
        image = Image.new("RGB", SIZE, (shade, shade, shade - int(rng.integers(0, 10))))
    else:
        image = _smooth_field(rng, SIZE)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(5)]
            draw.polygon(points, fill=colour)
    for _ in range(int(rng.integers(0, 4))):  # edges and thin detail
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        ends = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        draw.line(ends, fill=colour, width=int(rng.integers(1, 6)))
    return image.filter(ImageFilter.SMOOTH)


def calibration_images(n: int) -> list[Image.Image]:
    """Images to calibrate static quantisation with."""
    return [generated_image(seed) for seed in range(n)]


def agreement_images(n: int) -> list[Image.Image]:
    """Held-out images on which a runtime's vectors are compared with torch fp32."""
    return [generated_image(AGREEMENT_SEED + seed) for seed in range(n)]
