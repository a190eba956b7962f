"""Writing to Elasticsearch: index set-up behind an alias, bulk writes with bounded retries,
product replacement and deletion, and the ingest-errors record. Bodies come from
``pipeline.es.mappings``; this module is the IO around them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from elasticsearch import AuthorizationException, Elasticsearch
from elasticsearch.helpers import streaming_bulk

from pipeline import metrics
from pipeline.documents import stable_id
from pipeline.es import mappings
from pipeline.es.client import IndexInfo, write_index_info
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
    the index (new or existing) because its mapping is strict.

    Returns the write index. Raises ``IndexModelMismatch`` if the alias already points at an
    index of a different model: vectors of two models must never share an index. Credentials
    without admin rights (a least-privilege worker) only check the existing write index.
    """
    alias = settings.index_alias
    try:
        es.indices.put_index_template(
            name=mappings.product_template_name(alias), **mappings.products_index_template(alias)
        )
    except AuthorizationException:
        return _checked_write_index(es, alias, model_id)
    es.indices.put_index_template(
        name=settings.errors_index, **mappings.errors_index_template(settings.errors_index)
    )
    if not es.indices.exists(index=settings.errors_index):
        es.options(ignore_status=400).indices.create(index=settings.errors_index)
    install_search_templates(es, settings)
    current = write_index_info(es, alias)
    if current is None:
        index = mappings.product_index_name(alias, model_id)
        es.options(ignore_status=400).indices.create(
            index=index,
            **mappings.product_index_body(
                alias,
                model_id,
                dims,
                extra_fields,
                shards=settings.index_shards,
                replicas=settings.index_replicas,
            ),
        )
        log.info("created index %s behind alias %s for model %s", index, alias, model_id)
        return index
    _check_model(alias, current, model_id)
    _add_new_fields(es, current.index, alias, extra_fields or {})
    return current.index


def _checked_write_index(es: Elasticsearch, alias: str, model_id: str) -> str:
    current = write_index_info(es, alias)
    if current is None:
        raise IndexNotReady(
            f"alias {alias} has no index and these Elasticsearch credentials may not create "
            "one; run `vitrine init-index` with admin credentials first"
        )
    _check_model(alias, current, model_id)
    log.info("using %s behind alias %s (set up by an admin: no admin rights)", current.index, alias)
    return current.index


def _check_model(alias: str, current: IndexInfo, model_id: str) -> None:
    if current.model_id != model_id:
        raise IndexModelMismatch(
            f"alias {alias} writes to {current.index}, which holds vectors of model "
            f"{current.model_id!r}, not {model_id!r}; re-embed into a new index or point "
            "VITRINE_INDEX_ALIAS elsewhere"
        )


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
    es: Elasticsearch, actions: Iterable[dict[str, Any]], settings: VitrineSettings
) -> BulkOutcome:
    """Bulk-write actions; 429s are retried with back-off, other per-item errors are reported.

    Connection errors and 5xx on the whole request are retried by the client and then raised,
    so the calling job can retry later.
    """
    outcome = BulkOutcome()
    for ok, item in streaming_bulk(
        es,
        actions,
        max_retries=settings.bulk_max_retries,
        initial_backoff=settings.bulk_initial_backoff_s,
        raise_on_error=False,
        chunk_size=200,
    ):
        op = next(iter(item.values()))
        if ok:
            outcome.written.append(op["_id"])
        else:
            error = op.get("error", {})
            reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
            outcome.failed[op["_id"]] = reason
            log.error("bulk item %s failed: %s", op["_id"], reason)
    return outcome


def replace_products(
    es: Elasticsearch,
    settings: VitrineSettings,
    documents: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]],
) -> BulkOutcome:
    """Write the documents of several products (keyed by ``(merchant_id, product_id)``), then
    delete their documents for images they no longer have.

    The index is refreshed once before the clean-up so that a document written moments ago by
    an earlier job is visible to it; one refresh per batch keeps that cheap.
    """
    alias = settings.index_alias
    actions = mappings.index_actions(alias, (doc for docs in documents.values() for doc in docs))
    with metrics.BULK_SECONDS.time():
        outcome = bulk_write(es, actions, settings)
    written = set(outcome.written)
    complete = [
        (key, [doc_id for doc_id, _ in docs])
        for key, docs in documents.items()
        if docs and all(doc_id in written for doc_id, _ in docs)
    ]
    if complete:
        es.indices.refresh(index=alias)
        es.delete_by_query(
            index=alias,
            query=mappings.stale_documents_query(complete),
            conflicts="proceed",
            refresh=True,  # a finished job means searches no longer see the replaced images
        )
    return outcome


def delete_product(
    es: Elasticsearch, settings: VitrineSettings, merchant_id: str, product_id: str
) -> int:
    """Delete every document of a product; returns how many were deleted."""
    response = es.delete_by_query(
        index=settings.index_alias,
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
