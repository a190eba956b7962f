"""Text read from the image (``image_text``, searched by keyword and hybrid text queries) and
its boxes (for the ``text_overlay`` quality flag), with RapidOCR: PP-OCR models in ONNX that
ship inside the ``rapidocr-onnxruntime`` wheel, so nothing is downloaded at run time.

Off by default: on these 2-core machines it costs far more than the embedding itself (see
``bench/bench_quality.py``). Install the ``ocr`` extra and add ``ocr`` before
``image_quality`` in ``VITRINE_PROCESSORS``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import numpy as np

from pipeline.ingest.processors import IngestItem, Processor, ProcessorContext, TextBox
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

WORD_CHARACTER = re.compile(r"\w")
_engines: dict[tuple[int, int], Any] = {}
_lock = threading.Lock()


def ocr_engine(settings: VitrineSettings) -> Any:
    """The process's RapidOCR engine (loaded once per configuration)."""
    key = (settings.ocr_max_side, settings.torch_threads or -1)
    with _lock:
        if key not in _engines:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise RuntimeError(
                    "the ocr processor needs rapidocr-onnxruntime: pip install 'vitrine[ocr]'"
                ) from exc
            _engines[key] = RapidOCR(
                det_limit_side_len=settings.ocr_max_side,
                det_limit_type="max",
                intra_op_num_threads=key[1],
                use_cls=False,
            )
            log.info("loaded RapidOCR (PP-OCR, onnxruntime), det side %d", settings.ocr_max_side)
        return _engines[key]


def read_text(engine: Any, image: np.ndarray, *, min_score: float) -> list[TextBox]:
    """Text lines found in an RGB array, in reading order, each with its box and score."""
    result, _ = engine(image[:, :, ::-1].copy(), text_score=min_score)  # RapidOCR takes BGR
    return [
        TextBox(text=str(text).strip(), score=float(score), points=np.asarray(box).tolist())
        for box, text, score in result or []
        if len(WORD_CHARACTER.findall(str(text))) >= 2  # lone marks are edges misread as text
    ]


class Ocr(Processor):
    """Read text lines into ``image_text``; keep their boxes for ``image_quality``."""

    name = "ocr"
    writes = ("image_text",)

    def __init__(self, context: ProcessorContext):
        super().__init__(context)
        self.engine = ocr_engine(context.settings)

    def process(self, item: IngestItem) -> None:
        assert item.image is not None, "ocr must run after decode_image"
        pixels = np.asarray(item.image.image.convert("RGB"))
        item.text_boxes = read_text(
            self.engine, pixels, min_score=self.context.settings.ocr_min_score
        )
        item.image_text = " ".join(box.text for box in item.text_boxes) or None
