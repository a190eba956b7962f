"""Combining result lists, in our own code (Elasticsearch's built-in RRF needs a paid licence).

Every list is first de-duplicated by product, ``(merchant_id, product_id)``: a product with
several images keeps its best-ranked image, and its rank in the list is its position among
products (1-based). Then:

- **RRF** (reciprocal rank fusion, the default): ``score(p) = sum_l w_l / (rrf_k + rank_l(p))``
  over the lists ``l`` that contain ``p``; ``rrf_k`` defaults to 60. Scores of different lists
  need not be comparable, which is why it is the default.
- **linear**: ``score(p) = sum_l w_l * (s_l(p) - min_l) / (max_l - min_l)``, the Elasticsearch
  scores min-max normalised per list (all 1.0 when a list's scores are equal); a product missing
  from a list gets 0 from it.

Ties are broken by the product's best rank in any list, then by ``merchant_id`` and
``product_id``, so the fused order is total and pagination over it is stable. The hit that
represents a product is the one from the list where it ranks best (the earlier list on a tie).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Fusion = Literal["rrf", "linear"]
ProductKey = tuple[str, str]
Hit = Mapping[str, Any]  # an Elasticsearch hit: {"_id", "_score", "_source", ...}
DEFAULT_RRF_K = 60


@dataclass(frozen=True)
class RankedList:
    """One ranked result list and its weight in the fusion."""

    name: str
    hits: Sequence[Hit]
    weight: float = 1.0


@dataclass(frozen=True)
class Contribution:
    rank: int  # 1-based rank among the list's products
    score: float | None  # Elasticsearch's score in that list
    weight: float
    value: float  # what the list added to the fused score


@dataclass
class FusedHit:
    key: ProductKey
    score: float
    hit: Hit
    contributions: dict[str, Contribution] = field(default_factory=dict)

    @property
    def best_rank(self) -> int:
        return min(c.rank for c in self.contributions.values())


def product_key(hit: Hit) -> ProductKey:
    source = hit["_source"]
    return (str(source["merchant_id"]), str(source["product_id"]))


def dedup(hits: Sequence[Hit]) -> list[Hit]:
    """The first (best-ranked) hit of every product, in order."""
    seen: set[ProductKey] = set()
    out = []
    for hit in hits:
        key = product_key(hit)
        if key not in seen:
            seen.add(key)
            out.append(hit)
    return out


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores scaled to [0, 1]; all 1.0 if they are equal (one hit, or ties throughout)."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def _order(fused: dict[ProductKey, FusedHit]) -> list[FusedHit]:
    return sorted(fused.values(), key=lambda f: (-f.score, f.best_rank, f.key))


def _accumulate(
    lists: Sequence[RankedList], value_of: Callable[[RankedList, list[Hit]], list[float]]
) -> list[FusedHit]:
    fused: dict[ProductKey, FusedHit] = {}
    best: dict[ProductKey, int] = {}
    for ranked in lists:
        hits = dedup(ranked.hits)
        values = value_of(ranked, hits)
        for rank, (hit, value) in enumerate(zip(hits, values, strict=True), start=1):
            key = product_key(hit)
            entry = fused.setdefault(key, FusedHit(key, 0.0, hit))
            entry.score += value
            entry.contributions[ranked.name] = Contribution(
                rank, hit.get("_score"), ranked.weight, value
            )
            if rank < best.get(key, rank + 1):
                best[key], entry.hit = rank, hit
    return _order(fused)


def rrf(lists: Sequence[RankedList], *, k: int = DEFAULT_RRF_K) -> list[FusedHit]:
    """Weighted reciprocal rank fusion."""
    if k < 1:
        raise ValueError("rrf k must be at least 1")
    return _accumulate(
        lists, lambda ranked, hits: [ranked.weight / (k + r) for r in range(1, len(hits) + 1)]
    )


def linear(lists: Sequence[RankedList]) -> list[FusedHit]:
    """Weighted sum of min-max normalised scores."""

    def values(ranked: RankedList, hits: list[Hit]) -> list[float]:
        scores = [float(h.get("_score") or 0.0) for h in hits]
        return [ranked.weight * s for s in min_max(scores)]

    return _accumulate(lists, values)


def single(ranked: RankedList) -> list[FusedHit]:
    """One list, nothing to fuse: de-duplicated, with Elasticsearch's scores and order."""
    out = []
    for rank, hit in enumerate(dedup(ranked.hits), start=1):
        score = float(hit.get("_score") or 0.0)
        contribution = Contribution(rank, hit.get("_score"), ranked.weight, score)
        out.append(FusedHit(product_key(hit), score, hit, {ranked.name: contribution}))
    return out


def fuse(
    lists: Sequence[RankedList], method: Fusion = "rrf", *, rrf_k: int = DEFAULT_RRF_K
) -> list[FusedHit]:
    """Fuse several lists with ``method``; a single list keeps Elasticsearch's scores."""
    if len(lists) == 1:
        return single(lists[0])
    if method == "rrf":
        return rrf(lists, k=rrf_k)
    if method == "linear":
        return linear(lists)
    raise ValueError(f"unknown fusion method {method!r} (rrf or linear)")


def combine_vectors(
    image: Sequence[float] | np.ndarray, text: Sequence[float] | np.ndarray, image_weight: float
) -> np.ndarray:
    """``normalise(w * image + (1 - w) * text)``: one query vector for "like this, but ...".

    Both inputs are unit vectors from the same model; ``w`` = 1 is the image alone, 0 the text.
    """
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError("image_weight must be between 0 and 1")
    a, b = np.asarray(image, dtype=np.float32), np.asarray(text, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"vectors differ in shape: {a.shape} vs {b.shape}")
    mixed = image_weight * a + (1.0 - image_weight) * b
    norm = float(np.linalg.norm(mixed))
    return mixed / norm if norm > 1e-12 else a


def facet_counts(hits: Sequence[Hit], aggs: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Facets over de-duplicated hits, in the shape of ``facets_from_aggregations``.

    ``aggs`` is the facet aggregation spec (``mappings.facet_aggs()``): terms facets count
    products per value (top ``size``), range facets count products per bucket.
    """
    sources = [h["_source"] for h in dedup(hits)]
    facets: dict[str, list[dict[str, Any]]] = {}
    for name, spec in aggs.items():
        if "terms" in spec:
            field_name, size = spec["terms"]["field"], spec["terms"].get("size", 10)
            counts: dict[Any, int] = {}
            for source in sources:
                values = source.get(field_name)
                for value in values if isinstance(values, list) else [values]:
                    if value is not None:
                        counts[value] = counts.get(value, 0) + 1
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:size]
            facets[name] = [{"value": v, "count": c} for v, c in ranked]
        elif "range" in spec:
            field_name = spec["range"]["field"]
            buckets = []
            for r in spec["range"]["ranges"]:
                low, high = r.get("from"), r.get("to")
                count = sum(
                    1
                    for s in sources
                    if s.get(field_name) is not None
                    and (low is None or s[field_name] >= low)
                    and (high is None or s[field_name] < high)
                )
                buckets.append({"value": r["key"], "from": low, "to": high, "count": count})
            facets[name] = buckets
    return facets


def facets_from_aggregations(
    aggregations: Mapping[str, Any], aggs: Mapping[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Elasticsearch's results of the ``aggs`` spec, in the same shape as ``facet_counts``."""
    facets: dict[str, list[dict[str, Any]]] = {}
    for name, spec in aggs.items():
        buckets = aggregations.get(name, {}).get("buckets", [])
        if "terms" in spec:
            facets[name] = [{"value": b["key"], "count": b["doc_count"]} for b in buckets]
        elif "range" in spec:
            counts = {b["key"]: b["doc_count"] for b in buckets}
            facets[name] = [
                {
                    "value": r["key"],
                    "from": r.get("from"),
                    "to": r.get("to"),
                    "count": counts.get(r["key"], 0),
                }
                for r in spec["range"]["ranges"]
            ]
    return facets
