"""Recommendations from browsing history: a profile vector, kNN around it, then diversification.

1. **Profile.** Each viewed product's stored vector (its primary image, fetched for all viewed
   products in one ``_msearch`` of ``product-vector`` lookups: document ids contain the image
   hash, so a product reference alone cannot be turned into an ``mget``) is L2-normalised and
   weighted by ``weight * 0.5 ** (age / half_life_s)`` when the view has a timestamp, or
   ``weight * 0.5 ** (position / position_half_life)`` when it has none (the list is most recent
   first). The profile is the normalised weighted sum: a direction in the cosine space.
2. **Candidates.** kNN from the profile (template ``recommend``) with the usual filters inside
   the HNSW search and every viewed product left out, ``k * recommend_overfetch`` image
   documents, re-scored with the exact cosine, vectors included for step 3.
3. **Diversity.** One hit per product, at most one per ``duplicate_group`` (near-copies of one
   item, possibly at several merchants), and maximal marginal relevance:
   ``lambda * cos(profile, c) - (1 - lambda) * max_selected cos(c, s)``; lambda 1 is plain
   relevance order.

Profile and MMR are pure functions; ``Recommender`` does the IO and reuses the ``Searcher`` for
the index's model and dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from elasticsearch import BadRequestError

from pipeline.documents import HIT_FIELDS
from pipeline.es import mappings
from pipeline.es.mappings import VECTOR_FIELD, exact_rescore
from pipeline.search.fusion import Hit, dedup
from pipeline.search.plan import QueryError
from pipeline.search.query import (
    MAX_NUM_CANDIDATES,
    Filters,
    ProductRef,
    ProductVectorQuery,
    Vector,
    as_floats,
    filter_clauses,
)
from pipeline.search.searcher import Searcher


@dataclass(frozen=True)
class Viewed:
    """One view (or add-to-cart) of a product: when (epoch seconds, optional) and how much it
    counts."""

    product: ProductRef
    at: float | None = None
    weight: float = 1.0


def recency_weights(
    viewed: Sequence[Viewed], *, now: float, half_life_s: float, position_half_life: float
) -> list[float]:
    """Each view's weight after decay: by age when it has a timestamp (a future one counts as
    now), by position in the list (0 = most recent) when it has none."""
    weights = []
    for position, view in enumerate(viewed):
        if view.at is not None:
            decay = 0.5 ** (max(0.0, now - view.at) / half_life_s)
        else:
            decay = 0.5 ** (position / position_half_life)
        weights.append(view.weight * decay)
    return weights


def profile_vector(vectors: Sequence[Vector], weights: Sequence[float]) -> np.ndarray:
    """The normalised weighted sum of the normalised ``vectors`` (float32).

    Raises ``ValueError`` when there is nothing to average or the sum vanishes."""
    if len(vectors) != len(weights) or not len(vectors):
        raise ValueError("one weight per vector, and at least one vector")
    matrix = _normalised(np.asarray(vectors, dtype=np.float64))
    total = np.asarray(weights, dtype=np.float64) @ matrix
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError("the weighted views cancel out: no profile direction")
    return (total / norm).astype(np.float32)


def mmr(
    query: Vector,
    candidates: np.ndarray,
    *,
    k: int,
    lambda_: float,
    groups: Sequence[str | None] | None = None,
) -> list[int]:
    """Indices of up to ``k`` candidates in maximal-marginal-relevance order, never two with
    the same (non-null) group. Ties go to the earlier candidate (Elasticsearch's order)."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError("lambda must be between 0 and 1")
    if not len(candidates) or k < 1:
        return []
    rows = _normalised(np.asarray(candidates, dtype=np.float64))
    relevance = rows @ _normalised(np.asarray(query, dtype=np.float64)[None, :])[0]
    redundancy = np.full(len(rows), -np.inf)  # max similarity to a selected candidate
    eligible = np.ones(len(rows), dtype=bool)
    selected: list[int] = []
    while len(selected) < k and eligible.any():
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = np.where(eligible, lambda_ * relevance - (1 - lambda_) * penalty, -np.inf)
        best = int(np.argmax(score))
        selected.append(best)
        eligible[best] = False
        if groups is not None and groups[best] is not None:
            eligible &= np.asarray([g != groups[best] for g in groups])
        redundancy = np.maximum(redundancy, rows @ rows[best])
    return selected


def _normalised(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class RecommendQuery:
    """kNN from a profile vector without the viewed products (template ``recommend``)."""

    vector: Vector
    model_id: str
    exclude: tuple[ProductRef, ...] = ()
    filters: Filters = Filters()
    k: int = 60
    num_candidates: int = 120
    with_vectors: bool = False

    template: ClassVar[str] = "recommend"

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.num_candidates <= MAX_NUM_CANDIDATES:
            raise ValueError(f"need 1 <= k <= num_candidates <= {MAX_NUM_CANDIDATES}")

    def body(self) -> dict[str, Any]:
        vector = as_floats(self.vector)
        must_not = [ref.exclusion()[0] for ref in self.exclude] + [{"match_none": {}}]
        return {
            "knn": {
                "field": VECTOR_FIELD,
                "query_vector": vector,
                "k": self.k,
                "num_candidates": self.num_candidates,
                "filter": {
                    "bool": {
                        "filter": filter_clauses(self.filters, model_id=self.model_id),
                        "must_not": must_not,
                    }
                },
            },
            "rescore": exact_rescore(vector, window=self.k),
            "size": self.k,
            "_source": (
                mappings.HIT_SOURCE_WITH_VECTOR if self.with_vectors else mappings.HIT_SOURCE
            ),
        }

    def template_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "query_vector": as_floats(self.vector),
            "model_id": self.model_id,
            "k": self.k,
            "num_candidates": self.num_candidates,
            **self.filters.template_params(),
        }
        if self.exclude:
            params["exclude"] = [
                {"exclude_merchant_id": ref.merchant_id, "exclude_product_id": ref.product_id}
                for ref in self.exclude
            ]
        if self.with_vectors:
            params["with_vectors"] = True
        return params


@dataclass(frozen=True)
class Profile:
    model_id: str
    vector: list[float]
    found: list[ProductRef]  # viewed products with a vector, in first-seen order
    missing: list[ProductRef]  # viewed products not (or no longer) indexed
    exclude: tuple[ProductRef, ...]  # every viewed product


@dataclass
class Recommendations:
    profile: Profile
    k: int
    mmr_lambda: float
    hits: list[dict[str, Any]]
    requests: list[dict[str, Any]] = field(default_factory=list)


class Recommender:
    """Profiles and recommendations over the searcher's alias (same model checks and cache)."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher
        self.settings = searcher.settings

    def profile(self, viewed: Sequence[Viewed], *, now: float) -> Profile:
        """The shopper's profile vector; ``product_not_found`` when no viewed product is
        indexed with the index's model."""
        if not viewed:
            raise QueryError("invalid_query", "give at least one viewed product")
        model_id = self.searcher.index_info().model_id
        products = list(dict.fromkeys(v.product for v in viewed))
        lookups = [ProductVectorQuery(p, model_id) for p in products]
        searches: list[dict[str, Any]] = []
        for lookup in lookups:
            searches += [{"index": self.settings.index_alias}, lookup.body()]
        responses = self.searcher.es.msearch(searches=searches)["responses"]
        vectors: dict[ProductRef, list[float]] = {}
        for product, response in zip(products, responses, strict=True):
            if "error" in response:
                raise RuntimeError(f"Elasticsearch failed a product-vector lookup: {response}")
            hits = response["hits"]["hits"]
            if hits:
                vectors[product] = hits[0]["_source"][VECTOR_FIELD]
        if not vectors:
            raise QueryError("product_not_found", "none of the viewed products is indexed")
        settings = self.settings
        weights = recency_weights(
            viewed,
            now=now,
            half_life_s=settings.recommend_half_life_s,
            position_half_life=settings.recommend_position_half_life,
        )
        per_product: dict[ProductRef, float] = {}
        for view, weight in zip(viewed, weights, strict=True):
            if view.product in vectors:
                per_product[view.product] = per_product.get(view.product, 0.0) + weight
        try:
            vector = profile_vector([vectors[p] for p in per_product], list(per_product.values()))
        except ValueError as exc:
            raise QueryError("invalid_query", str(exc)) from exc
        return Profile(
            model_id=model_id,
            vector=as_floats(vector),
            found=list(per_product),
            missing=[p for p in products if p not in vectors],
            exclude=tuple(products),
        )

    def window(self, k: int | None) -> int:
        """Products to recommend: ``k``, or the search default; within the search limit."""
        k = k or self.settings.search_default_k
        if not 1 <= k <= self.settings.search_max_k:
            raise QueryError(
                "invalid_query", f"k must be between 1 and {self.settings.search_max_k}"
            )
        return k

    def candidates_query(
        self, profile: Profile, filters: Filters, k: int, *, with_vectors: bool
    ) -> RecommendQuery:
        """The kNN that fetches the candidates for ``k`` recommendations."""
        fetch = min(MAX_NUM_CANDIDATES, k * self.settings.recommend_overfetch)
        return RecommendQuery(
            profile.vector,
            profile.model_id,
            profile.exclude,
            filters,
            k=fetch,
            num_candidates=min(
                MAX_NUM_CANDIDATES, max(self.settings.search_num_candidates, 2 * fetch)
            ),
            with_vectors=with_vectors,
        )

    def recommend(
        self,
        viewed: Sequence[Viewed],
        *,
        now: float,
        filters: Filters | None = None,
        k: int | None = None,
        mmr_lambda: float | None = None,
    ) -> Recommendations:
        k = self.window(k)
        lam = self.settings.recommend_mmr_lambda if mmr_lambda is None else mmr_lambda
        profile = self.profile(viewed, now=now)
        query = self.candidates_query(profile, filters or Filters(), k, with_vectors=True)
        try:
            response = self.searcher.es.search(index=self.settings.index_alias, **query.body())
        except BadRequestError as exc:
            raise QueryError("invalid_query", f"Elasticsearch refused the search: {exc}") from exc
        hits = dedup(response["hits"]["hits"])
        order = diversify(profile.vector, hits, k=k, lambda_=lam)
        return Recommendations(
            profile=profile,
            k=k,
            mmr_lambda=lam,
            hits=[_hit(hits[i], profile.vector) for i in order],
            requests=[template_call(self.settings.index_alias, query)],
        )


def template_call(alias: str, query: RecommendQuery) -> dict[str, Any]:
    """The stored-template call that runs ``query`` (as ``explain`` reports search requests)."""
    return {
        "list": "recommend",
        "weight": None,
        "template_id": mappings.search_template_id(alias, query.template),
        "params": query.template_params(),
    }


def diversify(profile: Vector, hits: Sequence[Hit], *, k: int, lambda_: float) -> list[int]:
    """MMR over product hits that carry their vectors, one per duplicate group."""
    if not hits:
        return []
    vectors = np.asarray([hit["_source"][VECTOR_FIELD] for hit in hits], dtype=np.float64)
    groups = [hit["_source"].get("duplicate_group") for hit in hits]
    return mmr(profile, vectors, k=k, lambda_=lambda_, groups=groups)


def _hit(hit: Hit, profile: Sequence[float]) -> dict[str, Any]:
    """A hit as search hits look, scored by its cosine to the profile."""
    source = hit["_source"]
    vector = np.asarray(source[VECTOR_FIELD], dtype=np.float64)
    cosine = float(vector @ np.asarray(profile) / (np.linalg.norm(vector) or 1.0))
    return {"document_id": hit["_id"], **{f: source.get(f) for f in HIT_FIELDS}, "score": cosine}
