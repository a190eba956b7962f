"""Request and response models of ``POST /v1/embed`` and ``POST /v1/search`` (the contract the
demo page and other clients build on; keep it stable)."""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pipeline.documents import ID_PATTERN, ImageFields, ProductFields
from pipeline.search.plan import MAX_TEXT_CHARS, QueryError, SearchOptions, SearchQuery
from pipeline.search.query import ProductRef

MAX_VECTOR_DIMS = 4096


class ErrorDetail(BaseModel):
    reason: str = Field(
        description="Machine-readable cause, e.g. corrupt, too_large, "
        "dimension_mismatch, model_mismatch, product_not_found."
    )
    message: str = Field(description="What went wrong, for people.")


class ErrorResponse(BaseModel):
    detail: ErrorDetail


class EmbedRequest(BaseModel):
    """A query image (``image_url`` or ``image_base64``), a text, or both."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="Query text.")
    image_url: str | None = Field(
        None, max_length=2048, description="http(s) URL of the query image (fetched by the API)."
    )
    image_base64: str | None = Field(
        None, description="The query image as base64 (a data: URL prefix is allowed)."
    )
    image_weight: float = Field(
        0.5, ge=0, le=1, description="With image and text: normalise(w*image + (1-w)*text)."
    )


EMBED_EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {"summary": "Text", "value": {"text": "red leather handbag"}},
    "image_url": {
        "summary": "Image by URL",
        "value": {"image_url": "https://cdn.example.com/q.jpg"},
    },
    "image_text": {
        "summary": "Image and text, mixed",
        "value": {"image_url": "https://cdn.example.com/q.jpg", "text": "red", "image_weight": 0.7},
    },
}


class EmbedResponse(BaseModel):
    model_id: str = Field(description="Model of the vector; pass it as model_id to templates.")
    dims: int
    kind: Literal["image", "text", "image_text"]
    vector: list[float] = Field(description="Unit-length query vector (query_vector).")


SEARCH_EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {
        "summary": "Text, hybrid (CLIP text kNN + BM25, RRF)",
        "value": {"text": "red sneaker", "filters": {"in_stock": True}, "k": 20, "facets": True},
    },
    "image_url": {
        "summary": "Image by URL, filtered",
        "value": {
            "image_url": "https://cdn.example.com/query.jpg",
            "filters": {"tags_all": ["sale"], "category": "shoes", "max_price": 80},
        },
    },
    "image_text": {
        "summary": "Like this image, but in red",
        "value": {
            "image_url": "https://cdn.example.com/query.jpg",
            "text": "red",
            "image_weight": 0.6,
            "explain": True,
        },
    },
    "more_like_this": {
        "summary": "More like this product",
        "value": {"merchant_id": "merchant-a", "product_id": "sku-123", "k": 12},
    },
    "keyword": {
        "summary": "Keyword search with facets, sorted by price",
        "value": {"text": "sneaker", "text_mode": "keyword", "sort": "price_asc", "facets": True},
    },
}


class SearchRequest(SearchOptions):
    """One search. Give at most one of image_url, image_base64 (or the uploaded image),
    vector (+ model_id) and product_id (+ merchant_id); text goes with any of them. Without
    any of them it is a keyword search (text_mode "keyword" forces one)."""

    image_url: str | None = Field(None, max_length=2048, description="http(s) URL.")
    image_base64: str | None = Field(None, description="Base64 image (data: URL allowed).")
    vector: list[float] | None = Field(
        None, max_length=MAX_VECTOR_DIMS, description="A query vector from POST /v1/embed."
    )
    model_id: str | None = Field(None, description="The model_id of vector (required with it).")
    product_id: str | None = Field(
        None, pattern=ID_PATTERN, description="More like this product (needs merchant_id)."
    )
    merchant_id: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description="The product's merchant (filters.merchant_id restricts results to a merchant).",
    )

    def to_query(self, image: Image.Image | None) -> SearchQuery:
        """The search with its query image decoded (the API fetches or decodes it)."""
        product = None
        if self.product_id or self.merchant_id:
            if not (self.product_id and self.merchant_id):
                raise QueryError("invalid_query", "product_id and merchant_id go together")
            product = ProductRef(self.merchant_id, self.product_id)
        return SearchQuery(
            **self.options(),
            image=image,
            vector=self.vector,
            vector_model_id=self.model_id,
            product=product,
        )


class ListContribution(BaseModel):
    rank: int
    score: float | None
    weight: float
    contribution: float


class Explanation(BaseModel):
    fusion: str | None = Field(description="rrf, linear, or null for a single list.")
    rrf_k: int | None = None
    lists: dict[str, ListContribution] = Field(
        description="By list (image, text, image_text, keyword): where the product ranked."
    )


class SearchHit(ImageFields, ProductFields):
    """One product: the fields of its best-ranked image document, and how it ranked."""

    document_id: str
    score: float = Field(description="Fused score (RRF/linear), or Elasticsearch's for one list.")
    sort: list[Any] | None = Field(None, description="Keyword searches: this hit's sort values.")
    explanation: Explanation | None = None


class FacetBucket(BaseModel):
    value: Any = Field(description="Tag, category, merchant id or price bucket key.")
    count: int = Field(description="Products.")
    from_: float | None = Field(None, alias="from")
    to: float | None = None


class TemplateCall(BaseModel):
    list: str
    weight: float | None
    template_id: str
    params: dict[str, Any]


class QueryPlanInfo(BaseModel):
    """Exact search over the filtered documents, or HNSW kNN with a re-scored pool."""

    method: Literal["exact", "knn"]
    reason: str
    estimated_docs: int = Field(
        description="At most this many image documents kept by the filter (a cached count; price "
        "bounds counted widened by up to 19 %)."
    )
    k_docs: int = Field(description="Image documents each vector list returns.")
    pool: int = Field(description="Documents scored with the exact float cosine.")
    num_candidates: int | None = Field(None, description="HNSW candidates (kNN only).")
    exact_k_docs: int = Field(
        description="Image documents an exact list returns: k where every product the filter "
        "keeps has one image, else the over-fetch."
    )
    widened: bool = Field(description="A second, wider pass after flat first-pass scores.")


class SearchResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    shape: Literal["image", "text", "image_text", "more_like_this", "keyword"]
    model_id: str | None
    fusion: str | None
    k: int
    from_: int = Field(alias="from")
    size: int
    total: int = Field(description="Products in the window (vector) or matching (keyword).")
    total_relation: str
    hits: list[SearchHit]
    facets: dict[str, list[FacetBucket]] | None = None
    next_search_after: list[Any] | None = None
    requests: list[TemplateCall] | None = Field(
        None, description="With explain: the stored-template calls that reproduce this search."
    )
    plan: QueryPlanInfo | None = Field(
        None, description="With explain, vector searches: the query planner's choice and why."
    )
