"""Offers: the same item at other merchants, cheapest first (price comparison).

A product's image documents carry a ``duplicate_group`` (``pipeline.ingest.duplicates``); its
offers are the documents of those groups at other merchants, one per merchant (that merchant's
cheapest), sorted by price with unpriced offers last. Offers are public catalogue data, like
search hits. ``OffersQuery`` mirrors the stored template ``<alias>-offers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from elasticsearch import Elasticsearch

from pipeline.es import mappings

OFFER_FIELDS = [
    "merchant_id",
    "product_id",
    "title",
    "price",
    "currency",
    "in_stock",
    "image_url",
    "image_sha256",
    "duplicate_group",
]
MAX_OFFERS = 100


class ProductNotFound(LookupError):
    """The product whose offers were asked for is not indexed."""


@dataclass(frozen=True)
class OffersQuery:
    """Documents of ``groups`` outside ``exclude_merchant_id``, one per merchant, cheapest first."""

    groups: tuple[str, ...]
    exclude_merchant_id: str | None = None
    in_stock: bool = False
    size: int = 20

    template: ClassVar[str] = "offers"

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_OFFERS:
            raise ValueError(f"size must be between 1 and {MAX_OFFERS}")

    def body(self) -> dict[str, Any]:
        filters: list[dict[str, Any]] = [{"term": {"in_stock": True}}] if self.in_stock else []
        filters.append({"terms": {"duplicate_group": list(self.groups)}})
        must_not = (
            [{"term": {"merchant_id": self.exclude_merchant_id}}]
            if self.exclude_merchant_id
            else []
        )
        return {
            "query": {"bool": {"filter": filters, "must_not": must_not}},
            "collapse": {"field": "merchant_id"},
            "sort": [
                {"price": {"order": "asc", "missing": "_last"}},
                {"merchant_id": "asc"},
                {"product_id": "asc"},
            ],
            "size": self.size,
            "_source": OFFER_FIELDS,
        }

    def template_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"duplicate_groups": list(self.groups), "size": self.size}
        if self.exclude_merchant_id:
            params["exclude_merchant_id"] = self.exclude_merchant_id
        if self.in_stock:
            params["in_stock"] = True
        return params


def product_groups(es: Elasticsearch, alias: str, merchant_id: str, product_id: str) -> list[str]:
    """The duplicate groups of a product's images, primary image first; ``ProductNotFound``."""
    response = es.search(
        index=alias,
        query=mappings.product_documents_query(merchant_id, product_id),
        sort=[{"image_index": "asc"}],
        size=20,
        source_includes=["duplicate_group"],
    )
    hits = response["hits"]["hits"]
    if not hits:
        raise ProductNotFound(f"no indexed product {product_id!r} of merchant {merchant_id!r}")
    groups = [hit["_source"].get("duplicate_group") or hit["_id"] for hit in hits]
    return list(dict.fromkeys(groups))


def find_offers(
    es: Elasticsearch,
    alias: str,
    merchant_id: str,
    product_id: str,
    *,
    in_stock: bool = False,
    size: int = 20,
) -> dict[str, Any]:
    """The product's offers at other merchants: ``{merchant_id, product_id, duplicate_groups,
    offers: [{merchant_id, product_id, title, price, currency, in_stock, ...}]}``."""
    groups = product_groups(es, alias, merchant_id, product_id)
    query = OffersQuery(tuple(groups), merchant_id, in_stock=in_stock, size=size)
    response = es.search(index=alias, **query.body())
    return {
        "merchant_id": merchant_id,
        "product_id": product_id,
        "duplicate_groups": groups,
        "offers": [hit["_source"] for hit in response["hits"]["hits"]],
    }
