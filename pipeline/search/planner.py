"""The query planner: exact search or HNSW for each vector list, and how wide a pool.

Why: HNSW costs about the same whatever a filter keeps, exact search (the float cosine over
every kept document) costs in proportion to the documents kept and has recall 1. So a filter
that keeps few documents is searched exactly, and a broad one by kNN with over-fetch and exact
re-scoring. On data without structure (every distance alike) int8 HNSW with a small pool finds
few of the true neighbours; such a list shows itself by flat re-scored scores, and is searched
again with a wider pool (``widen``). Flatness belongs to the data a filter keeps more than to
one query, so where most recent first passes under a filter were flat, the next search of it
starts wide (``FlatHistory``, ``start_wide``) instead of paying for a pass it would repeat.

A product may have several images, one document each, so a vector list fetches ``k`` times
``search_overfetch`` documents for ``k`` distinct products to remain. Where the filter keeps one
image per product (no document with ``image_index`` > 0), an exact list fetches just ``k``
documents, and runs again with the over-fetch (``refill``) in the rare case its hits repeat a
product (a further image indexed since the cached estimate). A kNN list keeps its over-fetch:
those documents are also the pool re-scored with the float cosine, and the scores whose
contrast ``widen`` judges.

The decisions (``choose``, ``refill``, ``widen``, ``start_wide``, ``contrast``) are pure
functions of the estimate, the history and the hits, unit-tested; ``FilterCounts`` is the one
piece of IO: cached counts (``_search`` of size 0) that bound what a filter keeps, made only
for filters whose bound is not known yet (``looser``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from elasticsearch import Elasticsearch

from pipeline.search.plan import ListPlan, Window, checked
from pipeline.search.query import MAX_NUM_CANDIDATES, ExactQuery, Filters, KnnQuery, filter_clauses
from pipeline.settings import VitrineSettings

Method = Literal["exact", "knn"]


@dataclass(frozen=True)
class Estimate:
    """What a filter keeps: image documents, and how many of them are a product's further
    images (``image_index`` > 0; none: one document per product)."""

    docs: int
    further_images: int


@dataclass(frozen=True)
class QueryPlan:
    """How the vector lists of one search run, and why (shown by ``explain``)."""

    method: Method
    reason: str
    estimated_docs: int  # at most this many image documents kept (FilterCounts)
    k_docs: int  # hits each list returns
    pool: int  # documents scored exactly: every kept one (exact), or the kNN k re-scored
    num_candidates: int | None  # HNSW candidates (kNN only)
    exact_k_docs: int  # hits an exact list returns: k where the filter keeps one image a product
    widened: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(estimate: Estimate, window: Window, settings: VitrineSettings) -> QueryPlan:
    """Exact when the filter keeps at most ``search_exact_max_docs`` documents (``k`` of them
    fetched when it keeps one image per product), else kNN with the window's over-fetch."""
    limit = settings.search_exact_max_docs
    docs = estimate.docs
    exact_k_docs = window.k_docs if estimate.further_images else min(window.k, window.k_docs)
    if docs <= limit:
        fetch = "" if estimate.further_images else "; one image per product: no over-fetch"
        return QueryPlan(
            "exact",
            f"the filter keeps at most {docs} documents <= search_exact_max_docs ({limit}){fetch}",
            docs,
            exact_k_docs,
            docs,
            None,
            exact_k_docs,
        )
    return QueryPlan(
        "knn",
        f"the filter keeps ~{docs} documents > search_exact_max_docs ({limit})",
        docs,
        window.k_docs,
        window.k_docs,
        window.num_candidates,
        exact_k_docs,
    )


def refill(plan: QueryPlan, window: Window, products: list[Any]) -> QueryPlan | None:
    """The plan with the window's over-fetch when a list fetched without it (``products``: the
    product of each hit, in order) repeats a product and so holds fewer products than asked;
    None when the list is complete."""
    if plan.k_docs >= window.k_docs or len(products) < plan.k_docs:
        return None  # fetched with the over-fetch, or every document the filter keeps
    if len(set(products)) == len(products):
        return None
    why = f"{plan.reason}; hits repeated a product: fetched again with the over-fetch"
    return replace(plan, reason=why, k_docs=window.k_docs)


def contrast(scores: list[float]) -> float:
    """How much nearer the best hit is than the last: ``1 - d_first / d_last`` with the cosine
    distance ``d`` (scores are (1 + cos) / 2, so ``d`` is proportional to ``1 - score``).

    About 0.05 for a random query on isotropic 512-d data (every distance alike: quantisation
    and graph errors decide the order), 0.3 and more when real neighbours stand out."""
    if len(scores) < 2:
        return 1.0
    first, last = 1.0 - max(scores), 1.0 - min(scores)
    return 1.0 if last <= 0 else 1.0 - first / last


def is_flat(plan: QueryPlan, scores: list[float], settings: VitrineSettings) -> bool | None:
    """Whether a first-pass kNN list came back flat (contrast below ``search_flat_contrast``);
    None when the list says nothing of it (an exact or second pass, or fewer hits than asked)."""
    if plan.method != "knn" or plan.widened or len(scores) < plan.k_docs:
        return None
    return contrast(scores) < settings.search_flat_contrast


def widen(plan: QueryPlan, scores: list[float], settings: VitrineSettings) -> QueryPlan | None:
    """The plan for a second pass when a kNN list came back flat, or None to keep it."""
    if not is_flat(plan, scores, settings):
        return None
    why = f"flat scores (contrast {contrast(scores):.3f} < search_flat_contrast "
    return wider(plan, why + f"{settings.search_flat_contrast})", settings)


def wider(plan: QueryPlan, why: str, settings: VitrineSettings) -> QueryPlan | None:
    """The wide plan of flat lists: exact search when the filter keeps at most
    ``search_flat_exact_max_docs`` documents (or no more than the pool), else the wider of
    ``search_flat_pool`` and the current pool retrieved and re-scored exactly, from twice as
    many HNSW candidates; None when there is nothing wider."""
    if plan.method != "knn" or plan.widened:
        return None
    pool = min(MAX_NUM_CANDIDATES, max(settings.search_flat_pool, plan.pool))
    if plan.estimated_docs <= max(pool, settings.search_flat_exact_max_docs):
        return replace(
            plan,
            method="exact",
            reason=why,
            k_docs=plan.exact_k_docs,
            pool=plan.estimated_docs,
            widened=True,
        )
    candidates = min(MAX_NUM_CANDIDATES, max(2 * pool, plan.num_candidates or 0))
    if pool <= plan.pool and candidates <= (plan.num_candidates or 0):
        return None  # nothing wider to try
    return replace(plan, reason=why, pool=pool, num_candidates=candidates, widened=True)


def start_wide(
    plan: QueryPlan, histories: list[tuple[int, int]], settings: VitrineSettings
) -> QueryPlan:
    """The wide plan straight away when most recent first passes of every vector list of the
    search came back flat (``histories``: flat and seen per list, from ``FlatHistory``): their
    first pass would only be run again. Else ``plan``."""
    if not histories or not all(FlatHistory.mostly_flat(*h) for h in histories):
        return plan
    flat, seen = min(histories)
    why = f"{flat} of the last {seen} first passes under this filter came back flat"
    return wider(plan, why, settings) or plan


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


def estimate_body(filters: Filters, model_id: str) -> dict[str, Any]:
    """The request of the planner's estimate: the documents a filter keeps (exact count) and,
    of those, the further images of a product."""
    return {
        "query": {"bool": {"filter": filter_clauses(filters, model_id=model_id)}},
        "size": 0,
        "track_total_hits": True,
        "aggs": {"further_images": {"filter": {"range": {"image_index": {"gt": 0}}}}},
    }


def filter_key(index: str, filters: Filters, model_id: str) -> str:
    """What the planner's per-filter memories (counts, flatness) are keyed by: the filters as
    pydantic serialises them (a few µs; the same filter in another order is only a cache miss)."""
    return f"{index}|{model_id}|{filters.model_dump_json(exclude_defaults=True)}"


class FlatHistory:
    """Whether the last first-pass kNN lists under each filter (and list: image, text...) came
    back flat, kept ``ttl_s`` seconds (thread-safe; per process; at most ``max_entries``
    keys). Flatness is a property of the data a filter keeps far more than of one query: where
    most first passes were flat, the next search starts wide (``start_wide``). Observations
    expire, so a catalogue that changes is judged again."""

    WINDOW = 16  # first passes remembered per key
    MIN_SEEN = 3

    def __init__(self, *, ttl_s: float, max_entries: int = 1024):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: dict[str, deque[tuple[float, bool]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def mostly_flat(cls, flat: int, seen: int) -> bool:
        return seen >= cls.MIN_SEEN and 2 * flat > seen

    def observe(self, key: str, flat: bool) -> None:
        with self._lock:
            seen = self._seen.pop(key, None) or deque(maxlen=self.WINDOW)
            seen.append((time.monotonic(), flat))
            self._seen[key] = seen
            while len(self._seen) > self.max_entries:
                self._seen.pop(next(iter(self._seen)))

    def history(self, key: str) -> tuple[int, int]:
        """Flat first passes and first passes seen under ``key``, within the TTL."""
        since = time.monotonic() - self.ttl_s
        with self._lock:
            recent = [flat for at, flat in self._seen.get(key, ()) if at >= since]
        return sum(recent), len(recent)


#: Price bounds are counted moved out to a grid of this many points per doubling (19 % apart):
#: the ranges of a price slider share a few counts instead of each costing one.
PRICE_GRID_STEPS = 4


def _grid(price: float, outward: Callable[[float], float]) -> float:
    if not 0 < price < 2**1000:  # zero, NaN and the infinities stay as they are
        return price
    return float(2 ** (outward(math.log2(price) * PRICE_GRID_STEPS) / PRICE_GRID_STEPS))


def widened(filters: Filters) -> Filters:
    """``filters`` with its price bounds moved out to the grid: what the planner counts. It
    keeps every document ``filters`` keeps, so its count bounds theirs from above."""
    low, high = filters.min_price, filters.max_price
    if low is None and high is None:
        return filters
    return filters.model_copy(
        update={
            "min_price": None if low is None else min(low, _grid(low, math.floor)),
            "max_price": None if high is None else max(high, _grid(high, math.ceil)),
        }
    )


def without_price(filters: Filters) -> Filters:
    """``filters`` without price bounds: a slider's other filters."""
    if filters.min_price is None and filters.max_price is None:
        return filters
    return filters.model_copy(update={"min_price": None, "max_price": None})


def looser(filters: Filters) -> list[Filters]:
    """Filters whose counts bound what ``filters`` keeps, the tightest first: ``filters``
    widened and, with a price bound, ``filters`` without it."""
    rest = without_price(filters)
    return [widened(filters)] if rest is filters else [widened(filters), rest]


class FilterCounts:
    """Upper bounds of what a filter keeps, from counts cached ``ttl_s`` seconds (thread-safe;
    at most ``max_entries`` filters, the oldest dropped first). A filter is counted with its
    price bounds widened (``looser``), and without them, in one request; a filter whose other
    clauses are known to keep at most ``exact_max_docs`` documents is not counted at all. A
    bound only chooses a plan: it never changes what a plan may return (``refill``); stale by
    at most the TTL."""

    def __init__(
        self, es: Elasticsearch, *, ttl_s: float, exact_max_docs: int, max_entries: int = 1024
    ):
        self.es = es
        self.ttl_s = ttl_s
        self.exact_max_docs = exact_max_docs
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Estimate]] = {}
        self._lock = threading.Lock()

    def estimate(self, index: str, filters: Filters, model_id: str) -> Estimate:
        counted = looser(filters)
        keys = [filter_key(index, f, model_id) for f in counted]
        now = time.monotonic()
        with self._lock:
            cached = [self._cache.get(key) for key in keys]
        known = [hit[1] if hit and now - hit[0] < self.ttl_s else None for hit in cached]
        found = [e for e in known if e is not None]
        if found and (known[0] is not None or min(e.docs for e in found) <= self.exact_max_docs):
            return _tightest(found)
        missing = [i for i, e in enumerate(known) if e is None]
        searches: list[dict[str, Any]] = []
        for i in missing:
            searches += [{"index": index}, estimate_body(counted[i], model_id)]
        responses = self.es.msearch(searches=searches)["responses"]
        fetched = [
            Estimate(
                int(checked(r, "estimate")["hits"]["total"]["value"]),
                int(r["aggregations"]["further_images"]["doc_count"]),
            )
            for r in responses
        ]
        with self._lock:
            for i, estimate in zip(missing, fetched, strict=True):
                self._cache.pop(keys[i], None)
                self._cache[keys[i]] = (now, estimate)
            while len(self._cache) > self.max_entries:
                self._cache.pop(next(iter(self._cache)))
        return _tightest(found + fetched)


def _tightest(bounds: list[Estimate]) -> Estimate:
    """Each count's least upper bound (both bound the same documents from above)."""
    return Estimate(min(e.docs for e in bounds), min(e.further_images for e in bounds))
