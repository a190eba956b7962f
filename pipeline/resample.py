"""Pillow's resampling of 8-bit images as matrix products: many boxes of one image resized
in a few products instead of one ``Image.resize`` call each.

A fingerprint resizes 35 regions of one small copy twice (hash input and colour thumbnail):
70 ``Image.resize(size, filter, box=...)`` calls, 5-7 ms an image. Pillow resizes in two
passes, across then down, each a weighted sum in 22-bit fixed point rounded and clipped to
8 bits (``src/libImaging/Resample.c``). Each pass is a matrix of those integer weights here;
with 8-bit pixels every product and sum is an integer below 2**53, so float64 products are
exact: one pass is Pillow's to the bit, and two are Pillow's across-pass then its down-pass
(unit tests hold both). Pillow 13 sometimes runs the down-pass first inside one call, which
moves pixels of random noise by up to 43 levels; on the ingest benchmark's photos and the
tests' patterns the fingerprints came out bit for bit those of ``Image.resize``, and they no
longer depend on Pillow's choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_PRECISION_BITS = 32 - 8 - 2
_ONE = float(1 << _PRECISION_BITS)
_HALF = float(1 << (_PRECISION_BITS - 1))


def _sinc(x: np.ndarray) -> np.ndarray:
    y = x * math.pi
    return np.divide(np.sin(y), y, out=np.ones_like(y), where=x != 0.0)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


#: Pillow's filters this module reproduces: (kernel, support).
FILTERS = {"lanczos": (_lanczos, 3.0), "box": (_box, 0.5)}


@lru_cache(maxsize=32)  # a few image sizes: each entry is 9 extents' matrices, ~0.3 MB
def weights(
    in_size: int, extents: tuple[tuple[float, float], ...], out_size: int, kind: str
) -> np.ndarray:
    """The ``(len(extents), out_size, in_size)`` matrices (read-only) of one pass over each
    ``[lo, hi)`` of an axis of ``in_size`` pixels: Pillow's ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` (box edges in single precision, as Pillow takes them), integers
    scaled by 2**22, zero outside each output pixel's support. All extents at once (about a
    millisecond for the fingerprint's nine), since every new image size needs its own."""
    kernel, support = FILTERS[kind]
    bounds = np.array(extents, dtype=np.float32)
    lo = bounds[:, :1].astype(np.float64)
    scale = (bounds[:, 1:] - bounds[:, :1]).astype(np.float64) / out_size  # float32 difference
    filterscale = np.maximum(scale, 1.0)
    reach = support * filterscale
    center = lo + (np.arange(out_size) + 0.5) * scale  # (extents, out_size)
    first = np.maximum((center - reach + 0.5).astype(np.int64), 0)  # C's (int): truncates
    last = np.minimum((center + reach + 0.5).astype(np.int64), in_size)
    x: np.ndarray = first[..., None] + np.arange(int(np.ceil(reach.max())) * 2 + 1)  # taps
    inside = x < last[..., None]
    offsets = (x - center[..., None] + 0.5) * (1.0 / filterscale)[..., None]
    taps = np.where(inside, kernel(offsets), 0.0)
    total = taps.sum(axis=-1, keepdims=True)
    k = np.divide(taps, total, out=taps.copy(), where=total != 0.0)
    fixed = np.trunc(k * _ONE + np.where(k >= 0, 0.5, -0.5))
    matrix = np.zeros((len(extents), out_size, in_size))
    extent, out, tap = np.nonzero(inside)
    matrix[extent, out, x[extent, out, tap]] = fixed[extent, out, tap]
    matrix.setflags(write=False)
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
    across_extents = tuple(dict.fromkeys((x0, x1) for x0, _, x1, _ in boxes))
    down_extents = tuple(dict.fromkeys((y0, y1) for _, y0, _, y1 in boxes))
    across = weights(width, across_extents, out_w, kind).reshape(-1, width)
    rows = _to_8bit(planes @ across.T).reshape(len(planes), height, -1, out_w)
    which = [across_extents.index((x0, x1)) for x0, _, x1, _ in boxes]
    down = weights(height, down_extents, out_h, kind)
    down = down[[down_extents.index((y0, y1)) for _, y0, _, y1 in boxes]]
    regions = _to_8bit(down[:, None] @ rows[:, :, which].transpose(2, 0, 1, 3))
    stacked = np.moveaxis(regions, 1, -1).astype(np.uint8)  # (boxes, height, width, bands)
    return stacked if pixels.ndim == 3 else stacked[..., 0]
