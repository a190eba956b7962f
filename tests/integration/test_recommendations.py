"""Recommendations from browsing history against the real Elasticsearch and Redis.

The catalogue is written with known vectors (bulk, no model involved) into the session's index,
so the right answers follow from geometry: every product lies near the viewed direction ``e0``
with a small offset of its own; two of them are near-copies in one ``duplicate_group``, one
product has two images, one is another category, one is out of stock, one is far away.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from elasticsearch.helpers import bulk
from fastapi.testclient import TestClient
from redis import Redis

from pipeline.api.app import create_app
from pipeline.documents import Product, build_document, document_id
from pipeline.es import mappings
from pipeline.ingest.ingestor import Ingestor
from pipeline.merchants.shoppers import ShopperHistory
from pipeline.search.plan import QueryError
from pipeline.search.query import Filters, KnnQuery, ProductRef
from pipeline.search.recommend import Recommender, Viewed
from pipeline.search.searcher import Searcher
from tests.integration.helpers import unique_prefix

# name: (offsets {axis: amount} from e0, per image; duplicate group; category; in stock)
CATALOGUE: dict[str, tuple[list[dict[int, float]], str | None, str, bool]] = {
    "viewed_1": ([{}], None, "shoes", True),
    "viewed_2": ([{1: 0.3}], None, "shoes", True),
    "copy_a": ([{2: 0.2}], "g1", "shoes", True),
    "copy_b": ([{2: 0.21}], "g1", "shoes", True),
    "near": ([{3: 0.4}], None, "shoes", True),
    "two_images": ([{4: 0.5}, {4: 0.6}], None, "shoes", True),
    "bag": ([{5: 0.3}], None, "bags", True),
    "sold_out": ([{6: 0.25}], None, "shoes", False),
    "far": ([{0: -1.0, 10: 1.0}], None, "shoes", True),
}
VIEWED = ["viewed_1", "viewed_2"]
STORE, SHA = "/var/lib/vitrine/images", "ab" * 32


class Cat:
    def __init__(self, prefix: str):
        self.prefix = prefix

    def ref(self, name: str) -> ProductRef:
        return ProductRef(f"{self.prefix}-m", f"{self.prefix}-{name}")

    def name(self, hit: dict[str, Any]) -> str:
        return hit["product_id"].removeprefix(f"{self.prefix}-")

    def filters(self, **fields: Any) -> Filters:
        return Filters(tags_all=[self.prefix], **fields)


def vector(dims: int, offsets: dict[int, float]) -> list[float]:
    v = np.zeros(dims)
    v[0] = 1.0
    for axis, amount in offsets.items():
        v[axis] += amount
    return v.tolist()


@pytest.fixture(scope="module")
def cat(es, settings, encoder) -> Cat:
    Ingestor(settings, es=es, encoder=encoder).ensure_index()
    catalogue = Cat(unique_prefix())
    actions = []
    for name, (images, group, category, in_stock) in CATALOGUE.items():
        ref = catalogue.ref(name)
        product = Product(
            merchant_id=ref.merchant_id,
            product_id=ref.product_id,
            title=name.replace("_", " "),
            category=category,
            tags=[catalogue.prefix],
            price=10.0,
            currency="EUR",
            in_stock=in_stock,
            images=[f"https://shop.invalid/{name}-{i}.jpg" for i in range(len(images))],
        )
        if name == "near":  # an image in this server's store: shown by its public URL
            product.images[0] = f"{STORE}/{SHA[:2]}/{SHA}"
        for index, offsets in enumerate(images):
            sha = SHA if name == "near" else uuid.uuid4().hex * 2
            source = build_document(
                product,
                image_index=index,
                image_sha256=sha,
                width=100,
                height=100,
                vector=np.asarray(vector(encoder.dim, offsets)),
                model_id=encoder.model_id,
            )
            source["duplicate_group"] = f"{catalogue.prefix}-{group}" if group else None
            actions.append((document_id(ref.merchant_id, ref.product_id, sha), source))
    bulk(es, mappings.index_actions(settings.index_alias, actions), refresh="wait_for")
    return catalogue


@pytest.fixture(scope="module")
def recommender(es, settings, encoder) -> Recommender:
    return Recommender(Searcher(settings, es, encoder))


def viewed(cat: Cat, names: list[str] = VIEWED) -> list[Viewed]:
    return [Viewed(cat.ref(name)) for name in names]


# --------------------------------------------------------------------------- library


def test_recommendations_exclude_viewed_and_are_diverse(recommender, cat):
    result = recommender.recommend(viewed(cat), now=time.time(), filters=cat.filters(), k=20)
    names = [cat.name(h) for h in result.hits]
    assert not set(names) & set(VIEWED)
    assert len(names) == len(set(names))  # one hit per product (two_images has two documents)
    groups = [h["duplicate_group"] for h in result.hits if h["duplicate_group"]]
    assert groups == [f"{cat.prefix}-g1"]  # no two from one duplicate group
    assert "copy_a" in names and "copy_b" not in names  # the closer copy is kept
    assert set(names) == set(CATALOGUE) - set(VIEWED) - {"copy_b"}
    assert result.profile.found == [cat.ref(n) for n in VIEWED] and not result.profile.missing
    assert np.linalg.norm(result.profile.vector) == pytest.approx(1.0, abs=1e-5)
    assert names[-1] == "far" and result.hits[0]["score"] > 0.9


def test_plain_knn_from_the_same_profile_has_the_viewed_items_and_both_copies(
    recommender, es, settings, cat
):
    """The baseline the diversification is measured against."""
    profile = recommender.profile(viewed(cat), now=time.time())
    knn = KnnQuery(profile.vector, profile.model_id, cat.filters(), k=20)
    hits = es.search(index=settings.index_alias, **knn.body())["hits"]["hits"]
    names = {h["_source"]["product_id"].removeprefix(f"{cat.prefix}-") for h in hits}
    assert {"viewed_1", "viewed_2", "copy_a", "copy_b"} <= names


def test_recommendations_honour_filters(recommender, cat):
    filters = cat.filters(category="shoes", in_stock=True)
    result = recommender.recommend(viewed(cat), now=time.time(), filters=filters, k=20)
    assert result.hits
    assert all(h["category"] == "shoes" and h["in_stock"] for h in result.hits)
    names = {cat.name(h) for h in result.hits}
    assert not names & {"bag", "sold_out", *VIEWED}
    bags = recommender.recommend(viewed(cat), now=time.time(), filters=cat.filters(category="bags"))
    assert [cat.name(h) for h in bags.hits] == ["bag"]


def test_recency_moves_the_profile_towards_the_latest_view(recommender, cat):
    now = time.time()
    old, recent = Viewed(cat.ref("viewed_1"), at=now - 30 * 86_400), Viewed(cat.ref("near"), at=now)
    result = recommender.recommend([recent, old], now=now, filters=cat.filters(), k=3)
    assert np.dot(result.profile.vector, vector(len(result.profile.vector), {3: 0.4})) > 0.99


def test_unknown_viewed_products_are_reported_or_refused(recommender, cat):
    result = recommender.recommend(
        viewed(cat, ["viewed_1", "gone"]), now=time.time(), filters=cat.filters()
    )
    assert result.profile.missing == [cat.ref("gone")]
    assert "gone" not in {cat.name(h) for h in result.hits}
    with pytest.raises(QueryError) as info:
        recommender.recommend(viewed(cat, ["gone"]), now=time.time())
    assert info.value.reason == "product_not_found"


def test_template_renders_the_python_body_and_returns_the_same_hits(recommender, es, settings, cat):
    profile = recommender.profile(viewed(cat), now=time.time())
    filters = Filters(
        tags_all=[cat.prefix], tags_any=["x", cat.prefix], category="shoes", in_stock=True
    )
    for with_vectors in (False, True):
        query = recommender.candidates_query(profile, filters, 5, with_vectors=with_vectors)
        template_id = mappings.search_template_id(settings.index_alias, "recommend")
        rendered = es.render_search_template(id=template_id, params=query.template_params())
        assert rendered["template_output"] == query.body()
        by_template = es.search_template(
            index=settings.index_alias, id=template_id, params=query.template_params()
        )["hits"]["hits"]
        direct = es.search(index=settings.index_alias, **query.body())["hits"]["hits"]
        assert [h["_id"] for h in by_template] == [h["_id"] for h in direct]
        assert by_template and all(cat.name(h["_source"]) not in VIEWED for h in by_template)


# --------------------------------------------------------------------------- HTTP and Redis


@pytest.fixture(scope="module")
def client(settings, cat) -> Iterator[TestClient]:
    with TestClient(create_app(settings, load_model=False)) as test_client:
        yield test_client


def keys(cat: Cat, names: list[str]) -> list[dict[str, str]]:
    return [
        {"merchant_id": cat.ref(n).merchant_id, "product_id": cat.ref(n).product_id} for n in names
    ]


def test_stateless_endpoint(client, cat):
    body = {"viewed": keys(cat, VIEWED), "filters": {"tags_all": [cat.prefix]}, "explain": True}
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    assert "X-RateLimit-Remaining" in response.headers  # counted as a search
    data = response.json()
    names = [cat.name(h) for h in data["hits"]]
    assert not set(names) & set(VIEWED) and "copy_b" not in names and "copy_a" in names
    assert data["viewed_found"] == keys(cat, VIEWED) and data["mmr_lambda"] == 0.7
    assert data["requests"][0]["template_id"].endswith("-recommend")
    urls = {cat.name(h): h["image_url"] for h in data["hits"]}
    assert urls["near"] == f"/v1/images/{SHA}" and urls["copy_a"].startswith("https://")
    both = client.post("/v1/recommendations", json={**body, "shopper": "shopper-123"})
    assert both.status_code == 422
    gone = client.post("/v1/recommendations", json={"viewed": keys(cat, ["gone"])})
    assert gone.status_code == 404 and gone.json()["detail"]["reason"] == "product_not_found"


def test_events_history_recommendations_and_erasure(client, cat, settings):
    shopper = f"shopper-{uuid.uuid4().hex}"
    events = [{"type": "view", **k} for k in keys(cat, VIEWED)]
    events[-1]["type"] = "add_to_cart"
    response = client.post("/v1/events", json={"shopper": shopper, "events": events})
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 2, "retention_s": settings.shopper_history_ttl_s}

    # retention: one expiring key, named by a hash of the id, holding no more than the events
    redis = Redis.from_url(settings.redis_url)
    history = ShopperHistory(
        redis,
        prefix=settings.redis_prefix,
        ttl_s=settings.shopper_history_ttl_s,
        max_events=settings.shopper_history_max_events,
    )
    key = history._key(shopper)
    assert shopper not in key and 0 < redis.ttl(key) <= settings.shopper_history_ttl_s
    assert [e.kind for e in history.events(shopper)] == ["add_to_cart", "view"]

    params = {"shopper": shopper, "tags_all": cat.prefix, "category": "shoes", "in_stock": "true"}
    response = client.get("/v1/recommendations", params=params)
    assert response.status_code == 200, response.text
    names = [cat.name(h) for h in response.json()["hits"]]
    assert names and not set(names) & {*VIEWED, "bag", "sold_out", "copy_b"}

    profile = client.post(
        "/v1/recommendations/profile",
        json={"shopper": shopper, "filters": {"tags_all": [cat.prefix]}, "k": 5},
    )
    assert profile.status_code == 200, profile.text
    data = profile.json()
    assert data["dims"] == len(data["vector"]) and data["template_id"].endswith("-recommend")
    assert len(data["params"]["exclude"]) == 2 and "with_vectors" not in data["params"]

    # the cap: older events are dropped
    more = [{"type": "view", **keys(cat, ["near"])[0]}] * 50
    response = client.post("/v1/events", json={"shopper": shopper, "events": more})
    assert response.json()["stored"] == settings.shopper_history_max_events == 50

    assert client.delete("/v1/events", params={"shopper": shopper}).status_code == 204
    assert redis.exists(key) == 0
    empty = client.get("/v1/recommendations", params={"shopper": shopper}).json()
    assert empty["hits"] == [] and empty["model_id"] is None
    assert client.post("/v1/events", json={"shopper": "x", "events": events}).status_code == 422


def test_recommendations_and_events_count_against_the_search_rate_limit(settings, cat):
    limited = settings.model_copy(
        update={
            "search_rate_limit_per_address": 2,
            "redis_prefix": f"{settings.redis_prefix}-{uuid.uuid4().hex[:6]}",
        }
    )
    shopper = f"shopper-{uuid.uuid4().hex}"
    event = {"type": "view", **keys(cat, ["viewed_1"])[0]}
    calls = [
        lambda c: c.post("/v1/events", json={"shopper": shopper, "events": [event]}),
        lambda c: c.get("/v1/recommendations", params={"shopper": shopper}),
        lambda c: c.post("/v1/recommendations", json={"viewed": [keys(cat, ["viewed_1"])[0]]}),
        lambda c: c.post("/v1/recommendations/profile", json={"shopper": shopper}),
        lambda c: c.delete("/v1/events", params={"shopper": shopper}),
    ]
    with TestClient(create_app(limited, load_model=False)) as client:
        statuses = [call(client) for call in calls]
        client.app.state.vitrine.merchant_services.shoppers.forget(shopper)
    # at most two per window: five calls cross at most one window boundary
    refused = [r for r in statuses if r.status_code == 429]
    assert len(refused) >= 1 and all("Retry-After" in r.headers for r in refused)
    assert all(r.status_code < 300 for r in statuses if r.status_code != 429)
