"""Writing to Elasticsearch: index set-up behind an alias, bulk writes with bounded retries,
product replacement and deletion, and the ingest-errors record. Bodies come from
``pipeline.es.mappings``; this module is the IO around them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from elasticsearch import AuthorizationException, Elasticsearch
from elasticsearch.helpers import streaming_bulk

from pipeline import metrics
from pipeline.documents import stable_id
from pipeline.es import aliases, mappings
from pipeline.es.client import IndexInfo, write_index_info
from pipeline.profile import stage
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)


class IndexModelMismatch(RuntimeError):
    """The alias's write index holds vectors of another model (re-embed into a new index)."""


class IndexNotReady(RuntimeError):
    """The alias has no index and these credentials may not create one (admin's job)."""


def ensure_indices(
    es: Elasticsearch,
    settings: VitrineSettings,
    model_id: str,
    dims: int,
    extra_fields: dict[str, Any] | None = None,
) -> str:
    """Install templates and create the product index for this model if the alias has none.

    ``extra_fields`` are the mappings of fields that plugin processors write; they are added to
    the indices of this model (new or existing) because their mapping is strict.

    Returns this model's write index. Raises ``IndexModelMismatch`` if no index behind the
    write alias holds this model's vectors: vectors of two models must never share an index.
    Credentials without admin rights (a least-privilege worker) only check the write targets.
    """
    alias = settings.index_alias
    try:
        install_templates(es, settings)
    except AuthorizationException:
        return _checked_write_index(es, alias, model_id)
    if write_index_info(es, alias) is None:
        index = mappings.product_index_name(alias, model_id)
        es.options(ignore_status=400).indices.create(
            index=index,
            **mappings.product_index_body(
                alias,
                model_id,
                dims,
                extra_fields,
                meta={"queue": settings.queue, "encoder": settings.encoder_fields()},
                shards=settings.index_shards,
                replicas=settings.index_replicas,
            ),
        )
        log.info("created index %s behind alias %s for model %s", index, alias, model_id)
        return index
    aliases.ensure_write_alias(es, alias)
    index = _checked_write_index(es, alias, model_id)
    _add_new_fields(es, index, alias, extra_fields or {})
    return index


def install_templates(es: Elasticsearch, settings: VitrineSettings) -> None:
    """Index templates (products, ingest errors), the errors index and the search templates."""
    alias = settings.index_alias
    es.indices.put_index_template(
        name=mappings.product_template_name(alias), **mappings.products_index_template(alias)
    )
    es.indices.put_index_template(
        name=settings.errors_index, **mappings.errors_index_template(settings.errors_index)
    )
    if not es.indices.exists(index=settings.errors_index):
        es.options(ignore_status=400).indices.create(index=settings.errors_index)
    install_search_templates(es, settings)


def _checked_write_index(es: Elasticsearch, alias: str, model_id: str) -> str:
    targets = aliases.write_targets(es, alias)
    if not targets:
        raise IndexNotReady(
            f"alias {alias} has no index and these Elasticsearch credentials may not create "
            "one; run `vitrine init-index` with admin credentials first"
        )
    return model_targets(alias, targets, model_id)[0]


def model_targets(alias: str, targets: list[IndexInfo], model_id: str) -> list[str]:
    """The write targets that hold ``model_id``'s vectors: where this process may write."""
    mine = [t.index for t in targets if t.model_id == model_id]
    if not mine:
        held = ", ".join(f"{t.index} ({t.model_id!r})" for t in targets)
        raise IndexModelMismatch(
            f"alias {alias} writes to {held}, none of which holds vectors of model "
            f"{model_id!r}; start this worker with the encoder settings of that index, or "
            "re-embed (`vitrine reindex`)"
        )
    return mine


def _add_new_fields(es: Elasticsearch, index: str, alias: str, extra: dict[str, Any]) -> None:
    """Add fields that the template gained since ``index`` was created (e.g. ``content_hash``)
    and those of newly configured processors: the mapping is strict, so documents with a field
    the index lacks would be refused."""
    wanted = {
        **extra,
        **mappings.products_index_template(alias)["template"]["mappings"]["properties"],
    }
    live = es.indices.get_mapping(index=index)[index]["mappings"].get("properties", {})
    missing = {name: spec for name, spec in wanted.items() if name not in live}
    if missing:
        es.indices.put_mapping(index=index, properties=missing)
        log.info("added field(s) %s to %s", ", ".join(sorted(missing)), index)


def install_search_templates(es: Elasticsearch, settings: VitrineSettings) -> list[str]:
    """Store (create or update) the search templates of ``settings.index_alias``; returns ids."""
    templates = mappings.search_templates(settings.index_alias)
    for template_id, body in templates.items():
        es.put_script(id=template_id, script=body["script"])
    return list(templates)


@dataclass
class BulkOutcome:
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # _id -> reason


def bulk_write(
    es: Elasticsearch,
    actions: Iterable[dict[str, Any]],
    settings: VitrineSettings,
    *,
    refresh: bool = False,
) -> BulkOutcome:
    """Bulk-write actions; 429s are retried with back-off, other per-item errors are reported
    (deleting a document that is already gone is not an error).

    Connection errors and 5xx on the whole request are retried by the client and then raised,
    so the calling job can retry later. ``refresh`` makes the writes searchable on return.
    """
    outcome = BulkOutcome()
    for ok, item in streaming_bulk(
        es,
        actions,
        max_retries=settings.bulk_max_retries,
        initial_backoff=settings.bulk_initial_backoff_s,
        raise_on_error=False,
        chunk_size=200,
        refresh=refresh,
    ):
        [(op_type, op)] = item.items()
        if ok or (op_type == "delete" and op.get("status") == 404):
            outcome.written.append(op["_id"])
        else:
            error = op.get("error", {})
            reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
            outcome.failed[op["_id"]] = reason
            log.error("bulk item %s failed: %s", op["_id"], reason)
    return outcome


#: Most stale documents one batch's look-up returns (products x images they dropped).
STALE_LOOKUP_SIZE = 10_000


def stale_documents(
    es: Elasticsearch, index: str, keep: dict[tuple[str, str], list[str]]
) -> list[tuple[str, str]]:
    """``(index, _id)`` of the documents of these products other than ``keep``'s ids."""
    response = es.search(
        index=index,
        query=mappings.stale_documents_query(keep.items()),
        source=False,
        size=STALE_LOOKUP_SIZE,
        track_total_hits=False,
    )
    hits = response["hits"]["hits"]
    if len(hits) == STALE_LOOKUP_SIZE:
        log.warning("more than %d stale documents in one batch: some remain", STALE_LOOKUP_SIZE)
    return [(hit["_index"], hit["_id"]) for hit in hits]


def replace_products(
    es: Elasticsearch,
    settings: VitrineSettings,
    documents: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]],
    indices: list[str],
    *,
    refresh: bool = False,
) -> BulkOutcome:
    """Write the documents of several products (keyed by ``(merchant_id, product_id)``) to each
    of ``indices`` (the write targets of the documents' model: two during a re-embed) and
    delete their documents of images they no longer have: one search (ids only) for those,
    then one bulk request for everything. Two round trips per batch, and no refresh unless
    ``refresh`` (read-your-write: searchable on return) is asked for.

    The look-up sees what is searchable, so an image written by another batch less than a
    refresh interval (1 s) earlier, and replaced now by a different image, is not found and
    stays as a stale document. A product whose new document is rejected is reported failed;
    its dropped images are deleted all the same.
    """
    keep = {key: [doc_id for doc_id, _ in docs] for key, docs in documents.items() if docs}
    with stage("es_lookup", len(keep)):
        stale = stale_documents(es, ",".join(indices), keep) if keep else []
    written = [doc for docs in documents.values() for doc in docs]
    actions = chain(
        *(mappings.index_actions(index, written) for index in indices),
        mappings.delete_actions(stale),
    )
    with stage("es_bulk", len(written) * len(indices) + len(stale)), metrics.BULK_SECONDS.time():
        return bulk_write(es, actions, settings, refresh=refresh)


def delete_product(
    es: Elasticsearch, settings: VitrineSettings, merchant_id: str, product_id: str
) -> int:
    """Delete every document of a product from every write target (during a re-embed, the old
    and the new index); returns how many were deleted."""
    targets = aliases.write_targets(es, settings.index_alias)
    if not targets:
        return 0
    response = es.delete_by_query(
        index=",".join(t.index for t in targets),
        query=mappings.product_documents_query(merchant_id, product_id),
        conflicts="proceed",
        refresh=True,  # a finished delete job means searches no longer find the product
    )
    return int(response["deleted"])


def ingest_error(
    *,
    job_id: str,
    product_id: str,
    merchant_id: str,
    reason: str,
    message: str,
    image: str | None = None,
    model_id: str | None = None,
    attempts: int = 1,
) -> tuple[str, dict[str, Any]]:
    """``(document id, document)`` of a failed product's ingest-errors record. The id is fixed
    per job and product, so writing the record twice (spooled, then flushed) keeps one."""
    document = {
        "job_id": job_id,
        "product_id": product_id,
        "merchant_id": merchant_id,
        "reason": reason,
        "message": message,
        "image": image,
        "model_id": model_id,
        "attempts": attempts,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    return stable_id("ingest-error", job_id, merchant_id, product_id, image or ""), document


def write_ingest_error(
    es: Elasticsearch, settings: VitrineSettings, doc_id: str, document: dict[str, Any]
) -> None:
    """Record a failed product where operators and Kibana can see it."""
    es.index(index=settings.errors_index, id=doc_id, document=document)
