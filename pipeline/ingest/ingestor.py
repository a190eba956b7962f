"""From products to indexed documents: run the processor chain over a batch, write the
documents of every product whose images all made it, and report per product."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from elasticsearch import Elasticsearch

from pipeline.documents import Product, build_document, document_id
from pipeline.encoders import Encoder, LazyEncoder, load_factory
from pipeline.encoders.batching import ImageBatcher
from pipeline.es import aliases, indexing
from pipeline.es.client import is_transient_es_error, make_client
from pipeline.ingest.duplicates import DuplicateMatcher
from pipeline.ingest.processors import IngestItem, ProcessorChain, ProcessorContext, load_chain
from pipeline.journal import ErrorSpool
from pipeline.profile import StageProfile, active, record, stage
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

INDEXED = "indexed"
FAILED = "failed"


@dataclass
class ProductResult:
    """What happened to one product; JSON-serialisable for the job result."""

    merchant_id: str
    product_id: str
    status: str
    documents: list[str] = field(default_factory=list)
    reason: str | None = None
    message: str | None = None
    transient: bool = False
    image: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_plugins(settings: VitrineSettings) -> None:
    """Import the configured processors and encoder plugin without building them, so that a
    worker refuses to start with one line naming a missing or broken plugin (``PluginError``,
    ``EncoderError``) instead of failing in every pool process."""
    load_chain(settings.processors)
    load_factory(settings.encoder)


def model_mismatch(
    products: Sequence[Product], exc: indexing.IndexModelMismatch
) -> list[ProductResult]:
    """Every product of a batch that no write target of this worker's model can take. Transient:
    right after a re-embed's swap, workers still running the old model retry (and the
    reconciler resends) until workers with the new model take over; past the retry budget the
    failure is recorded like any other."""
    return [
        ProductResult(
            p.merchant_id,
            p.product_id,
            FAILED,
            reason="model_mismatch",
            message=str(exc),
            transient=True,
        )
        for p in products
    ]


class Ingestor:
    """Everything one process needs to index products; built once per worker process."""

    def __init__(
        self,
        settings: VitrineSettings,
        *,
        es: Elasticsearch | None = None,
        encoder: Encoder | None = None,
        batch_across_jobs: bool = False,
    ):
        """``batch_across_jobs``: jobs run in threads of this process (a threads pool) and
        share forward passes (``pipeline.encoders.batching``)."""
        self.settings = settings
        self.es = es or make_client(settings)
        self.encoder = LazyEncoder(settings, encoder)
        self.batcher = (
            ImageBatcher(
                self.encoder,
                batch_size=settings.batch_size,
                max_wait_s=settings.embed_batch_wait_ms / 1000,
            )
            if batch_across_jobs
            else None
        )
        context = ProcessorContext(settings, self.encoder, batcher=self.batcher)
        self.chain = ProcessorChain(settings.processors, context)
        self.duplicates = (
            DuplicateMatcher(settings, self.es) if settings.duplicate_matching else None
        )
        self._index_ready = False
        self.spool = ErrorSpool(settings.journal_root)
        #: Where this process's ingest time went, since it started (see ``pipeline.profile``).
        self.profile = StageProfile()
        self._profile_logged = time.monotonic()

    def load_model(self) -> None:
        """Load the encoder now rather than on the first job."""
        self.encoder()

    def ensure_index(self) -> None:
        if not self._index_ready:
            encoder = self.encoder()
            indexing.ensure_indices(
                self.es,
                self.settings,
                encoder.model_id,
                encoder.dim,
                self.chain.field_mappings,
            )
            self._index_ready = True

    def write_indices(self) -> list[str]:
        """The write targets that hold this model's vectors, resolved for every batch: a
        re-embed adds its new index, and the swap removes the old one, while workers run."""
        targets = aliases.write_targets(self.es, self.settings.index_alias)
        return indexing.model_targets(self.settings.index_alias, targets, self.encoder().model_id)

    def ingest(
        self,
        products: Sequence[Product],
        *,
        refresh: bool | None = None,
        queue_wait_s: float = 0.0,
    ) -> list[ProductResult]:
        """Embed and index products; a bad image fails only its own product.

        ``refresh`` (default: the ``ingest_refresh`` setting) makes the documents searchable
        on return; ``queue_wait_s`` is how long the products waited in the queue (profiled)."""
        batch = StageProfile(batches=1, products=len(products))
        try:
            with active(batch):
                record("queue_wait", queue_wait_s, len(products))
                return self._ingest(
                    products, self.settings.ingest_refresh if refresh is None else refresh
                )
        finally:
            self._log_profile(batch)

    def _log_profile(self, batch: StageProfile) -> None:
        self.profile.merge(batch)
        log.debug("ingest batch profile: %s", batch.to_json())
        now = time.monotonic()
        if now - self._profile_logged >= self.settings.profile_log_interval_s:
            self._profile_logged = now
            self.log_profile()

    def log_profile(self) -> None:
        """Log this process's cumulative profile: a summary and the JSON (benchmarks read it)."""
        if self.profile.batches:
            log.info("ingest profile: %s", self.profile.summary())
            log.info("ingest profile json: %s", self.profile.to_json())

    def _ingest(self, products: Sequence[Product], refresh: bool) -> list[ProductResult]:
        try:
            self.ensure_index()
        except indexing.IndexModelMismatch as exc:
            return model_mismatch(products, exc)
        items = [IngestItem(p, i) for p in products for i in range(len(p.images))]
        self.chain.run(items)
        try:  # per batch: a re-embed adds an index, and a swap removes one, while we run
            indices = self.write_indices()
        except indexing.IndexModelMismatch as exc:
            return model_mismatch(products, exc)
        if self.duplicates:
            with stage("duplicate_match", len(items)):
                self.duplicates.assign(items, indices)  # one msearch for the whole batch
        now = datetime.now(UTC)
        results: dict[tuple[str, str], ProductResult] = {}
        documents: dict[tuple[str, str], list[tuple[str, dict]]] = {}
        for item in items:
            key = (item.product.merchant_id, item.product.product_id)
            result = results.setdefault(key, ProductResult(*key, status=INDEXED))
            if result.status == FAILED:
                continue
            if item.error is not None:
                result.status, result.image = FAILED, item.source
                result.reason, result.message = item.error.reason, item.error.message
                result.transient = item.error.transient
                documents.pop(key, None)
                continue
            assert item.image is not None and item.vector is not None
            doc_id = document_id(*key, item.image.sha256)
            documents.setdefault(key, []).append(
                (
                    doc_id,
                    build_document(
                        item.product,
                        image_index=item.image_index,
                        image_sha256=item.image.sha256,
                        width=item.image.width,
                        height=item.image.height,
                        vector=item.vector,
                        model_id=self.encoder().model_id,
                        quality_flags=item.quality_flags,
                        auto_tags=item.auto_tags,
                        indexed_at=now,
                        extra=item.extra,
                        auto_category=item.auto_category,
                        auto_category_score=item.auto_category_score,
                        auto_tag_scores=item.auto_tag_scores,
                        image_text=item.image_text,
                        phash=item.phash,
                        fingerprint=item.fingerprint,
                        phash_bands=item.phash_bands,
                        visual_cluster=item.visual_cluster,
                        visual_cluster_name=item.visual_cluster_name,
                        duplicate_group=item.duplicate_group,
                    ),
                )
            )
        if documents:
            outcome = indexing.replace_products(
                self.es, self.settings, documents, indices, refresh=refresh
            )
            for key, docs in documents.items():
                rejected = [outcome.failed[d] for d, _ in docs if d in outcome.failed]
                result = results[key]
                if rejected:
                    result.status, result.reason, result.message = (
                        FAILED,
                        "index_rejected",
                        rejected[0],
                    )
                else:
                    result.documents = [doc_id for doc_id, _ in docs]
        for result in results.values():
            if result.status == INDEXED:
                log.info(
                    "indexed product %s/%s (%d image documents, model %s)",
                    result.merchant_id,
                    result.product_id,
                    len(result.documents),
                    self.encoder().model_id,
                )
        return list(results.values())

    def record_failures(
        self, results: Sequence[ProductResult], *, job_id: str, attempts: int = 1
    ) -> None:
        """Write failed products to the ingest-errors index, or to the error spool while
        Elasticsearch cannot take them (the reconciler writes them later)."""
        model_id = self.encoder().model_id
        for result in results:
            if result.status != FAILED:
                continue
            doc_id, document = indexing.ingest_error(
                job_id=job_id,
                product_id=result.product_id,
                merchant_id=result.merchant_id,
                reason=result.reason or "unknown",
                message=result.message or "",
                image=result.image,
                model_id=model_id,
                attempts=attempts,
            )
            log.warning(
                "product %s/%s failed: %s (%s)",
                result.merchant_id,
                result.product_id,
                result.reason,
                result.message,
            )
            try:
                indexing.write_ingest_error(self.es, self.settings, doc_id, document)
            except Exception as exc:
                if not is_transient_es_error(exc):
                    raise
                self.spool.put(doc_id, document)
                log.warning("Elasticsearch unavailable: error record spooled (%s)", exc)
