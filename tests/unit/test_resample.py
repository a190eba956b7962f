"""pipeline.resample against Pillow itself: a pass alone is Pillow's to the bit, and two passes
are Pillow's across-pass followed by its down-pass (Pillow 13 may pick the other order inside
one ``resize`` call, so that is what the fingerprint's arithmetic is pinned to)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from pipeline.resample import resize_regions

FILTERS = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}


def _cases(seed: int, count: int) -> list[tuple[np.ndarray, tuple[float, ...], tuple[int, int]]]:
    """Random images (noise and smooth gradients, grey and RGB), boxes and output sizes, up-
    and downscaling."""
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        w, h = rng.randint(1, 160), rng.randint(1, 160)
        shape = (h, w, 3) if i % 2 else (h, w)
        if i % 3:
            pixels = gen.integers(0, 256, shape, dtype=np.uint8)
        else:
            ramp = np.add.outer(np.arange(h), np.arange(w)) * 255 / max(1, w + h - 2)
            pixels = np.broadcast_to(ramp[..., None] if i % 2 else ramp, shape).astype(np.uint8)
        x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        box = (x0, y0, rng.uniform(x0 + 0.05, w), rng.uniform(y0 + 0.05, h))
        cases.append((pixels, box, (rng.randint(1, 40), rng.randint(1, 40))))
    return cases


@pytest.mark.parametrize("kind", sorted(FILTERS))
def test_one_pass_is_pillows_to_the_bit(kind):
    for pixels, (x0, _, x1, _), (out_w, _) in _cases(1, 120):
        h = pixels.shape[0]
        box = (x0, 0.0, x1, float(h))  # full height: Pillow runs the across-pass only
        ours = resize_regions(pixels, [box], (out_w, h), kind)[0]
        theirs = np.asarray(Image.fromarray(pixels).resize((out_w, h), FILTERS[kind], box=box))
        assert np.array_equal(ours, theirs), (pixels.shape, box, out_w)


@pytest.mark.parametrize("kind", sorted(FILTERS))
def test_two_passes_are_pillows_across_then_down(kind):
    for pixels, (x0, y0, x1, y1), size in _cases(2, 120):
        h = pixels.shape[0]
        across = Image.fromarray(pixels).resize(
            (size[0], h), FILTERS[kind], box=(x0, 0.0, x1, float(h))
        )
        theirs = np.asarray(across.resize(size, FILTERS[kind], box=(0.0, y0, size[0], y1)))
        ours = resize_regions(pixels, [(x0, y0, x1, y1)], size, kind)[0]
        assert np.array_equal(ours, theirs), (pixels.shape, (x0, y0, x1, y1), size)


def test_many_boxes_in_one_call_are_each_box_alone():
    pixels = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    boxes = [(0.0, 0.0, 128.0, 96.0), (2.56, 0.0, 125.44, 92.16), (2.56, 3.84, 125.44, 96.0)]
    together = resize_regions(pixels, boxes, (8, 8), "box")
    assert together.shape == (3, 8, 8, 3)
    for box, region in zip(boxes, together, strict=True):
        assert np.array_equal(region, resize_regions(pixels, [box], (8, 8), "box")[0])
