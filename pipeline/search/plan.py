"""What a search asks for and how it becomes result lists: the query object, its validation
and the plan of ranked lists with their fusion weights. Pure: no Elasticsearch, no model.

Query shapes (``SearchQuery.shape``):

- ``image``: an image (or a vector from ``POST /v1/embed``) -> kNN on the image vectors;
- ``text``: CLIP text embedding -> kNN, fused with BM25 over title, description and tags
  (``text_mode="hybrid"``, the default; ``"vector"`` is the kNN list alone);
- ``image_text``: "like this, but ...": ``combine="embedding"`` (default) searches with
  ``normalise(w * image + (1 - w) * text)``; ``combine="lists"`` runs an image and a text kNN
  list and fuses them with weights ``w`` and ``1 - w`` (``w`` = ``image_weight``, default 0.5);
- ``more_like_this``: a product's stored vector (its primary image) with the product excluded;
  with text it behaves like ``image_text``;
- ``keyword``: BM25 + filters, or filters alone without text (``text_mode="keyword"``, or no
  image, vector or product at all); paged by Elasticsearch (from/size or ``search_after``).

List weights: image-side kNN ``w`` (1 without text), text kNN ``1 - w`` (1 without an image),
combined-embedding kNN 1, BM25 ``keyword_weight * (1 - w)`` (``keyword_weight`` without an
image). So ``image_weight`` = 1 is the image alone and 0 the text alone. Lists of weight 0 are
not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pipeline.search.fusion import Fusion, combine_vectors
from pipeline.search.query import (
    MAX_NUM_CANDIDATES,
    MAX_RESULT_WINDOW,
    ExactQuery,
    Filters,
    KeywordQuery,
    KnnQuery,
    ProductRef,
    Sort,
    Vector,
)
from pipeline.settings import VitrineSettings

TextMode = Literal["hybrid", "vector", "keyword"]
Combine = Literal["embedding", "lists"]
Shape = Literal["image", "text", "image_text", "more_like_this", "keyword"]
MAX_TEXT_CHARS = 1000


class QueryError(ValueError):
    """A search that cannot be run as asked. ``reason`` is machine-readable:

    ``invalid_query`` (parameters), ``dimension_mismatch`` / ``model_mismatch`` (a query vector
    that does not fit the index), ``product_not_found`` (more-like-this), ``index_not_found``,
    ``encoder_model_mismatch`` (this process's model is not the index's), ``text_not_supported``
    (a text vector from an image-only encoder; hybrid text searches fall back to keywords).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class SearchOptions(BaseModel):
    """How to search: every search parameter but the query itself (image, vector or product).

    The one declaration of these parameters: ``POST /v1/search``'s request model extends it,
    and the CLI builds ``SearchQuery`` (which extends it too) from its options. Constraints
    that do not depend on the settings are checked here; ``validate`` checks the rest.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    filters: Filters = Field(default_factory=Filters)
    k: int | None = Field(
        None,
        ge=1,
        description="Products in the ranked window (default 20, "
        "max 200); vector searches rank at most k products.",
    )
    num_candidates: int | None = Field(
        None,
        ge=1,
        le=MAX_NUM_CANDIDATES,
        description="HNSW candidates (default max(100, 2 x 3k)).",
    )
    from_: int = Field(0, alias="from", ge=0, description="Page offset within the window.")
    size: int | None = Field(None, ge=0, description="Page size (default k).")
    search_after: list[Any] | None = Field(
        None, description="Keyword searches: next_search_after of the previous page."
    )
    sort: Sort = Field("relevance", description="Keyword searches only.")
    text_mode: TextMode = Field(
        "hybrid", description="How text is matched: CLIP kNN + BM25, CLIP kNN, or BM25."
    )
    combine: Combine = Field(
        "embedding", description="Image + text: one mixed vector, or two fused kNN lists."
    )
    fusion: Fusion = Field(
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

    def options(self) -> dict[str, Any]:
        """These parameters by name, to build another model that extends ``SearchOptions``."""
        return {name: getattr(self, name) for name in SearchOptions.model_fields}


def checked(response: dict[str, Any], what: str) -> dict[str, Any]:
    """One ``msearch`` response, or the error it holds raised: ``QueryError`` when
    Elasticsearch refused the request (400), else ``RuntimeError``."""
    if "error" not in response:
        return response
    error = response["error"]
    reason = error.get("root_cause", [error])[0].get("reason", str(error))
    if response.get("status", 500) == 400:
        raise QueryError("invalid_query", f"Elasticsearch refused the search: {reason}")
    raise RuntimeError(f"Elasticsearch failed the {what}: {reason}")


class SearchQuery(SearchOptions):
    """One search. Give at most one of ``image``, ``vector`` (with ``vector_model_id``) and
    ``product``; ``text`` may go with any of them. ``k`` products form the ranked result window
    (default ``search_default_k``), of which ``from_``/``size`` (default k) select a page."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: Image.Image | None = None
    vector: Sequence[float] | None = None
    vector_model_id: str | None = None
    product: ProductRef | None = None

    @property
    def clean_text(self) -> str | None:
        return self.text.strip() or None if self.text else None

    @property
    def has_visual(self) -> bool:
        return self.image is not None or self.vector is not None or self.product is not None

    @property
    def shape(self) -> Shape:
        if self.product is not None:
            return "more_like_this"
        if self.has_visual:
            return "image_text" if self.clean_text else "image"
        if self.clean_text and self.text_mode != "keyword":
            return "text"
        return "keyword"


@dataclass(frozen=True)
class Window:
    """Sizes of a vector search: ``k`` products, ``k_docs`` image documents from kNN."""

    k: int
    k_docs: int
    num_candidates: int
    from_: int
    size: int


def validate(query: SearchQuery, settings: VitrineSettings) -> Window:
    """Check the query against itself and the limits; return the sizes to search with."""

    def bad(message: str) -> QueryError:
        return QueryError("invalid_query", message)

    visuals = [query.image is not None, query.vector is not None, query.product is not None]
    if sum(visuals) > 1:
        raise bad("give at most one of image, vector and product")
    if query.vector is not None and not query.vector_model_id:
        raise bad("a query vector needs the model_id it was made with (POST /v1/embed returns it)")
    k = settings.search_default_k if query.k is None else query.k
    if not 1 <= k <= settings.search_max_k:
        raise bad(f"k must be between 1 and {settings.search_max_k}")
    size = k if query.size is None else query.size
    if not 0 <= size <= settings.search_max_k:
        raise bad(f"size must be between 0 and {settings.search_max_k}")
    if query.shape == "keyword":
        if query.from_ + size > MAX_RESULT_WINDOW:
            raise bad(f"from + size must be <= {MAX_RESULT_WINDOW}; page deeper with search_after")
        if query.search_after and query.from_:
            raise bad("use either from or search_after, not both")
    else:
        if query.search_after:
            raise bad("search_after pages keyword searches; page vector searches with from/size")
        if query.sort != "relevance":
            raise bad("sort applies to keyword searches only")
    k_docs = min(k * settings.search_overfetch, MAX_NUM_CANDIDATES)
    if query.num_candidates is None:
        candidates = min(MAX_NUM_CANDIDATES, max(settings.search_num_candidates, 2 * k_docs))
    elif k <= query.num_candidates <= MAX_NUM_CANDIDATES:
        candidates = query.num_candidates
    else:
        raise bad(f"num_candidates must be between k ({k}) and {MAX_NUM_CANDIDATES}")
    return Window(k, min(k_docs, candidates), candidates, query.from_, size)


@dataclass(frozen=True)
class ListPlan:
    """One ranked list to run: its name (``image``, ``text``, ``image_text``, ``keyword``),
    fusion weight and query (kNN, or exact when the query planner chose it)."""

    name: str
    weight: float
    query: KnnQuery | ExactQuery | KeywordQuery


def plan_lists(
    query: SearchQuery,
    window: Window,
    *,
    model_id: str,
    visual_vector: Vector | None,
    text_vector: Vector | None,
) -> list[ListPlan]:
    """The ranked lists of a vector search (every shape but ``keyword``) and their weights."""
    text = query.clean_text
    has_visual = visual_vector is not None
    w = query.image_weight if has_visual and text else 1.0

    def knn(vector: Vector) -> KnnQuery:
        return KnnQuery(
            vector, model_id, query.filters, window.k_docs, window.num_candidates, query.product
        )

    lists: list[ListPlan] = []
    if visual_vector is not None and text_vector is not None and query.combine == "embedding":
        combined = combine_vectors(visual_vector, text_vector, query.image_weight)
        lists.append(ListPlan("image_text", 1.0, knn(combined)))
    else:
        if visual_vector is not None:
            lists.append(ListPlan("image", w, knn(visual_vector)))
        if text_vector is not None:
            lists.append(ListPlan("text", 1.0 - w if has_visual else 1.0, knn(text_vector)))
    if text and query.text_mode in ("hybrid", "keyword"):
        weight = query.keyword_weight * (1.0 - w if has_visual else 1.0)
        keyword = KeywordQuery(text, query.filters, model_id, 0, window.k, exclude=query.product)
        lists.append(ListPlan("keyword", weight, keyword))
    lists = [plan for plan in lists if plan.weight > 0]
    if not lists:
        raise QueryError("invalid_query", "every result list has weight 0")
    return lists


def needs_text_vector(query: SearchQuery) -> bool:
    return bool(query.clean_text) and query.text_mode != "keyword" and query.shape != "keyword"
