"""Search request bodies (pure functions returning plain dicts) and their execution.

Filters are applied inside the kNN search (Elasticsearch's ``knn.filter``), not after it, so a
filtered query still returns ``k`` matching products when they exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch

VECTOR_FIELD = "image_vector"
MAX_NUM_CANDIDATES = 10_000


@dataclass(frozen=True)
class Filters:
    tags_all: list[str] = field(default_factory=list)
    tags_any: list[str] = field(default_factory=list)
    category: str | None = None
    merchant_id: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    currency: str | None = None
    in_stock: bool | None = None
    exclude_quality_flags: list[str] = field(default_factory=list)


def filter_clauses(filters: Filters, *, model_id: str | None = None) -> list[dict[str, Any]]:
    """Bool-filter clauses; ``model_id`` keeps vectors of other models out of the comparison."""
    clauses: list[dict[str, Any]] = [{"term": {"tags": tag.lower()}} for tag in filters.tags_all]
    if filters.tags_any:
        clauses.append({"terms": {"tags": [t.lower() for t in filters.tags_any]}})
    if filters.category:
        clauses.append({"term": {"category": filters.category.lower()}})
    if filters.merchant_id:
        clauses.append({"term": {"merchant_id": filters.merchant_id}})
    if filters.min_price is not None or filters.max_price is not None:
        bounds = {"gte": filters.min_price, "lte": filters.max_price}
        clauses.append({"range": {"price": {k: v for k, v in bounds.items() if v is not None}}})
    if filters.currency:
        clauses.append({"term": {"currency": filters.currency}})
    if filters.in_stock is not None:
        clauses.append({"term": {"in_stock": filters.in_stock}})
    if filters.exclude_quality_flags:
        clauses.append(
            {"bool": {"must_not": [{"terms": {"quality_flags": filters.exclude_quality_flags}}]}}
        )
    if model_id:
        clauses.append({"term": {"model_id": model_id}})
    return clauses


def knn_search_body(
    vector: list[float],
    *,
    model_id: str,
    filters: Filters = Filters(),
    k: int = 10,
    num_candidates: int | None = None,
) -> dict[str, Any]:
    """kNN over image vectors with filters applied during the HNSW search."""
    if k < 1:
        raise ValueError("k must be at least 1")
    candidates = num_candidates or max(100, 10 * k)
    if not k <= candidates <= MAX_NUM_CANDIDATES:
        raise ValueError(f"num_candidates must be between k ({k}) and {MAX_NUM_CANDIDATES}")
    return {
        "knn": {
            "field": VECTOR_FIELD,
            "query_vector": [float(x) for x in vector],
            "k": k,
            "num_candidates": candidates,
            "filter": {"bool": {"filter": filter_clauses(filters, model_id=model_id)}},
        },
        "size": k,
        "_source": {"excludes": [VECTOR_FIELD]},
    }


def run_search(es: Elasticsearch, index: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Execute a body; return hits as ``{"_id", "_score", **_source}``."""
    response = es.search(index=index, **body)
    return [{"_id": h["_id"], "_score": h["_score"], **h["_source"]} for h in response["hits"]["hits"]]
