"""Pillow's resampling of 8-bit images as matrix products: many boxes of one image resized
in a few products instead of one ``Image.resize`` call each.

A fingerprint resizes 35 regions of one small copy twice (hash input and colour thumbnail):
70 ``Image.resize(size, filter, box=...)`` calls, 5-7 ms an image. Pillow resizes in two
passes, across then down, each a weighted sum in 22-bit fixed point rounded and clipped to
8 bits (``src/libImaging/Resample.c``). Each pass is a matrix of those integer weights here;
with 8-bit pixels every product and sum is an integer below 2**53, so float64 products are
exact: one pass is Pillow's to the bit, and two are Pillow's across-pass then its down-pass
(unit tests hold both). Pillow 13 sometimes runs the down-pass first inside one call, which
moves a few pixels by one level; on the ingest benchmark's photos the fingerprints came out
bit for bit those of ``Image.resize``, and they no longer depend on Pillow's choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_PRECISION_BITS = 32 - 8 - 2
_ONE = float(1 << _PRECISION_BITS)
_HALF = float(1 << (_PRECISION_BITS - 1))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


#: Pillow's filters this module reproduces: (kernel, support).
FILTERS = {"lanczos": (_lanczos, 3.0), "box": (_box, 0.5)}


@lru_cache(maxsize=256)
def weights(in_size: int, lo: float, hi: float, out_size: int, kind: str) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of one pass over ``[lo, hi)`` of an axis of
    ``in_size`` pixels: Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` (box edges
    in single precision, as Pillow takes them), integers scaled by 2**22, zero outside each
    output pixel's support."""
    kernel, support = FILTERS[kind]
    lo32, hi32 = np.float32(lo), np.float32(hi)
    scale = float(np.float32(hi32 - lo32)) / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    step = 1.0 / filterscale
    matrix = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = float(lo32) + (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        taps = [kernel((x - center + 0.5) * step) for x in range(first, last)]
        total = 0.0
        for tap in taps:  # in order, as Pillow adds them (not math.fsum, not 3.12's sum)
            total += tap
        for x, tap in zip(range(first, last), taps, strict=True):
            k = tap / total if total != 0.0 else tap
            matrix[out, x] = math.trunc(k * _ONE + (0.5 if k >= 0 else -0.5))
    return matrix


def _to_8bit(sums: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8``: round the fixed-point sums to 8-bit values (kept as floats)."""
    sums += _HALF
    sums *= 1 / _ONE  # a power of two: exact, and far faster than floor division
    return np.clip(np.floor(sums, out=sums), 0, 255, out=sums)


def resize_regions(
    pixels: np.ndarray,
    boxes: Sequence[tuple[float, float, float, float]],
    size: tuple[int, int],
    kind: str,
) -> np.ndarray:
    """Each box of ``pixels`` resized to ``size`` with Pillow's two passes (see the module
    docstring), as one ``(len(boxes), height, width[, bands])`` uint8 array; ``pixels`` is
    ``(h, w)`` or ``(h, w, bands)`` uint8. Boxes sharing a horizontal extent share its first
    pass; every box's second pass is one batched product."""
    height, width = pixels.shape[:2]
    out_w, out_h = size
    planes = np.moveaxis(pixels.reshape(height, width, -1).astype(np.float64), -1, 0)
    extents = list(dict.fromkeys((x0, x1) for x0, _, x1, _ in boxes))
    across = np.concatenate([weights(width, x0, x1, out_w, kind) for x0, x1 in extents])
    rows = _to_8bit(planes @ across.T).reshape(len(planes), height, len(extents), out_w)
    which = [extents.index((x0, x1)) for x0, _, x1, _ in boxes]
    down = np.stack([weights(height, y0, y1, out_h, kind) for _, y0, _, y1 in boxes])
    regions = _to_8bit(down[:, None] @ rows[:, :, which].transpose(2, 0, 1, 3))
    stacked = np.moveaxis(regions, 1, -1).astype(np.uint8)  # (boxes, height, width, bands)
    return stacked if pixels.ndim == 3 else stacked[..., 0]
