"""Near-duplicate groups across the catalogue, for ``vitrine duplicates`` (catalogue clean-up).

Groups are found with a composite aggregation over ``duplicate_group`` (paged, so memory grows
with the number of groups of two or more members, never with the catalogue), then their members
are fetched group page by group page. Each member's ``distance`` is the cosine distance
(1 - cosine) of its vector to the group's reference image: the founder (the document whose id
is the group id) while it exists, else the earliest indexed member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from pipeline.images import phash_distance

MEMBER_FIELDS = [
    "merchant_id",
    "product_id",
    "title",
    "price",
    "currency",
    "image_url",
    "image_sha256",
    "phash",
    "indexed_at",
    "duplicate_group",
    "image_vector",
]
CSV_COLUMNS = [
    "group",
    "merchant",
    "product",
    "price",
    "currency",
    "distance",
    "phash_distance",
    "image_url",
]


@dataclass(frozen=True)
class Member:
    doc_id: str
    merchant_id: str
    product_id: str
    price: float | None
    currency: str | None
    image_url: str
    distance: float
    phash_distance: int | None

    def csv_row(self, group: str) -> dict[str, Any]:
        return {
            "group": group,
            "merchant": self.merchant_id,
            "product": self.product_id,
            "price": "" if self.price is None else self.price,
            "currency": self.currency or "",
            "distance": f"{self.distance:.4f}",
            "phash_distance": "" if self.phash_distance is None else self.phash_distance,
            "image_url": self.image_url,
        }


@dataclass(frozen=True)
class Group:
    group_id: str
    members: list[Member]

    @property
    def merchants(self) -> int:
        return len({m.merchant_id for m in self.members})


def groups_aggregation(after: dict[str, Any] | None, *, page: int) -> dict[str, Any]:
    """One page of the composite aggregation over ``duplicate_group``."""
    composite: dict[str, Any] = {
        "size": page,
        "sources": [{"group": {"terms": {"field": "duplicate_group"}}}],
    }
    if after:
        composite["after"] = after
    return {"groups": {"composite": composite}}


def group_members(group_id: str, hits: Sequence[dict[str, Any]]) -> Group:
    """A group from its documents' hits (pure): distances to the reference image."""
    ordered = sorted(hits, key=lambda h: (h["_id"] != group_id, h["_source"].get("indexed_at", "")))
    reference = ordered[0]["_source"]
    ref_vector = _unit(reference["image_vector"])
    members = []
    for hit in ordered:
        source = hit["_source"]
        cosine = float(_unit(source["image_vector"]) @ ref_vector)
        members.append(
            Member(
                doc_id=hit["_id"],
                merchant_id=source["merchant_id"],
                product_id=source["product_id"],
                price=source.get("price"),
                currency=source.get("currency"),
                image_url=source.get("image_url", ""),
                distance=round(max(0.0, 1.0 - cosine), 9),
                phash_distance=phash_distance(reference.get("phash"), source.get("phash")),
            )
        )
    return Group(group_id, members)


def _unit(vector: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)  # float32 put the founder at 1.8e-7 from itself
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


def iter_groups(
    es: Elasticsearch,
    alias: str,
    *,
    min_size: int = 2,
    page: int = 500,
    on_page: Callable[[int], None] | None = None,
) -> Iterator[Group]:
    """Every group of at least ``min_size`` documents; ``on_page(documents seen)`` after each
    aggregation page (for a progress bar)."""
    after: dict[str, Any] | None = None
    while True:
        response = es.search(
            index=alias, size=0, aggs=groups_aggregation(after, page=page), track_total_hits=False
        )
        aggregation = response["aggregations"]["groups"]
        buckets = aggregation["buckets"]
        wanted = {b["key"]["group"]: b["doc_count"] for b in buckets if b["doc_count"] >= min_size}
        if wanted:
            yield from _fetch_groups(es, alias, wanted)
        if on_page:
            on_page(sum(b["doc_count"] for b in buckets))
        after = aggregation.get("after_key")
        if not buckets or after is None:
            return


def _fetch_groups(es: Elasticsearch, alias: str, sizes: dict[str, int]) -> Iterator[Group]:
    """Members of the given groups, in requests of at most 1,000 documents."""
    chunk: list[str] = []
    total = 0
    for group, size in sizes.items():
        if chunk and total + size > 1000:
            yield from _members_of(es, alias, chunk, total)
            chunk, total = [], 0
        chunk.append(group)
        total += size
    if chunk:
        yield from _members_of(es, alias, chunk, total)


def _members_of(es: Elasticsearch, alias: str, groups: list[str], total: int) -> Iterator[Group]:
    response = es.search(
        index=alias,
        query={"terms": {"duplicate_group": groups}},
        size=min(total, 10_000),
        source_includes=MEMBER_FIELDS,
    )
    by_group: dict[str, list[dict[str, Any]]] = {}
    for hit in response["hits"]["hits"]:
        by_group.setdefault(hit["_source"]["duplicate_group"], []).append(hit)
    for group in groups:
        if group in by_group:
            yield group_members(group, by_group[group])
