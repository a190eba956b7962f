"""Request and response models of ``POST /v1/embed`` and ``POST /v1/search`` (the contract the
demo page and other clients build on; keep it stable)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.documents import ID_PATTERN
from pipeline.search.plan import MAX_TEXT_CHARS

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


class SearchFilters(BaseModel):
    """Applied inside the kNN search (never after it) and to keyword searches."""

    model_config = ConfigDict(extra="forbid")

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


class SearchRequest(BaseModel):
    """One search. Give at most one of image_url, image_base64 (or the uploaded image),
    vector (+ model_id) and product_id (+ merchant_id); text goes with any of them. Without
    any of them it is a keyword search (text_mode "keyword" forces one)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
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
    filters: SearchFilters = Field(default_factory=SearchFilters)
    k: int | None = Field(
        None,
        ge=1,
        description="Products in the ranked window (default 20, "
        "max 200); vector searches rank at most k products.",
    )
    num_candidates: int | None = Field(
        None, ge=1, le=10_000, description="HNSW candidates (default max(100, 2 x 3k))."
    )
    from_: int = Field(0, alias="from", ge=0, description="Page offset within the window.")
    size: int | None = Field(None, ge=0, description="Page size (default k).")
    search_after: list[Any] | None = Field(
        None, description="Keyword searches: next_search_after of the previous page."
    )
    sort: Literal["relevance", "price_asc", "price_desc", "newest"] = Field(
        "relevance", description="Keyword searches only."
    )
    text_mode: Literal["hybrid", "vector", "keyword"] = Field(
        "hybrid", description="How text is matched: CLIP kNN + BM25, CLIP kNN, or BM25."
    )
    combine: Literal["embedding", "lists"] = Field(
        "embedding", description="Image + text: one mixed vector, or two fused kNN lists."
    )
    fusion: Literal["rrf", "linear"] = Field(
        "rrf", description="Reciprocal rank fusion (rrf_k 60) or min-max linear combination."
    )
    image_weight: float = Field(0.5, ge=0, le=1, description="Image vs text (1 = image only).")
    keyword_weight: float = Field(1.0, ge=0, description="Weight of the BM25 list.")
    rrf_k: int | None = Field(None, ge=1, description="RRF rank constant (default 60).")
    explain: bool = Field(False, description="Per-hit list ranks/scores and the template calls.")
    facets: bool = Field(
        False,
        description="Counts by tag, category, merchant, price bucket, zero-shot category and "
        "tags, and quality flag.",
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


class SearchHit(BaseModel):
    document_id: str
    product_id: str
    merchant_id: str
    title: str
    description: str | None = None
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    price: float | None = None
    currency: str | None = None
    in_stock: bool | None = None
    image_url: str | None = None
    image_index: int | None = None
    image_sha256: str | None = None
    quality_flags: list[str] = Field(default_factory=list)
    auto_category: str | None = None
    auto_tags: list[str] = Field(default_factory=list)
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
