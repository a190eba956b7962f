"""Recommendations' pure parts: recency weights, the profile vector, maximal marginal relevance
with duplicate groups, and the ``recommend`` query body against its stored template."""

import re

import numpy as np
import pytest

from pipeline.es import mappings
from pipeline.search.query import Filters, ProductRef
from pipeline.search.recommend import (
    RecommendQuery,
    Viewed,
    diversify,
    mmr,
    profile_vector,
    recency_weights,
)

A, B, C = ProductRef("m", "a"), ProductRef("m", "b"), ProductRef("n", "c")


# --------------------------------------------------------------------------- recency


def test_timestamped_views_halve_per_half_life():
    views = [Viewed(A, at=1000.0), Viewed(B, at=900.0), Viewed(C, at=800.0, weight=2.0)]
    weights = recency_weights(views, now=1000.0, half_life_s=100, position_half_life=5)
    assert weights == pytest.approx([1.0, 0.5, 0.5])


def test_views_without_timestamps_decay_by_position_and_future_counts_as_now():
    views = [Viewed(A), Viewed(B), Viewed(C, at=2000.0)]
    weights = recency_weights(views, now=1000.0, half_life_s=100, position_half_life=1)
    assert weights == pytest.approx([1.0, 0.5, 1.0])


# --------------------------------------------------------------------------- profile


def test_profile_is_the_normalised_weighted_mean_of_normalised_vectors():
    vector = profile_vector([[10.0, 0.0], [0.0, 1.0]], [1.0, 1.0])  # length does not count
    assert vector.dtype == np.float32
    assert vector == pytest.approx([2**-0.5, 2**-0.5])
    assert profile_vector([[1.0, 0.0], [0.0, 1.0]], [3.0, 1.0]) == pytest.approx(
        np.array([3.0, 1.0]) / np.sqrt(10)
    )
    assert np.linalg.norm(profile_vector([[0.2, 0.3, 0.4]], [0.01])) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("vectors", "weights"),
    [([], []), ([[1.0, 0.0]], [1.0, 2.0]), ([[1.0, 0.0], [-1.0, 0.0]], [1.0, 1.0])],
)
def test_profile_refuses_nothing_to_average_or_a_cancelled_sum(vectors, weights):
    with pytest.raises(ValueError):
        profile_vector(vectors, weights)


# --------------------------------------------------------------------------- MMR

# two near-copies close to the query, and a distinct item a little further away
NEAR_1, NEAR_2, OTHER = [1.0, 0.05, 0.0], [1.0, 0.0, 0.05], [0.6, 0.8, 0.0]
QUERY = [1.0, 0.0, 0.0]


def test_lambda_one_is_plain_relevance_order():
    candidates = np.array([OTHER, NEAR_1, NEAR_2])
    assert mmr(QUERY, candidates, k=3, lambda_=1.0) == [1, 2, 0]


def test_lower_lambda_moves_a_distinct_item_above_a_near_copy():
    candidates = np.array([NEAR_1, NEAR_2, OTHER])
    assert mmr(QUERY, candidates, k=3, lambda_=0.3) == [0, 2, 1]


def test_one_member_per_duplicate_group_and_no_group_is_no_constraint():
    candidates = np.array([NEAR_1, NEAR_2, OTHER, [0.0, 0.0, 1.0]])
    order = mmr(QUERY, candidates, k=4, lambda_=1.0, groups=["g1", "g1", None, None])
    assert order == [0, 2, 3]


def test_mmr_edge_cases():
    assert mmr(QUERY, np.zeros((0, 3)), k=3, lambda_=0.5) == []
    assert mmr(QUERY, np.array([NEAR_1, NEAR_1]), k=1, lambda_=0.5) == [0]  # tie: earlier
    with pytest.raises(ValueError):
        mmr(QUERY, np.array([NEAR_1]), k=1, lambda_=1.5)


def test_diversify_reads_vectors_and_groups_from_hits():
    hits = [
        {"_id": str(i), "_source": {"image_vector": v, "duplicate_group": g}}
        for i, (v, g) in enumerate([(NEAR_1, "g"), (NEAR_2, "g"), (OTHER, None)])
    ]
    assert diversify(QUERY, hits, k=3, lambda_=1.0) == [0, 2]
    assert diversify(QUERY, [], k=3, lambda_=1.0) == []


# --------------------------------------------------------------------------- query body

FILTERS = Filters(category="Shoes", in_stock=True, max_price=50)


def test_recommend_body_excludes_every_viewed_product_inside_the_knn():
    body = RecommendQuery([1, 0], "model", (A, C), FILTERS, k=30, num_candidates=100).body()
    knn = body["knn"]
    assert knn["k"] == 30 and knn["num_candidates"] == 100 and body["size"] == 30
    assert {"term": {"model_id": "model"}} in knn["filter"]["bool"]["filter"]
    assert {"term": {"category": "shoes"}} in knn["filter"]["bool"]["filter"]
    assert knn["filter"]["bool"]["must_not"] == [
        {"bool": {"filter": [{"term": {"merchant_id": "m"}}, {"term": {"product_id": "a"}}]}},
        {"bool": {"filter": [{"term": {"merchant_id": "n"}}, {"term": {"product_id": "c"}}]}},
        {"match_none": {}},
    ]
    assert body["_source"] == {"excludes": ["image_vector", "fingerprint", "phash_bands"]}
    with_vectors = RecommendQuery([1, 0], "model", with_vectors=True).body()["_source"]
    assert with_vectors == {"excludes": ["fingerprint", "phash_bands"]}


def test_recommend_params_and_limits():
    params = RecommendQuery([1, 0], "model", (A,), FILTERS, with_vectors=True).template_params()
    assert params["exclude"] == [{"exclude_merchant_id": "m", "exclude_product_id": "a"}]
    assert params["with_vectors"] is True and params["in_stock"] is True
    assert "exclude" not in RecommendQuery([1, 0], "model").template_params()
    with pytest.raises(ValueError):
        RecommendQuery([1, 0], "model", k=200, num_candidates=100)


VARIABLE = re.compile(r"\{\{[#^/]?\s*([a-z_]+)(?:\.size)?\s*\}\}")
TO_JSON = re.compile(r"\{\{#toJson\}\}([a-z_]+)\{\{/toJson\}\}")


def test_python_params_are_all_template_params():
    source = mappings.search_template_source("recommend")
    used = set(VARIABLE.findall(source)) | set(TO_JSON.findall(source))
    query = RecommendQuery([1, 0], "m", (A,), FILTERS.model_copy(update={"tags_any": ["x"]}))
    assert set(query.template_params()) <= used
    assert {"exclude_merchant_id", "exclude_product_id", "with_vectors"} <= used
