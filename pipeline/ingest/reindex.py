"""Re-embedding every product with another model, while the old index keeps serving.

``start`` creates the new index (``<alias>.<model>.<generation>``, the new model's dimensions)
behind the write alias only: from then on uploads and deletes reach the old and the new index
(``pipeline.es.aliases``). ``run`` then repeats one pass until the new index holds exactly the
product set of the old one:

1. compare the two indices by document id (derived from merchant, product and image bytes, so
   the same in both) and content hash;
2. delete from the new index what the old one no longer has;
3. rebuild each product that is missing or out of date from the old index's documents (its
   metadata and its original image references: the image store path or the source URL) and
   send it, in batches, to the re-embed queue, served by workers started with the new model;
   wait for those jobs.

An empty comparison is the verification (ids, content hashes and document counts); the read
and write aliases then swap in one ``_aliases`` call. A last pass re-embeds what the old index
took in between (written there after the final comparison began, and newer than the new
index's copy), without ever deleting. All state lives in Elasticsearch (the new index behind
the write alias, ``_meta.previous_index``): after a crash or Ctrl-C, running again resumes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from pipeline.documents import Product, ProductFields
from pipeline.es import aliases, indexing, mappings
from pipeline.es.client import IndexInfo
from pipeline.jobs import VitrineCelery, enqueue_checked, wait_for_jobs
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

Key = tuple[str, str]
_FIELDS = [*ProductFields.model_fields, "image_url", "image_index", "content_hash", "indexed_at"]


class ReindexFailed(RuntimeError):
    """The re-embed cannot finish as asked (another one in progress, products that fail)."""


@dataclass(frozen=True)
class Copy:
    """What the comparison needs of one document."""

    key: Key
    content_hash: str
    indexed_at: str


@dataclass
class Difference:
    """What the new index lacks (products to re-embed) and has in excess (ids to delete)."""

    stale: set[Key] = field(default_factory=set)
    extra: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.stale and not self.extra


def compare(old: dict[str, Copy], new: dict[str, Copy], *, since: str | None = None) -> Difference:
    """Before the swap (``since`` None) the old index is the truth: products whose documents
    the new index lacks or holds with another content hash, and ids only the new index has.

    After the swap (``since``, ISO time the last comparison began) the new index takes writes
    first: only old documents written from then on count, only where the new index has no
    newer copy, and nothing is deleted."""
    diff = Difference()
    for doc_id, copy in old.items():
        theirs = new.get(doc_id)
        if since is None:
            if theirs is None or theirs.content_hash != copy.content_hash:
                diff.stale.add(copy.key)
        elif copy.indexed_at >= since and (
            theirs is None
            or (theirs.content_hash != copy.content_hash and copy.indexed_at > theirs.indexed_at)
        ):
            diff.stale.add(copy.key)
    if since is None:
        diff.extra = sorted(set(new) - set(old))
    return diff


def product_from_documents(sources: list[dict[str, Any]]) -> Product:
    """The product as it was sent, rebuilt from its image documents: the shared metadata and
    the image references in their original order."""
    first = sources[0]
    ordered = sorted(sources, key=lambda s: int(s["image_index"]))
    return Product.model_validate(
        {name: first.get(name) for name in ProductFields.model_fields}
        | {"images": [s["image_url"] for s in ordered]}
    )


@dataclass
class Progress:
    """What the progress bar shows: products of this pass sent and finished."""

    phase: str
    passes: int = 0
    total: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class Outcome:
    old_index: str
    new_index: str
    documents: int
    passes: int
    catch_up: int  # products re-embedded after the swap


def start(
    es: Elasticsearch,
    settings: VitrineSettings,
    *,
    model_id: str,
    dims: int,
    queue: str,
    extra_fields: dict[str, Any] | None = None,
    encoder: dict[str, Any] | None = None,
) -> IndexInfo:
    """The new index of this re-embed: the one in progress, or a new one behind the write
    alias (not yet the read alias). Refuses a second re-embed to another model."""
    alias = settings.index_alias
    pending = aliases.in_progress(es, alias)
    if pending is not None:
        if pending.model_id != model_id:
            raise ReindexFailed(
                f"a re-embed into {pending.index} (model {pending.model_id!r}) is in progress; "
                "finish it with its own encoder settings or drop it (`vitrine reindex --abort`)"
            )
        return pending
    indexing.install_templates(es, settings)  # the new index gets today's template
    aliases.ensure_write_alias(es, alias)
    serving = aliases.serving_index(es, alias)
    generation = aliases.next_generation(aliases.deployment_indices(es, alias))
    index = mappings.product_index_name(alias, model_id, generation)
    meta = {"queue": queue, "previous_index": serving.index, "encoder": encoder or {}}
    body = mappings.product_index_body(
        alias,
        model_id,
        dims,
        extra_fields,
        serving=False,
        meta=meta,
        shards=settings.index_shards,
        replicas=settings.index_replicas,
    )
    es.indices.create(index=index, **body)
    log.info("re-embed: created %s for model %s (replaces %s)", index, model_id, serving.index)
    return IndexInfo(index, model_id, dims, {**meta, "alias": alias})


def _copies(es: Elasticsearch, index: str) -> dict[str, Copy]:
    return {
        hit["_id"]: Copy(
            (hit["_source"]["merchant_id"], hit["_source"]["product_id"]),
            hit["_source"]["content_hash"],
            hit["_source"]["indexed_at"],
        )
        for hit in scan(
            es,
            index=index,
            query={"query": {"match_all": {}}},
            _source=["merchant_id", "product_id", "content_hash", "indexed_at"],
            size=1000,
        )
    }


def _products(es: Elasticsearch, index: str, keys: set[Key]) -> Iterator[Product]:
    """The products ``keys``, rebuilt from ``index`` (documents sorted by product)."""
    group: list[dict[str, Any]] = []
    for hit in scan(
        es,
        index=index,
        query={"query": {"match_all": {}}, "sort": ["merchant_id", "product_id"]},
        _source=_FIELDS,
        preserve_order=True,
        size=500,
    ):
        source = hit["_source"]
        if group and (source["merchant_id"], source["product_id"]) != (
            group[0]["merchant_id"],
            group[0]["product_id"],
        ):
            yield from _rebuilt(group, keys)
            group = []
        group.append(source)
    if group:
        yield from _rebuilt(group, keys)


def _rebuilt(group: list[dict[str, Any]], keys: set[Key]) -> Iterator[Product]:
    if (group[0]["merchant_id"], group[0]["product_id"]) in keys:
        yield product_from_documents(group)


def _pass(
    es: Elasticsearch,
    app: VitrineCelery,
    old: str,
    new: str,
    *,
    batch_size: int,
    timeout_s: float,
    progress: Progress,
    on_progress: Callable[[Progress], None],
    since: str | None = None,
) -> Difference:
    """One comparison and the jobs that fix what it found; returns the comparison."""
    es.indices.refresh(index=f"{old},{new}")
    diff = compare(_copies(es, old), _copies(es, new), since=since)
    if diff.extra:
        es.delete_by_query(
            index=new, query={"ids": {"values": diff.extra}}, conflicts="proceed", refresh=True
        )
    products = list(_products(es, old, diff.stale)) if diff.stale else []
    progress.passes += 1
    progress.total, progress.done, progress.failed = len(products), 0, 0
    on_progress(progress)
    if not products:
        return diff
    job_ids = enqueue_checked(app, products, batch_size=batch_size)

    def show(statuses: dict[str, Any]) -> None:
        finished = [s for s in statuses.values() if s.finished]
        results = [r for s in finished for r in s.results]
        progress.failed = sum(1 for r in results if r.get("status") == "failed")
        progress.done = len(results)
        on_progress(progress)

    wait_for_jobs(app, job_ids, timeout_s=timeout_s, on_progress=show)
    return diff


def run(
    es: Elasticsearch,
    app: VitrineCelery,
    settings: VitrineSettings,
    new: IndexInfo,
    *,
    batch_size: int = 16,
    max_passes: int = 5,
    timeout_s: float = 24 * 3600,
    on_progress: Callable[[Progress], None] = lambda _: None,
) -> Outcome:
    """Fill ``new`` from the serving index until both hold the same products, swap, and
    re-embed what the old index took in during the swap. ``app`` sends to the re-embed queue."""
    alias = settings.index_alias
    old = aliases.serving_index(es, alias).index
    if old == new.index:
        raise ReindexFailed(f"{new.index} already serves alias {alias}")
    progress = Progress("re-embed")
    one_pass = functools.partial(
        _pass,
        es,
        app,
        old,
        new.index,
        batch_size=batch_size,
        timeout_s=timeout_s,
        progress=progress,
        on_progress=on_progress,
    )
    for _ in range(max_passes):
        began = datetime.now(UTC).isoformat()
        diff = one_pass()
        if diff.empty and _same_counts(es, old, new.index):  # else writes came meanwhile
            break
    else:
        raise ReindexFailed(
            f"after {max_passes} passes {new.index} still differs from {old} "
            f"({len(diff.stale)} product(s)); see the ingest-errors index, fix or delete those "
            "products, and run again"
        )
    aliases.swap(es, alias, serving=new.index, retiring=old)
    progress.phase = "catch-up"
    time.sleep(1.0)  # writes resolved just before the swap land in the old index meanwhile
    catch_up = one_pass(since=began)
    count = int(es.count(index=new.index)["count"])
    return Outcome(old, new.index, count, progress.passes, len(catch_up.stale))


def _same_counts(es: Elasticsearch, old: str, new: str) -> bool:
    """Both indices hold as many documents (the comparison before was by id and hash)."""
    es.indices.refresh(index=f"{old},{new}")
    counts = {index: int(es.count(index=index)["count"]) for index in (old, new)}
    if counts[old] != counts[new]:
        log.info("re-embed: document counts differ (%s); one more pass", counts)
    return counts[old] == counts[new]
