"""Fusion of ranked lists (RRF and min-max linear), de-duplication, vector mixing, facets."""

import math

import numpy as np
import pytest

from pipeline.es import mappings
from pipeline.search import fusion
from pipeline.search.fusion import RankedList


def hit(product: str, score: float | None = 1.0, *, merchant: str = "m", image: int = 0, **src):
    source = {"merchant_id": merchant, "product_id": product, "image_index": image, **src}
    return {"_id": f"{merchant}:{product}:{image}", "_score": score, "_source": source}


def keys(fused):
    return [f.key[1] for f in fused]


def test_rrf_known_ranking_and_scores():
    a = RankedList("image", [hit("p1"), hit("p2"), hit("p3")])
    b = RankedList("keyword", [hit("p3"), hit("p1"), hit("p4")])
    fused = fusion.rrf([a, b], k=60)
    assert keys(fused) == ["p1", "p3", "p2", "p4"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2].score == pytest.approx(1 / 62)
    assert fused[3].score == pytest.approx(1 / 63)
    p1 = fused[0].contributions
    assert (p1["image"].rank, p1["keyword"].rank) == (1, 2)
    assert p1["keyword"].value == pytest.approx(1 / 62)
    assert "keyword" not in fused[2].contributions


def test_rrf_weights_and_k():
    a = RankedList("image", [hit("p1"), hit("p2")], weight=0.2)
    b = RankedList("text", [hit("p2"), hit("p1")], weight=0.8)
    fused = fusion.rrf([a, b], k=1)
    assert keys(fused) == ["p2", "p1"]
    assert fused[0].score == pytest.approx(0.2 / 3 + 0.8 / 2)
    with pytest.raises(ValueError):
        fusion.rrf([a, b], k=0)


def test_rrf_ties_break_on_best_rank_then_product_key():
    # p1 and p2 swap places: equal RRF sums, equal best ranks -> product key decides
    a = RankedList("a", [hit("p2"), hit("p1")])
    b = RankedList("b", [hit("p1"), hit("p2")])
    assert keys(fusion.rrf([a, b])) == ["p1", "p2"]
    # q is 1st in one list only; r is 2nd in both: 1/61 < 2/62, so r first
    c = RankedList("c", [hit("q"), hit("r")])
    d = RankedList("d", [hit("s"), hit("r")])
    assert keys(fusion.rrf([c, d]))[0] == "r"
    # equal score (2/2 == 2/3 + 1/3), different best rank: the product ranked 1st comes first
    # although its key sorts last
    e = RankedList("e", [hit("z1"), hit("a2")], weight=2.0)
    f = RankedList("f", [hit("filler"), hit("a2")], weight=1.0)
    fused = fusion.rrf([e, f], k=1)
    scores = {x.key[1]: x.score for x in fused}
    assert scores["z1"] == scores["a2"]
    assert keys(fused)[:2] == ["z1", "a2"]


def test_empty_lists():
    assert fusion.rrf([]) == []
    assert fusion.rrf([RankedList("a", []), RankedList("b", [])]) == []
    assert fusion.linear([RankedList("a", []), RankedList("b", [])]) == []


def test_one_list_empty_keeps_the_other_order():
    full = RankedList("image", [hit("p3", 0.9), hit("p1", 0.8), hit("p2", 0.1)])
    empty = RankedList("keyword", [])
    assert keys(fusion.rrf([full, empty])) == ["p3", "p1", "p2"]
    assert keys(fusion.linear([empty, full])) == ["p3", "p1", "p2"]


def test_products_are_deduplicated_and_ranked_among_products():
    images = RankedList(
        "image",
        [hit("p1", 0.9, image=0), hit("p1", 0.8, image=1), hit("p2", 0.7), hit("p1", 0.1, image=2)],
    )
    words = RankedList("keyword", [hit("p2", 5.0)])
    fused = fusion.rrf([images, words])
    assert keys(fused) == ["p2", "p1"]
    assert fused[0].contributions["image"].rank == 2  # second product, not third document
    assert fused[1].hit["_source"]["image_index"] == 0  # its best image represents it
    assert [h["_id"] for h in fusion.dedup(images.hits)] == ["m:p1:0", "m:p2:0"]


def test_same_product_id_of_two_merchants_are_two_products():
    fused = fusion.rrf([RankedList("a", [hit("p1", merchant="m1"), hit("p1", merchant="m2")])])
    assert [f.key for f in fused] == [("m1", "p1"), ("m2", "p1")]


def test_representative_hit_comes_from_the_list_where_the_product_ranks_best():
    a = RankedList("image", [hit("p0"), hit("p1", image=3)])
    b = RankedList("keyword", [hit("p1", image=0)])
    fused = {f.key[1]: f for f in fusion.rrf([a, b])}
    assert fused["p1"].hit["_source"]["image_index"] == 0


def test_min_max():
    assert fusion.min_max([]) == []
    assert fusion.min_max([3.0]) == [1.0]
    assert fusion.min_max([2.0, 2.0]) == [1.0, 1.0]
    assert fusion.min_max([4.0, 2.0, 3.0]) == [1.0, 0.0, 0.5]


def test_linear_known_ranking_and_scores():
    a = RankedList("image", [hit("p1", 0.99), hit("p2", 0.95), hit("p3", 0.91)], weight=0.5)
    b = RankedList("keyword", [hit("p3", 12.0), hit("p2", 3.0)], weight=1.0)
    fused = fusion.linear([a, b])
    assert keys(fused) == ["p3", "p1", "p2"]
    by_key = {f.key[1]: f.score for f in fused}
    assert by_key["p1"] == pytest.approx(0.5 * 1.0)
    assert by_key["p2"] == pytest.approx(0.5 * 0.5 + 0.0)
    assert by_key["p3"] == pytest.approx(0.5 * 0.0 + 1.0)


def test_linear_ties_and_missing_scores():
    a = RankedList("a", [hit("p2", 1.0), hit("p1", 1.0)])
    assert keys(fusion.linear([a, RankedList("b", [])])) == ["p2", "p1"]  # best rank decides
    nones = RankedList("a", [hit("p1", None), hit("p2", None)])
    assert [f.score for f in fusion.linear([nones, RankedList("b", [])])] == [1.0, 1.0]


def test_single_list_keeps_elasticsearch_scores():
    ranked = RankedList("image", [hit("p1", 0.97), hit("p1", 0.96, image=1), hit("p2", 0.5)])
    fused = fusion.fuse([ranked], "rrf")
    assert keys(fused) == ["p1", "p2"]
    assert [f.score for f in fused] == [0.97, 0.5]
    assert fused[1].contributions["image"].rank == 2


def test_fuse_dispatch():
    a, b = RankedList("a", [hit("p1", 2.0)]), RankedList("b", [hit("p2", 1.0)])
    assert fusion.fuse([a, b], "rrf", rrf_k=10)[0].score == pytest.approx(1 / 11)
    assert fusion.fuse([a, b], "linear")[0].score == 1.0
    with pytest.raises(ValueError, match="unknown fusion"):
        fusion.fuse([a, b], "sum")  # type: ignore[arg-type]


def test_combine_vectors():
    image, text = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert np.allclose(fusion.combine_vectors(image, text, 1.0), image)
    assert np.allclose(fusion.combine_vectors(image, text, 0.0), text)
    mixed = fusion.combine_vectors(image, text, 0.75)
    assert math.isclose(float(np.linalg.norm(mixed)), 1.0, rel_tol=1e-6)
    assert mixed[0] == pytest.approx(0.75 / math.hypot(0.75, 0.25))
    assert np.allclose(fusion.combine_vectors(image, -image, 0.5), image)  # cancels: keep image
    with pytest.raises(ValueError):
        fusion.combine_vectors(image, text, 1.5)
    with pytest.raises(ValueError):
        fusion.combine_vectors(image, np.ones(3), 0.5)


def test_facet_counts_count_products_and_price_buckets():
    hits = [
        hit("p1", tags=["red", "sale"], category="shoes", price=10.0),
        hit("p1", image=1, tags=["red", "sale"], category="shoes", price=10.0),
        hit("p2", tags=["red"], category="bags", price=25.0),
        hit("p3", merchant="m2", tags=[], category="bags", price=None),
    ]
    facets = fusion.facet_counts(hits, mappings.facet_aggs())
    assert facets["tags"] == [{"value": "red", "count": 2}, {"value": "sale", "count": 1}]
    assert facets["category"] == [{"value": "bags", "count": 2}, {"value": "shoes", "count": 1}]
    assert facets["merchant_id"] == [{"value": "m", "count": 2}, {"value": "m2", "count": 1}]
    price = {b["value"]: b["count"] for b in facets["price"]}
    assert price == {"0-25": 1, "25-50": 1, "50-100": 0, "100-200": 0, "200+": 0}
    assert facets["price"][1] == {"value": "25-50", "from": 25, "to": 50, "count": 1}


def test_facets_from_aggregations_have_the_same_shape():
    aggs = mappings.facet_aggs()
    response = {
        "tags": {"buckets": [{"key": "red", "doc_count": 2}]},
        "category": {"buckets": []},
        "merchant_id": {"buckets": [{"key": "m", "doc_count": 3}]},
        "price": {"buckets": [{"key": "0-25", "to": 25.0, "doc_count": 1}]},
    }
    facets = fusion.facets_from_aggregations(response, aggs)
    assert facets["tags"] == [{"value": "red", "count": 2}]
    assert facets["category"] == []
    assert facets["price"][0] == {"value": "0-25", "from": None, "to": 25, "count": 1}
    assert [b["count"] for b in facets["price"][1:]] == [0, 0, 0, 0]
