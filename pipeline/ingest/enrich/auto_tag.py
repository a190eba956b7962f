"""Zero-shot categories and attributes from the image vector (``auto_category``, ``auto_tags``
and their scores) and the ``category_mismatch`` flag. Runs after ``embed_image``.

The merchant's ``category`` and ``tags`` are never touched: automatic values live in their own
fields. Skipped, with one warning per process, when the encoder has no text tower (label
vectors cannot be made) or random weights (tags would be noise; ``auto_tag_on_random_weights``
allows it for mechanics tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pipeline.images import DecodeSize
from pipeline.ingest.enrich.tagging import (
    LabelVectors,
    category_mismatch,
    label_vectors,
    tag_vector,
)
from pipeline.ingest.enrich.taxonomy import load_taxonomy
from pipeline.ingest.processors import IngestItem, Processor, ProcessorContext

log = logging.getLogger(__name__)

CATEGORY_MISMATCH = "category_mismatch"


class AutoTag(Processor):
    name = "auto_tag"
    writes = ("auto_category", "auto_category_score", "auto_tags", "auto_tag_scores")

    def decode_size(self) -> DecodeSize:
        return DecodeSize()  # works on the vector, never on pixels

    def __init__(self, context: ProcessorContext):
        super().__init__(context)
        self.taxonomy = load_taxonomy(context.settings.taxonomy_path)
        self._vectors: LabelVectors | None = None
        self._skipped = False
        self._lock = threading.Lock()  # jobs in threads: one computes, the others wait

    def label_vectors(self) -> LabelVectors | None:
        """The label vectors, computed on first use; None (logged once) when tagging is off."""
        if self._vectors is not None or self._skipped:
            return self._vectors
        with self._lock:
            if self._vectors is None and not self._skipped:
                self._load_label_vectors()
        return self._vectors

    def _load_label_vectors(self) -> None:
        settings, encoder = self.context.settings, self.context.encoder
        reason = None
        if not encoder.supports_text:
            reason = "it embeds images only (no text tower), so labels cannot be embedded"
        elif not encoder.semantic and not settings.auto_tag_on_random_weights:
            reason = "its weights are random, so zero-shot tags would be noise"
        else:
            self._vectors = label_vectors(encoder, self.taxonomy, settings.home / "labels")
        if reason:
            self._skipped = True
            log.warning("auto_tag skipped for encoder %s: %s", encoder.model_id, reason)

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        ready = [item for item in items if item.ok and item.vector is not None]
        vectors = self.label_vectors() if ready else None
        if vectors is None:
            return
        max_score = self.context.settings.category_mismatch_max_score
        for item in ready:
            assert item.vector is not None
            tagging = tag_vector(item.vector, self.taxonomy, vectors)
            item.auto_category, item.auto_category_score = tagging.category, tagging.category_score
            item.auto_tags = list(tagging.tags)
            item.auto_tag_scores = dict(tagging.tags)
            if category_mismatch(
                tagging, self.taxonomy, item.product.category, max_score=max_score
            ):
                item.quality_flags.append(CATEGORY_MISMATCH)
