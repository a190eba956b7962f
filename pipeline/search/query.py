"""Search request bodies: pure functions and frozen query classes returning plain dicts.

Each query class mirrors one stored search template in ``es_mappings/search_templates/``:
``body()`` is what the Python path sends, ``template_params()`` the parameters with which the
template renders exactly that body (tests render both and compare). Filters are applied inside
the kNN search (``knn.filter``), not after it, so a filtered query still returns ``k`` matching
documents when they exist, and the ``model_id`` clause keeps vectors of other models out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.documents import ID_PATTERN
from pipeline.es import mappings
from pipeline.es.mappings import COSINE_SCRIPT, HIT_SOURCE, VECTOR_FIELD, exact_rescore

MAX_NUM_CANDIDATES = 10_000  # Elasticsearch's limit
MAX_RESULT_WINDOW = 10_000  # index.max_result_window (from + size)
KEYWORD_FIELDS = ["title^3", "description", "image_text"]
TAG_BOOST = 2

Vector = Sequence[float] | np.ndarray  # a query vector: a list, or an encoder's output row
Sort = Literal["relevance", "price_asc", "price_desc", "newest"]
_TIE_BREAK = [{"_score": "desc"}, {"merchant_id": "asc"}, {"product_id": "asc"}]
_SORT_FIRST: dict[str, dict[str, str] | None] = {
    "relevance": None,
    "price_asc": {"price": "asc"},
    "price_desc": {"price": "desc"},
    "newest": {"indexed_at": "desc"},
}


# The one declaration of the search filters: POST /v1/search takes this model as its "filters"
# (its docstring and title "SearchFilters" are the API docs'), the CLI builds it from its
# options, and template_params / filter_clauses turn it into Elasticsearch terms.
class Filters(BaseModel):
    """Applied inside the kNN search (never after it) and to keyword searches."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="SearchFilters")

    tags_all: list[str] = Field(default_factory=list, max_length=50, description="Has every tag.")
    tags_any: list[str] = Field(
        default_factory=list, max_length=50, description="Has one of these."
    )
    category: str | None = Field(None, max_length=200)
    merchant_id: str | None = Field(None, pattern=ID_PATTERN, description="Only this merchant.")
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    in_stock: bool | None = Field(
        None, description="true: in stock only; false: out of stock only."
    )
    exclude_quality_flags: list[str] = Field(
        default_factory=list,
        description="Leave out images with these flags (low_resolution, blurry, blank, too_dark, "
        "overexposed, extreme_aspect_ratio, text_overlay, category_mismatch).",
    )
    auto_tags_all: list[str] = Field(
        default_factory=list, max_length=50, description="Has every zero-shot tag (colour:red)."
    )
    auto_category: str | None = Field(
        None, max_length=200, description="Zero-shot category (auto_tag processor)."
    )
    duplicate_group: str | None = Field(
        None,
        max_length=200,
        description="Only this near-duplicate group (a hit's duplicate_group): the same item.",
    )

    def template_params(self) -> dict[str, Any]:
        """The filter parameters of the search templates (absent when not filtering)."""
        params: dict[str, Any] = {}
        if self.tags_all:
            params["tags_all"] = [tag.lower() for tag in self.tags_all]
        if self.tags_any:
            params["tags_any"] = [tag.lower() for tag in self.tags_any]
        if self.category:
            params["category"] = self.category.lower()
        for name in ("merchant_id", "min_price", "max_price", "currency"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        if self.in_stock is True:
            params["in_stock"] = True
        elif self.in_stock is False:
            params["out_of_stock"] = True
        if self.exclude_quality_flags:
            params["exclude_quality_flags"] = list(self.exclude_quality_flags)
        if self.auto_tags_all:
            params["auto_tags_all"] = [tag.lower() for tag in self.auto_tags_all]
        if self.auto_category:
            params["auto_category"] = self.auto_category.lower()
        if self.duplicate_group:
            params["duplicate_group"] = self.duplicate_group
        return params


def filter_clauses(filters: Filters, *, model_id: str | None = None) -> list[dict[str, Any]]:
    """Bool-filter clauses, in the order the templates' ``filters`` partial renders them."""
    p = filters.template_params()
    clauses: list[dict[str, Any]] = [{"term": {"tags": tag}} for tag in p.get("tags_all", [])]
    if "tags_any" in p:
        clauses.append({"bool": {"should": [{"terms": {"tags": p["tags_any"]}}]}})
    for name in ("category", "merchant_id"):
        if name in p:
            clauses.append({"term": {name: p[name]}})
    if "min_price" in p:
        clauses.append({"range": {"price": {"gte": p["min_price"]}}})
    if "max_price" in p:
        clauses.append({"range": {"price": {"lte": p["max_price"]}}})
    if "currency" in p:
        clauses.append({"term": {"currency": p["currency"]}})
    if filters.in_stock is not None:
        clauses.append({"term": {"in_stock": filters.in_stock}})
    if "exclude_quality_flags" in p:
        flags = p["exclude_quality_flags"]
        clauses.append({"bool": {"must_not": [{"terms": {"quality_flags": flags}}]}})
    clauses.extend({"term": {"auto_tags": tag}} for tag in p.get("auto_tags_all", []))
    if "auto_category" in p:
        clauses.append({"term": {"auto_category": p["auto_category"]}})
    if "duplicate_group" in p:
        clauses.append({"term": {"duplicate_group": p["duplicate_group"]}})
    if model_id:
        clauses.append({"term": {"model_id": model_id}})
    return clauses


def as_floats(vector: Vector) -> list[float]:
    """A query vector as JSON-ready Python floats (a list, or an encoder's output row)."""
    return np.asarray(vector, dtype=np.float64).tolist()


@dataclass(frozen=True)
class ProductRef:
    merchant_id: str
    product_id: str

    def exclusion(self) -> list[dict[str, Any]]:
        """``must_not`` clauses that leave this product out."""
        return [{"bool": {"filter": mappings.product_filter(self.merchant_id, self.product_id)}}]

    def exclusion_params(self) -> dict[str, str]:
        return {"exclude_merchant_id": self.merchant_id, "exclude_product_id": self.product_id}


@dataclass(frozen=True)
class KnnQuery:
    """kNN over image vectors (template ``knn``, or ``more-like-this`` when excluding)."""

    vector: Vector
    model_id: str
    filters: Filters = Filters()
    k: int = 10
    num_candidates: int | None = None
    exclude: ProductRef | None = None
    size: int | None = None  # hits returned, of the k retrieved and re-scored (default k)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.size is not None and not 1 <= self.size <= self.k:
            raise ValueError("size must be between 1 and k")
        if not self.k <= self.candidates <= MAX_NUM_CANDIDATES:
            raise ValueError(
                f"num_candidates must be between k ({self.k}) and {MAX_NUM_CANDIDATES}"
            )

    @property
    def candidates(self) -> int:
        return self.num_candidates or min(MAX_NUM_CANDIDATES, max(100, 10 * self.k))

    @cached_property
    def query_vector(self) -> list[float]:
        return as_floats(self.vector)

    @property
    def template(self) -> str:
        return "more-like-this" if self.exclude else "knn"

    def body(self) -> dict[str, Any]:
        bool_filter: dict[str, Any] = {
            "filter": filter_clauses(self.filters, model_id=self.model_id)
        }
        if self.exclude:
            bool_filter["must_not"] = self.exclude.exclusion()
        return {
            "knn": {
                "field": VECTOR_FIELD,
                "query_vector": self.query_vector,
                "k": self.k,
                "num_candidates": self.candidates,
                "filter": {"bool": bool_filter},
            },
            "rescore": exact_rescore(self.query_vector, window=self.k),
            "size": self.size or self.k,
            "_source": HIT_SOURCE,
        }

    def template_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "query_vector": self.query_vector,
            "model_id": self.model_id,
            "k": self.k,
            "num_candidates": self.candidates,
            **self.filters.template_params(),
        }
        if self.size:
            params["size"] = self.size
        if self.exclude:
            params.update(self.exclude.exclusion_params())
        return params


@dataclass(frozen=True)
class ExactQuery:
    """Exact (brute-force) cosine over every document the filter keeps (template ``exact``):
    what the query planner runs instead of HNSW when the filter keeps few documents. Scores are
    on kNN's (1 + cos) / 2 scale, so both plans fuse and compare alike."""

    vector: Vector
    model_id: str
    filters: Filters = Filters()
    k: int = 10
    exclude: ProductRef | None = None

    template: ClassVar[str] = "exact"

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_RESULT_WINDOW:
            raise ValueError(f"k must be between 1 and {MAX_RESULT_WINDOW}")

    @cached_property
    def query_vector(self) -> list[float]:
        return as_floats(self.vector)

    def body(self) -> dict[str, Any]:
        bool_filter: dict[str, Any] = {
            "filter": filter_clauses(self.filters, model_id=self.model_id)
        }
        if self.exclude:
            bool_filter["must_not"] = self.exclude.exclusion()
        script = {"source": COSINE_SCRIPT, "params": {"query_vector": self.query_vector}}
        return {
            "query": {"script_score": {"query": {"bool": bool_filter}, "script": script}},
            "size": self.k,
            "_source": HIT_SOURCE,
        }

    def template_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "query_vector": self.query_vector,
            "model_id": self.model_id,
            "k": self.k,
            **self.filters.template_params(),
        }
        if self.exclude:
            params.update(self.exclude.exclusion_params())
        return params


@dataclass(frozen=True)
class KeywordQuery:
    """BM25 over title, description, text read from the image and tags, or every product
    without text (template
    ``keyword``). Only primary images (``image_index`` 0) are searched: one hit per product."""

    text: str | None = None
    filters: Filters = Filters()
    model_id: str | None = None
    from_: int = 0
    size: int = 20
    sort: Sort = "relevance"
    search_after: Sequence[Any] | None = None
    facets: bool = False
    exclude: ProductRef | None = None

    template: ClassVar[str] = "keyword"

    def __post_init__(self) -> None:
        if self.from_ < 0 or self.size < 0 or self.from_ + self.size > MAX_RESULT_WINDOW:
            raise ValueError(f"from and size must be >= 0 with from + size <= {MAX_RESULT_WINDOW}")
        if self.sort not in _SORT_FIRST:
            raise ValueError(f"sort must be one of {', '.join(_SORT_FIRST)}")

    def body(self) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if self.text:
            query["should"] = [
                {"multi_match": {"query": self.text, "fields": KEYWORD_FIELDS}},
                {"match": {"tags": {"query": self.text, "boost": TAG_BOOST}}},
                {
                    "match": {
                        "tags": {"query": self.text, "analyzer": "standard", "boost": TAG_BOOST}
                    }
                },
            ]
            query["minimum_should_match"] = 1
        if self.exclude:
            query["must_not"] = self.exclude.exclusion()
        query["filter"] = [
            *filter_clauses(self.filters, model_id=self.model_id),
            {"term": {"image_index": 0}},
        ]
        first = _SORT_FIRST[self.sort]
        body: dict[str, Any] = {
            "query": {"bool": query},
            "sort": [first, *_TIE_BREAK] if first else list(_TIE_BREAK),
            "track_scores": True,
            "from": self.from_,
            "size": self.size,
            "_source": HIT_SOURCE,
        }
        if self.search_after:
            body["search_after"] = list(self.search_after)
        if self.facets:
            body["aggs"] = mappings.facet_aggs()
        return body

    def template_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"from": self.from_, "size": self.size}
        params.update(self.filters.template_params())
        if self.text:
            params["text"] = self.text
        if self.model_id:
            params["model_id"] = self.model_id
        if self.sort != "relevance":
            params[f"sort_{self.sort}"] = True
        if self.search_after:
            params["search_after"] = list(self.search_after)
        if self.facets:
            params["facets"] = True
        if self.exclude:
            params.update(self.exclude.exclusion_params())
        return params


@dataclass(frozen=True)
class ProductVectorQuery:
    """The stored vector of a product's primary image (template ``product-vector``)."""

    product: ProductRef
    model_id: str | None = None

    template: ClassVar[str] = "product-vector"

    def body(self) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = [{"term": {"merchant_id": self.product.merchant_id}}]
        if self.model_id:
            clauses.append({"term": {"model_id": self.model_id}})
        clauses.append({"term": {"product_id": self.product.product_id}})
        return {
            "query": {"bool": {"filter": clauses}},
            "sort": [{"image_index": "asc"}],
            "size": 1,
            "_source": ["merchant_id", "product_id", "image_index", "model_id", VECTOR_FIELD],
        }

    def template_params(self) -> dict[str, Any]:
        params = {"merchant_id": self.product.merchant_id, "product_id": self.product.product_id}
        return {**params, "model_id": self.model_id} if self.model_id else params
