"""The indices behind a deployment's aliases, and the alias moves of a re-embed.

``<alias>`` (the read alias) is what searches and stored templates query: exactly one index.
``<alias>.write`` is what writers resolve: the serving index, and during a re-embed the new
index too, so uploads and deletes reach both. Concrete indices are
``<alias>.<model>.<generation>`` and carry ``_meta.alias``, so listing or pruning never touches
another deployment's indices. The swap, the rollback and the removal of an aborted re-embed
are each one ``_aliases`` call: a search sees the old index or the new one, never neither.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from elasticsearch import Elasticsearch, NotFoundError

from pipeline.es import mappings
from pipeline.es.client import IndexInfo, index_info, write_index_info

log = logging.getLogger(__name__)


class AliasError(RuntimeError):
    """An alias move that would leave searches without an index, or lose data."""


def indices_behind(es: Elasticsearch, name: str) -> list[IndexInfo]:
    """The concrete indices an alias or pattern resolves to, with their ``_meta``."""
    try:
        found = es.indices.get_mapping(index=name, allow_no_indices=True)
    except NotFoundError:
        return []
    return [index_info(index, body["mappings"]) for index, body in sorted(found.items())]


def write_targets(es: Elasticsearch, alias: str) -> list[IndexInfo]:
    """Every index a write must reach: those behind ``<alias>.write``; for a deployment set up
    before the write alias existed, the read alias's index."""
    targets = indices_behind(es, mappings.write_alias(alias))
    if targets:
        return targets
    legacy = write_index_info(es, alias)
    return [legacy] if legacy else []


def ensure_write_alias(es: Elasticsearch, alias: str) -> None:
    """Give a deployment set up before the write alias existed its write alias."""
    if indices_behind(es, mappings.write_alias(alias)):
        return
    serving = write_index_info(es, alias)
    if serving is not None:
        es.indices.put_alias(index=serving.index, name=mappings.write_alias(alias))
        log.info("added write alias %s to %s", mappings.write_alias(alias), serving.index)


@dataclass(frozen=True)
class DeploymentIndex:
    info: IndexInfo
    serving: bool  # behind the read alias
    writing: bool  # behind the write alias

    @property
    def index(self) -> str:
        return self.info.index


def deployment_indices(es: Elasticsearch, alias: str) -> list[DeploymentIndex]:
    """The concrete product indices of this deployment (``_meta.alias``), oldest first."""
    ours = [
        info
        for info in indices_behind(es, mappings.product_index_pattern(alias))
        if info.meta.get("alias") == alias
    ]
    serving = {i.index for i in indices_behind(es, alias)}
    writing = {i.index for i in indices_behind(es, mappings.write_alias(alias))}
    return [DeploymentIndex(i, i.index in serving, i.index in writing) for i in ours]


def next_generation(indices: list[DeploymentIndex]) -> int:
    """One past the highest generation in use (names end in ``.<generation>``)."""
    generations = [int(i.index.rsplit(mappings.SEPARATOR, 1)[-1]) for i in indices]
    return max(generations, default=0) + 1


def serving_index(es: Elasticsearch, alias: str) -> IndexInfo:
    serving = indices_behind(es, alias)
    if len(serving) != 1:
        raise AliasError(f"alias {alias} should point at one index, not {len(serving)}")
    return serving[0]


def in_progress(es: Elasticsearch, alias: str) -> IndexInfo | None:
    """The new index of an unfinished re-embed: written to, not yet serving."""
    serving = {i.index for i in indices_behind(es, alias)}
    pending = [t for t in write_targets(es, alias) if t.index not in serving]
    return pending[0] if pending else None


def add_write_target(es: Elasticsearch, alias: str, index: str) -> None:
    es.indices.put_alias(index=index, name=mappings.write_alias(alias))


def swap(es: Elasticsearch, alias: str, *, serving: str, retiring: str) -> None:
    """Atomically serve (and write to) ``serving`` instead of ``retiring``."""
    es.indices.update_aliases(
        actions=mappings.swap_actions(alias, serving=serving, retiring=retiring)
    )
    log.info("alias %s: %s now serves instead of %s", alias, serving, retiring)


def rollback(es: Elasticsearch, alias: str) -> tuple[str, str]:
    """Serve the index the current one replaced again; returns ``(from, to)``."""
    if in_progress(es, alias) is not None:
        raise AliasError("a re-embed is in progress: abort it (`vitrine reindex --abort`) first")
    current = serving_index(es, alias)
    previous = current.meta.get("previous_index")
    if not previous or not es.indices.exists(index=previous):
        raise AliasError(
            f"{current.index} replaced no index that still exists (pruned?): nothing to roll "
            "back to"
        )
    swap(es, alias, serving=previous, retiring=current.index)
    return current.index, previous


def abort(es: Elasticsearch, alias: str) -> str | None:
    """Drop an unfinished re-embed's new index (out of the write alias, then deleted)."""
    pending = in_progress(es, alias)
    if pending is None:
        return None
    es.indices.delete_alias(index=pending.index, name=mappings.write_alias(alias))
    es.indices.delete(index=pending.index)
    return pending.index


def prune(es: Elasticsearch, alias: str) -> list[str]:
    """Delete this deployment's indices that no alias points at (rollback is then gone)."""
    idle = [i.index for i in deployment_indices(es, alias) if not (i.serving or i.writing)]
    for index in idle:
        es.indices.delete(index=index)
        log.info("deleted index %s", index)
    return idle
