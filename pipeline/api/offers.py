"""``GET /v1/products/{product_id}/offers``: the same item at other merchants, cheapest first.

Offers are public catalogue data, like search hits: no API key is needed, and calls count
against the search rate limits. Product ids are merchant-scoped, so the product is addressed by
its id and ``merchant_id`` (a query parameter; with an API key it defaults to the key's
merchant). This router is included before the merchant upload API's
``/v1/products/{product_id:path}``, so a product whose id ends in ``/offers`` has its offers
here, not its view there.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from pipeline.api.auth import SearchCaller
from pipeline.api.deps import State
from pipeline.api.errors import Problem
from pipeline.api.public import public_image_url
from pipeline.api.search import ERRORS
from pipeline.documents import ID_PATTERN
from pipeline.search.offers import MAX_OFFERS, ProductNotFound, find_offers

router = APIRouter(prefix="/v1", tags=["search"])


@router.get(
    "/products/{product_id:path}/offers",
    responses=ERRORS,
    summary="The same item at other merchants (near-duplicates), cheapest first",
)
async def offers(
    product_id: Annotated[str, Path(pattern=ID_PATTERN, description="The merchant's product id.")],
    request: Request,
    state: State,
    caller: SearchCaller,
    merchant_id: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, description="The product's merchant (default: the API key's)."),
    ] = None,
    in_stock: Annotated[bool, Query(description="Only offers in stock.")] = False,
    size: Annotated[int, Query(ge=1, le=MAX_OFFERS, description="Most offers returned.")] = 20,
) -> dict[str, Any]:
    """One offer per other merchant (its cheapest product in the item's duplicate groups) with
    price, currency and stock; unpriced offers last. The stored template ``<alias>-offers``
    runs the same query for a frontend that calls Elasticsearch itself."""
    merchant = merchant_id or (caller.merchant_id if caller else None)
    if merchant is None:
        raise Problem("invalid_query", "give merchant_id (product ids are per merchant)")

    def work() -> dict[str, Any]:
        try:
            return find_offers(
                state.es,
                state.settings.index_alias,
                merchant,
                product_id,
                in_stock=in_stock,
                size=size,
            )
        except ProductNotFound as exc:
            raise Problem("product_not_found", str(exc)) from exc

    result = await run_in_threadpool(work)
    for offer in result["offers"]:
        offer["image_url"] = public_image_url(
            request, offer.get("image_url"), offer.get("image_sha256")
        )
    return result
