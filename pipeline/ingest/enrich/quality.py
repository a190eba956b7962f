"""Image quality flags (``quality_flags``), from cheap measures on a small grey-scale copy.

Flags: ``low_resolution``, ``extreme_aspect_ratio``, ``blank`` (near-uniform), ``blurry``,
``too_dark``, ``overexposed`` and, when the ``ocr`` processor ran before, ``text_overlay``
(area of the text boxes). A blank image gets no blur, exposure or text flags: they mean
nothing without content. Thresholds are settings (``VITRINE_QUALITY_*``, ``min_image_side``).

Blur is measured scale-normalised (on a copy whose long side is ``WORK_SIDE``) as the share of
gradient energy that survives one more Gaussian blur (sigma 1): near 0.4 for sharp photos,
towards 1 as the image is already blurred. The plain variance of the Laplacian was tried
first and rejected: it depends on contrast and content and, measured on photos blurred at
growing radii, rises again at heavy blur, where 8-bit quantisation noise dominates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from pipeline.images import DecodeSize
from pipeline.ingest.processors import IngestItem, Processor, ProcessorContext
from pipeline.settings import VitrineSettings

WORK_SIDE = 256  # blur is measured at this long side
TONE_SIDE = 64  # content and exposure need no detail: a smaller copy is faster
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BLANK_DELTA = 0.02  # a pixel this far from its smooth surroundings is content
BACKGROUND_SIGMA = 2.0  # smooth surroundings: gentle gradients are not content
WASHED_OUT_CHROMA = 0.3  # overexposed images have lost their colours too

LOW_RESOLUTION = "low_resolution"
EXTREME_ASPECT = "extreme_aspect_ratio"
BLANK = "blank"
BLURRY = "blurry"
TOO_DARK = "too_dark"
OVEREXPOSED = "overexposed"
TEXT_OVERLAY = "text_overlay"


@dataclass(frozen=True)
class QualityThresholds:
    min_side: int
    max_aspect_ratio: float
    blank_max_content: float
    blur_min_ratio: float
    dark_max: float
    bright_min: float
    text_min_area: float

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> QualityThresholds:
        return cls(
            min_side=settings.min_image_side,
            max_aspect_ratio=settings.quality_max_aspect_ratio,
            blank_max_content=settings.quality_blank_max_content,
            blur_min_ratio=settings.quality_blur_min_ratio,
            dark_max=settings.quality_dark_max,
            bright_min=settings.quality_bright_min,
            text_min_area=settings.quality_text_min_area,
        )


@dataclass(frozen=True)
class QualityMeasures:
    width: int
    height: int
    content: float  # share of pixels that stand out from their smooth surroundings
    blur: float  # gradient energy kept after re-blurring: ~0.4 sharp .. 1 flat
    dark_end: float  # 5th percentile of the luminance, 0..1
    bright_end: float  # 95th percentile of the luminance, 0..1
    chroma: float  # 95th percentile of max - min channel, 0..1
    text_area: float  # share of the image covered by text boxes

    @property
    def aspect_ratio(self) -> float:
        return max(self.width, self.height) / max(1, min(self.width, self.height))


def _shrink(image: Image.Image, side: int) -> Image.Image:
    """The image with its long side at most ``side`` (area-averaged)."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def _gradient_energy(grey: np.ndarray) -> float:
    gy, gx = np.gradient(grey)
    return float(np.mean(gx * gx + gy * gy))


def blur_ratio(grey: np.ndarray) -> float:
    """Share of gradient energy left after a Gaussian blur of sigma 1 (1.0 for a flat image)."""
    energy = _gradient_energy(grey)
    if energy < 1e-12:
        return 1.0
    return min(1.0, _gradient_energy(gaussian_filter(grey, 1.0)) / energy)


def text_area(boxes: Sequence[Sequence[Sequence[float]]], width: int, height: int) -> float:
    """Summed area of text quadrilaterals (shoelace), as a share of the image (at most 1)."""
    total = 0.0
    for box in boxes:
        points = np.asarray(box, dtype=np.float64)
        x, y = points[:, 0], points[:, 1]
        total += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return min(1.0, total / max(1, width * height))


def measure(
    image: Image.Image, text_boxes: Sequence = (), *, size: tuple[int, int] | None = None
) -> QualityMeasures:
    """Measures of ``image``; ``size`` is the original's when ``image`` was decoded smaller."""
    width, height = size or image.size
    work = _shrink(image.convert("RGB"), WORK_SIDE)
    grey = (np.asarray(work, dtype=np.float32) / 255.0) @ LUMA
    tones = np.asarray(_shrink(work, TONE_SIDE), dtype=np.float32) / 255.0
    background = gaussian_filter(tones, sigma=(BACKGROUND_SIGMA, BACKGROUND_SIGMA, 0))
    dark_end, bright_end = np.percentile(tones @ LUMA, [5, 95])
    return QualityMeasures(
        width=width,
        height=height,
        content=float(np.mean(np.abs(tones - background).max(axis=2) > BLANK_DELTA)),
        blur=blur_ratio(grey),
        dark_end=float(dark_end),
        bright_end=float(bright_end),
        chroma=float(np.percentile(tones.max(axis=2) - tones.min(axis=2), 95)),
        text_area=text_area(text_boxes, image.width, image.height),
    )


def quality_flags(m: QualityMeasures, t: QualityThresholds) -> list[str]:
    flags = []
    if min(m.width, m.height) < t.min_side:
        flags.append(LOW_RESOLUTION)
    if m.aspect_ratio > t.max_aspect_ratio:
        flags.append(EXTREME_ASPECT)
    if m.content < t.blank_max_content:
        return [*flags, BLANK]
    if m.blur > t.blur_min_ratio:
        flags.append(BLURRY)
    if m.bright_end < t.dark_max:
        flags.append(TOO_DARK)
    if m.dark_end > t.bright_min and m.chroma < WASHED_OUT_CHROMA:
        flags.append(OVEREXPOSED)
    if m.text_area >= t.text_min_area:
        flags.append(TEXT_OVERLAY)
    return flags


class ImageQuality(Processor):
    """Flag images that are small, oddly shaped, blank, blurred, badly exposed or covered in
    text (``text_overlay`` needs ``ocr`` earlier in the chain)."""

    name = "image_quality"
    writes = ("quality_flags",)

    def decode_size(self) -> DecodeSize:
        return DecodeSize(long=WORK_SIDE)  # blur is measured there; the size comes from the header

    def __init__(self, context: ProcessorContext):
        super().__init__(context)
        self.thresholds = QualityThresholds.from_settings(context.settings)

    def process(self, item: IngestItem) -> None:
        assert item.image is not None, "image_quality must run after decode_image"
        boxes = [box.points for box in item.text_boxes]
        measures = measure(item.image.image, boxes, size=(item.image.width, item.image.height))
        item.quality_flags.extend(quality_flags(measures, self.thresholds))
