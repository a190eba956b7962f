"""``visual_cluster``: the nearest stored centroid of ``vitrine cluster`` for each new image
vector, so that documents ingested after a clustering run carry ``visual_cluster`` and
``visual_cluster_name`` too. Runs after ``embed_image``.

The centroids are read once and re-read every ``cluster_refresh_s`` seconds (one small GET),
so a batch costs one (batch, d) x (d, k) product. Until the catalogue has been clustered for the
encoder's model, or while Elasticsearch cannot be read, the fields stay empty and the product is
indexed anyway: a cluster is a convenience, never a reason to fail an ingest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
from elasticsearch import ApiError, Elasticsearch, TransportError

from pipeline.es.client import make_client
from pipeline.images import DecodeSize
from pipeline.ingest.clustering import ClusterModel, load_model
from pipeline.ingest.processors import IngestItem, Processor, ProcessorContext

log = logging.getLogger(__name__)


class VisualCluster(Processor):
    name = "visual_cluster"
    writes = ("visual_cluster", "visual_cluster_name")

    def decode_size(self) -> DecodeSize:
        return DecodeSize()  # reads the vector, not the pixels

    def __init__(self, context: ProcessorContext):
        super().__init__(context)
        self._es: Elasticsearch | None = None
        self._model: ClusterModel | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def centroids(self, model_id: str) -> ClusterModel | None:
        """The stored centroids of ``model_id``, re-read when older than the refresh period."""
        settings = self.context.settings
        with self._lock:
            if time.monotonic() - self._read_at >= settings.cluster_refresh_s:
                self._read_at = time.monotonic()
                try:
                    self._es = self._es or make_client(settings)
                    self._model = load_model(self._es, settings.index_alias, model_id)
                except (ApiError, TransportError) as exc:
                    log.warning("visual clusters not refreshed (kept the last ones): %s", exc)
            return self._model

    def process_batch(self, items: Sequence[IngestItem]) -> None:
        ready = [item for item in items if item.ok and item.vector is not None]
        if not ready:
            return
        model = self.centroids(self.context.encoder.model_id)
        if model is None or model.model_id != self.context.encoder.model_id:
            return
        rows = model.nearest(np.stack([item.vector for item in ready if item.vector is not None]))
        for item, row in zip(ready, rows, strict=True):
            fields = model.fields(int(row))
            item.visual_cluster = fields["visual_cluster"]
            item.visual_cluster_name = fields["visual_cluster_name"]
