"""Recommendations from browsing history, and the shopper events they can come from.

- ``POST /v1/recommendations``: stateless; the body lists the recently viewed products (most
  recent first, optional ``at`` timestamps and ``weight``) or names a ``shopper``.
- ``POST /v1/events`` / ``DELETE /v1/events?shopper=``: record a shopper's views and
  add-to-cart events, or erase them; ``GET /v1/recommendations?shopper=`` recommends from them.
- ``POST /v1/recommendations/profile``: the profile vector and the ``<alias>-recommend``
  template parameters, for a frontend that queries Elasticsearch itself.

A shopper id is opaque (a random id kept by the shop's frontend); Vitrine stores nothing else
about the person: per event its kind, the product and the time, for ``shopper_history_ttl_s``
after the shopper's last event (30 days by default), at most ``shopper_history_max_events``
events (50). Every route counts against the search rate limit (per API key, or per client
address without one). Errors are those of ``/v1/search``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from pipeline.api.auth import SearchCaller
from pipeline.api.deps import SearcherDep, Services, State
from pipeline.api.models import ErrorResponse, SearchHit, TemplateCall
from pipeline.api.public import public_image_url
from pipeline.documents import ID_PATTERN
from pipeline.merchants.shoppers import SHOPPER_ID_PATTERN, EventKind, ShopperEvent
from pipeline.search.query import Filters, ProductRef
from pipeline.search.recommend import Recommender, Viewed, template_call
from pipeline.settings import VitrineSettings

router = APIRouter(prefix="/v1", tags=["recommendations"])

RETENTION = (
    "Shopper ids are opaque (a random id kept by the shop's frontend, never a name, e-mail or "
    "account id); per event only its kind, the product and the time are stored, in Redis, "
    "until VITRINE_SHOPPER_HISTORY_TTL_S (default 30 days) after the shopper's last event, at "
    "most VITRINE_SHOPPER_HISTORY_MAX_EVENTS (default 50) events. DELETE /v1/events erases "
    "them at once."
)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad parameters (e.g. both or neither of viewed and shopper)",
        401: "An API key was sent but is unknown or revoked (none is needed)",
        404: "None of the viewed products is indexed (product_not_found)",
        429: "Rate limit reached (the search limit: per API key, or per client address)",
        503: "No index, or Elasticsearch or Redis unreachable",
    }.items()
}
Shopper = Annotated[
    str,
    Field(pattern=SHOPPER_ID_PATTERN, description="Opaque shopper id (8-128 of A-Z a-z 0-9 _ -)."),
]


class ProductKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: str = Field(pattern=ID_PATTERN)
    product_id: str = Field(pattern=ID_PATTERN)


class ViewedItem(ProductKey):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    at: float | None = Field(
        None, description="When it was viewed (epoch seconds); without it, the list order counts."
    )
    weight: float = Field(1.0, gt=0, le=100, description="How much this view counts.")


class RecommendationRequest(BaseModel):
    """Either the recently viewed products (most recent first) or a shopper whose recorded
    events stand for them; the viewed products are never recommended."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    viewed: list[ViewedItem] | None = Field(None, min_length=1, max_length=100)
    shopper: Shopper | None = None
    filters: Filters = Field(default_factory=Filters)
    k: int | None = Field(None, ge=1, description="Products to recommend (default 20).")
    mmr_lambda: float | None = Field(
        None, ge=0, le=1, description="1: by similarity only; lower: more variety (default 0.7)."
    )
    explain: bool = Field(False, description="Add the template call that fetched candidates.")

    @model_validator(mode="after")
    def _one_source(self) -> RecommendationRequest:
        if (self.viewed is None) == (self.shopper is None):
            raise ValueError("give either viewed or shopper")
        return self


class ShopperQuery(Filters):
    """``GET /v1/recommendations`` query parameters: the shopper, the options and the filters."""

    model_config = ConfigDict(title="ShopperRecommendationQuery")

    shopper: Shopper
    k: int | None = Field(None, ge=1)
    mmr_lambda: float | None = Field(None, ge=0, le=1)
    explain: bool = False


class RecommendationResponse(BaseModel):
    model_id: str | None = Field(description="null when the shopper has no history yet.")
    k: int
    mmr_lambda: float
    viewed_found: list[ProductKey] = Field(description="Viewed products the profile is made of.")
    viewed_missing: list[ProductKey] = Field(description="Viewed products not indexed (ignored).")
    hits: list[SearchHit] = Field(description="Score: cosine similarity to the profile.")
    requests: list[TemplateCall] | None = None


class ProfileResponse(BaseModel):
    model_id: str
    dims: int
    vector: list[float]
    viewed_found: list[ProductKey]
    viewed_missing: list[ProductKey]
    template_id: str = Field(description="The stored template to run with params.")
    params: dict[str, Any] = Field(description="Its parameters: vector, exclusions, filters, k.")


class EventItem(ProductKey):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: EventKind
    at: float | None = Field(
        None, description="Epoch seconds (default: now; clamped to the retention period)."
    )


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    shopper: Shopper
    events: list[EventItem] = Field(min_length=1, max_length=50)


class EventsResponse(BaseModel):
    stored: int = Field(description="Events the shopper's history holds now.")
    retention_s: int = Field(description="The history expires this long after the last event.")


def _keys(refs: list[ProductRef]) -> list[ProductKey]:
    return [ProductKey(merchant_id=r.merchant_id, product_id=r.product_id) for r in refs]


def _from_events(events: list[ShopperEvent], settings: VitrineSettings) -> list[Viewed]:
    weight = {"view": 1.0, "add_to_cart": settings.recommend_cart_weight}
    return [Viewed(ProductRef(e.merchant_id, e.product_id), e.at, weight[e.kind]) for e in events]


def _viewed(
    body: RecommendationRequest, services: Services, settings: VitrineSettings
) -> list[Viewed]:
    if body.viewed is not None:
        return [
            Viewed(ProductRef(v.merchant_id, v.product_id), v.at, v.weight) for v in body.viewed
        ]
    assert body.shopper is not None
    return _from_events(services.shoppers.events(body.shopper), settings)


async def _recommend(
    request: Request,
    body: RecommendationRequest,
    state: State,
    searcher: SearcherDep,
    services: Services,
) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        viewed = _viewed(body, services, state.settings)
        if not viewed:  # a shopper without history: nothing to go on yet
            lam = body.mmr_lambda
            return RecommendationResponse(
                model_id=None,
                k=body.k or state.settings.search_default_k,
                mmr_lambda=state.settings.recommend_mmr_lambda if lam is None else lam,
                viewed_found=[],
                viewed_missing=[],
                hits=[],
            ).model_dump()
        result = Recommender(searcher).recommend(
            viewed, now=time.time(), filters=body.filters, k=body.k, mmr_lambda=body.mmr_lambda
        )
        return {
            "model_id": result.profile.model_id,
            "k": result.k,
            "mmr_lambda": result.mmr_lambda,
            "viewed_found": _keys(result.profile.found),
            "viewed_missing": _keys(result.profile.missing),
            "hits": result.hits,
            "requests": result.requests if body.explain else None,
        }

    result = await run_in_threadpool(work)
    for hit in result["hits"]:  # stored images by their public URL, never a server path
        hit["image_url"] = public_image_url(request, hit.get("image_url"), hit.get("image_sha256"))
    return result


@router.post(
    "/recommendations",
    response_model=RecommendationResponse,
    summary="Recommend products from recently viewed ones (or a shopper's recorded events)",
    responses=ERRORS,
)
async def recommend(
    request: Request,
    body: RecommendationRequest,
    state: State,
    searcher: SearcherDep,
    services: Services,
    caller: SearchCaller,
) -> dict[str, Any]:
    """Profile vector (recency-weighted mean of the viewed products' vectors) -> kNN without
    the viewed products, filters applied inside the search -> at most one product per
    duplicate group, re-ranked by maximal marginal relevance so near-copies do not crowd the
    list."""
    return await _recommend(request, body, state, searcher, services)


@router.get(
    "/recommendations",
    response_model=RecommendationResponse,
    summary="Recommend products from a shopper's recorded events",
    responses=ERRORS,
)
async def recommend_for_shopper(
    request: Request,
    query: Annotated[ShopperQuery, Query()],
    state: State,
    searcher: SearcherDep,
    services: Services,
    caller: SearchCaller,
) -> dict[str, Any]:
    """As ``POST /v1/recommendations`` with ``shopper``; the filters are query parameters
    (lists repeated: ``tags_any=a&tags_any=b``). An unknown or expired shopper gets no hits."""
    options = query.model_dump(include={"shopper", "k", "mmr_lambda", "explain"})
    filters = Filters(**query.model_dump(include=set(Filters.model_fields), exclude_unset=True))
    body = RecommendationRequest(**options, filters=filters)
    return await _recommend(request, body, state, searcher, services)


@router.post(
    "/recommendations/profile",
    response_model=ProfileResponse,
    summary="Profile vector and template parameters, for querying Elasticsearch directly",
    responses=ERRORS,
)
async def profile(
    body: RecommendationRequest,
    state: State,
    searcher: SearcherDep,
    services: Services,
    caller: SearchCaller,
) -> dict[str, Any]:
    """The shopper's profile vector, and ready-to-send parameters of the ``<alias>-recommend``
    stored template (vector, model, viewed products to exclude, filters, k). Diversify its
    hits client-side: keep one per product and one per duplicate_group. A shopper without
    history is a 400 (invalid_query); no viewed product indexed, a 404 (product_not_found)."""

    def work() -> dict[str, Any]:
        recommender = Recommender(searcher)
        result = recommender.profile(_viewed(body, services, state.settings), now=time.time())
        k = recommender.window(body.k)
        query = recommender.candidates_query(result, body.filters, k, with_vectors=False)
        call = template_call(state.settings.index_alias, query)
        return {
            "model_id": result.model_id,
            "dims": len(result.vector),
            "vector": result.vector,
            "viewed_found": _keys(result.found),
            "viewed_missing": _keys(result.missing),
            "template_id": call["template_id"],
            "params": call["params"],
        }

    return await run_in_threadpool(work)


@router.post(
    "/events",
    response_model=EventsResponse,
    summary="Record a shopper's views and add-to-cart events",
    description=RETENTION,
    responses=ERRORS,
)
def record_events(body: EventsRequest, services: Services, caller: SearchCaller) -> EventsResponse:
    now = time.time()
    oldest = now - services.shoppers.ttl_s  # nothing older than the retention, nothing later

    def when(at: float | None) -> float:
        return now if at is None else min(now, max(oldest, at))

    events = [ShopperEvent(e.type, e.merchant_id, e.product_id, when(e.at)) for e in body.events]
    stored = services.shoppers.record(body.shopper, events)
    return EventsResponse(stored=stored, retention_s=services.shoppers.ttl_s)


@router.delete(
    "/events",
    status_code=204,
    summary="Erase a shopper's recorded events",
    description=RETENTION,
    responses=ERRORS,
)
def forget_events(
    shopper: Annotated[str, Query(pattern=SHOPPER_ID_PATTERN)],
    services: Services,
    caller: SearchCaller,
) -> Response:
    services.shoppers.forget(shopper)
    return Response(status_code=204)
