"""The query planner: exact search or HNSW for each vector list, and how wide a pool.

Why: HNSW costs about the same whatever a filter keeps, exact search (the float cosine over
every kept document) costs in proportion to the documents kept and has recall 1. So a filter
that keeps few documents is searched exactly, and a broad one by kNN with over-fetch and exact
re-scoring. On data without structure (every distance alike) int8 HNSW with a small pool finds
few of the true neighbours; such a list shows itself by flat re-scored scores, and is searched
again with a wider pool (``widen``).

The decisions (``choose``, ``widen``, ``contrast``) are pure functions of the estimate and the
scores, unit-tested; ``FilterCounts`` is the one piece of IO: a cached ``_count`` per filter.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from elasticsearch import Elasticsearch

from pipeline.search.plan import ListPlan, Window
from pipeline.search.query import MAX_NUM_CANDIDATES, ExactQuery, Filters, KnnQuery, filter_clauses
from pipeline.settings import VitrineSettings

Method = Literal["exact", "knn"]


@dataclass(frozen=True)
class QueryPlan:
    """How the vector lists of one search run, and why (shown by ``explain``)."""

    method: Method
    reason: str
    estimated_docs: int  # image documents the filter keeps (cached count)
    k_docs: int  # hits each list returns
    pool: int  # documents scored exactly: every kept one (exact), or the kNN k re-scored
    num_candidates: int | None  # HNSW candidates (kNN only)
    widened: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(estimated_docs: int, window: Window, settings: VitrineSettings) -> QueryPlan:
    """Exact when the filter keeps at most ``search_exact_max_docs`` documents, else kNN."""
    limit = settings.search_exact_max_docs
    if estimated_docs <= limit:
        return QueryPlan(
            "exact",
            f"the filter keeps ~{estimated_docs} documents <= search_exact_max_docs ({limit})",
            estimated_docs,
            window.k_docs,
            estimated_docs,
            None,
        )
    return QueryPlan(
        "knn",
        f"the filter keeps ~{estimated_docs} documents > search_exact_max_docs ({limit})",
        estimated_docs,
        window.k_docs,
        window.k_docs,
        window.num_candidates,
    )


def contrast(scores: list[float]) -> float:
    """How much nearer the best hit is than the last: ``1 - d_first / d_last`` with the cosine
    distance ``d`` (scores are (1 + cos) / 2, so ``d`` is proportional to ``1 - score``).

    About 0.05 for a random query on isotropic 512-d data (every distance alike: quantisation
    and graph errors decide the order), 0.3 and more when real neighbours stand out."""
    if len(scores) < 2:
        return 1.0
    first, last = 1.0 - max(scores), 1.0 - min(scores)
    return 1.0 if last <= 0 else 1.0 - first / last


def widen(plan: QueryPlan, scores: list[float], settings: VitrineSettings) -> QueryPlan | None:
    """The plan for a second pass when a kNN list came back flat, or None to keep it: exact
    search when the filter keeps at most ``search_flat_exact_max_docs`` documents (or no more
    than the pool), else the wider of ``search_flat_pool`` and the current pool retrieved and
    re-scored exactly, from twice as many HNSW candidates."""
    if plan.method != "knn" or plan.widened or len(scores) < plan.k_docs:
        return None
    spread = contrast(scores)
    if spread >= settings.search_flat_contrast:
        return None
    pool = min(MAX_NUM_CANDIDATES, max(settings.search_flat_pool, plan.pool))
    why = f"flat scores (contrast {spread:.3f} < search_flat_contrast "
    why += f"{settings.search_flat_contrast})"
    if plan.estimated_docs <= max(pool, settings.search_flat_exact_max_docs):
        return replace(plan, method="exact", reason=why, pool=plan.estimated_docs, widened=True)
    candidates = min(MAX_NUM_CANDIDATES, max(2 * pool, plan.num_candidates or 0))
    if pool <= plan.pool and candidates <= (plan.num_candidates or 0):
        return None  # nothing wider to try
    return replace(plan, reason=why, pool=pool, num_candidates=candidates, widened=True)


def apply(lists: list[ListPlan], plan: QueryPlan) -> list[ListPlan]:
    """The lists with their kNN queries run as the plan says (keyword lists unchanged)."""
    out = []
    for item in lists:
        query = item.query
        if isinstance(query, KnnQuery):
            out.append(replace(item, query=_query(query, plan)))
        else:
            out.append(item)
    return out


def _query(knn: KnnQuery, plan: QueryPlan) -> KnnQuery | ExactQuery:
    if plan.method == "exact":
        return ExactQuery(knn.vector, knn.model_id, knn.filters, plan.k_docs, knn.exclude)
    size = plan.k_docs if plan.pool > plan.k_docs else None
    return replace(knn, k=plan.pool, num_candidates=plan.num_candidates, size=size)


def count_body(filters: Filters, model_id: str) -> dict[str, Any]:
    """The ``_count`` request of the documents a filter keeps (the planner's estimate)."""
    return {"query": {"bool": {"filter": filter_clauses(filters, model_id=model_id)}}}


class FilterCounts:
    """Documents kept per filter, from ``_count``, cached ``ttl_s`` seconds (thread-safe; at
    most ``max_entries`` filters, the oldest dropped first). Stale by at most the TTL: the
    estimate only chooses a plan, it never changes what a plan may return."""

    def __init__(self, es: Elasticsearch, *, ttl_s: float, max_entries: int = 1024):
        self.es = es
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def estimate(self, index: str, filters: Filters, model_id: str) -> int:
        body = count_body(filters, model_id)
        key = index + json.dumps(body, sort_keys=True)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and now - hit[0] < self.ttl_s:
            return hit[1]
        count = int(self.es.count(index=index, **body)["count"])
        with self._lock:
            self._cache.pop(key, None)
            self._cache[key] = (now, count)
            while len(self._cache) > self.max_entries:
                self._cache.pop(next(iter(self._cache)))
        return count
