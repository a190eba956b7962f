"""Pure search bodies, template parameters, stored-template sources and the search plan."""

import re

import pytest
from pydantic import ValidationError

from pipeline.es import mappings
from pipeline.search.plan import QueryError, SearchQuery, Window, plan_lists, validate
from pipeline.search.query import (
    ExactQuery,
    Filters,
    KeywordQuery,
    KnnQuery,
    ProductRef,
    ProductVectorQuery,
    exact_rescore,
    filter_clauses,
)
from pipeline.settings import VitrineSettings

ALL_FILTERS = Filters(
    tags_all=["Red", "sale"],
    tags_any=["Summer", "winter"],
    category="Shoes",
    merchant_id="m-1",
    min_price=0,
    max_price=80.5,
    currency="EUR",
    in_stock=False,
    exclude_quality_flags=["low_resolution"],
    auto_tags_all=["Colour:Red", "material:leather"],
    auto_category="Bag",
    duplicate_group="g-1",
)


# --------------------------------------------------------------------------- filters


def test_no_filters_only_restrict_the_model():
    assert filter_clauses(Filters()) == []
    assert filter_clauses(Filters(), model_id="m") == [{"term": {"model_id": "m"}}]
    assert Filters().template_params() == {}


def test_every_filter_in_template_order():
    assert filter_clauses(ALL_FILTERS, model_id="model") == [
        {"term": {"tags": "red"}},
        {"term": {"tags": "sale"}},
        {"bool": {"should": [{"terms": {"tags": ["summer", "winter"]}}]}},
        {"term": {"category": "shoes"}},
        {"term": {"merchant_id": "m-1"}},
        {"range": {"price": {"gte": 0}}},  # a zero bound is a bound
        {"range": {"price": {"lte": 80.5}}},
        {"term": {"currency": "EUR"}},
        {"term": {"in_stock": False}},
        {"bool": {"must_not": [{"terms": {"quality_flags": ["low_resolution"]}}]}},
        {"term": {"auto_tags": "colour:red"}},
        {"term": {"auto_tags": "material:leather"}},
        {"term": {"auto_category": "bag"}},
        {"term": {"duplicate_group": "g-1"}},
        {"term": {"model_id": "model"}},
    ]
    assert ALL_FILTERS.template_params() == {
        "tags_all": ["red", "sale"],
        "tags_any": ["summer", "winter"],
        "category": "shoes",
        "merchant_id": "m-1",
        "min_price": 0,
        "max_price": 80.5,
        "currency": "EUR",
        "out_of_stock": True,
        "exclude_quality_flags": ["low_resolution"],
        "auto_tags_all": ["colour:red", "material:leather"],
        "auto_category": "bag",
        "duplicate_group": "g-1",
    }


def test_in_stock_true_and_empty_values():
    assert Filters(in_stock=True).template_params() == {"in_stock": True}
    assert filter_clauses(Filters(in_stock=True)) == [{"term": {"in_stock": True}}]
    assert filter_clauses(Filters(category="", tags_any=[])) == []
    with pytest.raises(ValidationError):  # as in the API: an empty merchant id is no id
        Filters(merchant_id="")


# --------------------------------------------------------------------------- kNN


def test_knn_body_filters_inside_knn_and_excludes_the_vector():
    body = KnnQuery([0.5, 0.25], "model", Filters(category="bags"), k=30, num_candidates=90).body()
    assert body == {
        "knn": {
            "field": "image_vector",
            "query_vector": [0.5, 0.25],
            "k": 30,
            "num_candidates": 90,
            "filter": {
                "bool": {
                    "filter": [{"term": {"category": "bags"}}, {"term": {"model_id": "model"}}]
                }
            },
        },
        "rescore": exact_rescore([0.5, 0.25], window=30),
        "size": 30,
        "_source": {"excludes": ["image_vector", "fingerprint", "phash_bands"]},
    }
    assert "query" not in body  # no post-filtering


def test_exact_rescore_replaces_the_quantised_knn_score_by_the_float_cosine():
    rescore = exact_rescore([1.0, 0.0], window=7)
    assert rescore["window_size"] == 7
    assert (rescore["query"]["query_weight"], rescore["query"]["rescore_query_weight"]) == (
        0.0,
        1.0,
    )
    script = rescore["query"]["rescore_query"]["script_score"]["script"]
    assert script["source"] == mappings.COSINE_SCRIPT
    assert script["params"] == {"query_vector": [1.0, 0.0]}


def test_knn_params_and_exclusion():
    query = KnnQuery([1.0], "model", Filters(in_stock=True), k=5, num_candidates=50)
    assert query.template == "knn"
    assert query.template_params() == {
        "query_vector": [1.0],
        "model_id": "model",
        "k": 5,
        "num_candidates": 50,
        "in_stock": True,
    }
    mlt = KnnQuery([1.0], "model", k=5, exclude=ProductRef("m", "p"))
    assert mlt.template == "more-like-this"
    assert mlt.body()["knn"]["filter"]["bool"]["must_not"] == [
        {"bool": {"filter": [{"term": {"merchant_id": "m"}}, {"term": {"product_id": "p"}}]}}
    ]
    assert mlt.template_params()["exclude_merchant_id"] == "m"
    assert mlt.template_params()["exclude_product_id"] == "p"


def test_knn_limits_and_defaults():
    assert KnnQuery([1.0], "m", k=3).candidates == 100
    assert KnnQuery([1.0], "m", k=2000).candidates == 10_000
    with pytest.raises(ValueError):
        KnnQuery([1.0], "m", k=0)
    with pytest.raises(ValueError):
        KnnQuery([1.0], "m", k=20, num_candidates=10)
    with pytest.raises(ValueError):
        KnnQuery([1.0], "m", k=20, num_candidates=10_001)


# --------------------------------------------------------------------------- keyword


def test_keyword_body_with_text():
    body = KeywordQuery("red shoe", Filters(tags_all=["sale"]), "model", 20, 10).body()
    query = body["query"]["bool"]
    assert query["minimum_should_match"] == 1
    assert query["should"][0] == {
        "multi_match": {"query": "red shoe", "fields": ["title^3", "description", "image_text"]}
    }
    assert query["should"][2]["match"]["tags"]["analyzer"] == "standard"
    assert query["filter"] == [
        {"term": {"tags": "sale"}},
        {"term": {"model_id": "model"}},
        {"term": {"image_index": 0}},  # one document per product
    ]
    assert body["sort"] == [{"_score": "desc"}, {"merchant_id": "asc"}, {"product_id": "asc"}]
    assert (body["from"], body["size"], body["track_scores"]) == (20, 10, True)
    assert "aggs" not in body and "search_after" not in body


def test_keyword_body_without_text_matches_all_filtered():
    body = KeywordQuery().body()
    assert body["query"] == {"bool": {"filter": [{"term": {"image_index": 0}}]}}
    assert KeywordQuery().template_params() == {"from": 0, "size": 20}


@pytest.mark.parametrize(
    ("sort", "first"),
    [
        ("price_asc", {"price": "asc"}),
        ("price_desc", {"price": "desc"}),
        ("newest", {"indexed_at": "desc"}),
    ],
)
def test_keyword_sorts(sort, first):
    query = KeywordQuery(sort=sort)
    assert query.body()["sort"][0] == first
    assert query.body()["sort"][1:] == KeywordQuery().body()["sort"]
    assert query.template_params()[f"sort_{sort}"] is True


def test_keyword_search_after_facets_and_exclusion():
    query = KeywordQuery(
        "x", search_after=[1.5, "m", "p"], facets=True, exclude=ProductRef("m", "p")
    )
    body = query.body()
    assert body["search_after"] == [1.5, "m", "p"]
    assert body["aggs"] == mappings.facet_aggs()
    assert set(body["aggs"]) == {
        "tags",
        "category",
        "merchant_id",
        "price",
        "auto_category",
        "auto_tags",
        "quality_flags",
    }
    assert body["query"]["bool"]["must_not"] == ProductRef("m", "p").exclusion()
    params = query.template_params()
    assert params["search_after"] == [1.5, "m", "p"] and params["facets"] is True
    assert params["exclude_product_id"] == "p"


def test_keyword_limits():
    with pytest.raises(ValueError):
        KeywordQuery(from_=9_995, size=10)
    with pytest.raises(ValueError):
        KeywordQuery(sort="cheapest")  # type: ignore[arg-type]


def test_product_vector_lookup():
    query = ProductVectorQuery(ProductRef("m", "p"), "model")
    assert query.body()["query"]["bool"]["filter"] == [
        {"term": {"merchant_id": "m"}},
        {"term": {"model_id": "model"}},
        {"term": {"product_id": "p"}},
    ]
    assert query.body()["sort"] == [{"image_index": "asc"}]
    assert "image_vector" in query.body()["_source"]
    assert query.template_params() == {"merchant_id": "m", "product_id": "p", "model_id": "model"}


# --------------------------------------------------------------------------- stored templates

VARIABLE = re.compile(r"\{\{[#^/]?\s*([a-z_]+)(?:\.size)?\s*\}\}")
TO_JSON = re.compile(r"\{\{#toJson\}\}([a-z_]+)\{\{/toJson\}\}")


def test_template_ids_are_namespaced_by_alias():
    templates = mappings.search_templates("shop-a")
    assert list(templates) == [
        "shop-a-knn",
        "shop-a-more-like-this",
        "shop-a-exact",
        "shop-a-product-vector",
        "shop-a-keyword",
        "shop-a-recommend",
        "shop-a-offers",
    ]
    assert all(body["script"]["lang"] == "mustache" for body in templates.values())


@pytest.mark.parametrize("name", mappings.SEARCH_TEMPLATES)
def test_template_sources_use_exactly_their_documented_params(name):
    source = mappings.search_template_source(name)
    assert not re.search(r"@[a-z_]+@", source), "unsubstituted partial"
    used = set(VARIABLE.findall(source)) | set(TO_JSON.findall(source))
    used -= {"toJson"}
    documented = set(mappings.es_mapping_file(f"search_templates/{name}.json")["params"])
    if "@filters" in documented:
        documented.remove("@filters")
        documented |= {
            "tags_all",
            "tags_any",
            "category",
            "merchant_id",
            "min_price",
            "max_price",
            "currency",
            "in_stock",
            "out_of_stock",
            "exclude_quality_flags",
            "auto_tags_all",
            "auto_category",
            "duplicate_group",
        }
    assert used == documented


@pytest.mark.parametrize(
    "query",
    [
        KnnQuery([1.0], "m", ALL_FILTERS, k=3, exclude=ProductRef("a", "b"), size=2),
        ExactQuery([1.0], "m", ALL_FILTERS, k=3, exclude=ProductRef("a", "b")),
        KeywordQuery(
            "t",
            ALL_FILTERS,
            "m",
            sort="newest",
            search_after=[1],
            facets=True,
            exclude=ProductRef("a", "b"),
        ),
    ],
)
def test_python_params_are_all_template_params(query):
    source = mappings.search_template_source(query.template)
    used = set(VARIABLE.findall(source)) | set(TO_JSON.findall(source))
    assert set(query.template_params()) <= used


# --------------------------------------------------------------------------- search plan

SETTINGS = VitrineSettings()


def window(**overrides):
    defaults = {"k": 10, "k_docs": 30, "num_candidates": 100, "from_": 0, "size": 10}
    return Window(**{**defaults, **overrides})


def test_shapes():
    assert SearchQuery().shape == "keyword"
    assert SearchQuery(text="red").shape == "text"
    assert SearchQuery(text="red", text_mode="keyword").shape == "keyword"
    assert SearchQuery(vector=[1.0], vector_model_id="m").shape == "image"
    assert SearchQuery(vector=[1.0], vector_model_id="m", text="red").shape == "image_text"
    assert SearchQuery(product=ProductRef("m", "p"), text="  ").shape == "more_like_this"


def test_validate_defaults_and_window():
    w = validate(SearchQuery(text="x"), SETTINGS)
    assert (w.k, w.k_docs, w.num_candidates, w.from_, w.size) == (20, 60, 120, 0, 20)
    w = validate(SearchQuery(text="x", k=5, num_candidates=10, size=2, from_=4), SETTINGS)
    assert (w.k, w.k_docs, w.num_candidates, w.from_, w.size) == (5, 10, 10, 4, 2)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            SearchQuery(vector=[1.0], vector_model_id="m", product=ProductRef("m", "p")),
            "at most one",
        ),
        (SearchQuery(vector=[1.0]), "model_id"),
        (SearchQuery(text="x", k=201), "k must"),
        (SearchQuery(text="x", k=20, num_candidates=19), "num_candidates"),
        (SearchQuery(text="x", search_after=[1]), "search_after"),
        (SearchQuery(text="x", sort="price_asc"), "sort"),
        (SearchQuery(from_=9_990, size=20), "from \\+ size"),
        (SearchQuery(from_=10, search_after=[1]), "either from or search_after"),
    ],
)
def test_validate_rejects(query, message):
    with pytest.raises(QueryError, match=message) as info:
        validate(query, SETTINGS)
    assert info.value.reason == "invalid_query"


@pytest.mark.parametrize(
    "options",
    [
        {"k": 0},
        {"num_candidates": 10_001},
        {"image_weight": 1.5},
        {"keyword_weight": -1},
        {"fusion": "max"},
        {"text": "x" * 1001},
        {"from_": -1},
        {"rrf_k": 0},
    ],
)
def test_search_options_refuse_values_out_of_range(options):
    """What does not depend on the settings is checked when the query is built, as in the API."""
    with pytest.raises(ValidationError):
        SearchQuery(**{"text": "x", **options})


def lists(query, visual=None, text=None):
    plans = plan_lists(query, window(), model_id="m", visual_vector=visual, text_vector=text)
    return {p.name: p for p in plans}


def test_plan_image_only_and_text_hybrid():
    assert {n: p.weight for n, p in lists(SearchQuery(), visual=[1.0, 0.0]).items()} == {
        "image": 1.0
    }
    plans = lists(SearchQuery(text="red", keyword_weight=0.5), text=[0.0, 1.0])
    assert {n: p.weight for n, p in plans.items()} == {"text": 1.0, "keyword": 0.5}
    keyword = plans["keyword"].query
    assert isinstance(keyword, KeywordQuery) and keyword.size == 10 and keyword.model_id == "m"
    assert plans["text"].query.k == 30 and plans["text"].query.num_candidates == 100


def test_plan_image_and_text_as_one_embedding():
    plans = lists(SearchQuery(text="red", image_weight=0.8), visual=[1.0, 0.0], text=[0.0, 1.0])
    assert {n: p.weight for n, p in plans.items()} == {
        "image_text": 1.0,
        "keyword": pytest.approx(0.2),
    }
    vector = plans["image_text"].query.vector
    assert vector[0] == pytest.approx(0.8 / (0.8**2 + 0.2**2) ** 0.5)


def test_plan_image_and_text_as_lists():
    query = SearchQuery(text="red", combine="lists", image_weight=0.25, text_mode="vector")
    plans = lists(query, visual=[1.0, 0.0], text=[0.0, 1.0])
    assert {n: p.weight for n, p in plans.items()} == {"image": 0.25, "text": 0.75}


def test_plan_weight_one_is_the_image_alone_and_zero_lists_are_dropped():
    plans = lists(SearchQuery(text="red", image_weight=1.0), visual=[1.0, 0.0], text=[0.0, 1.0])
    assert {n: p.weight for n, p in plans.items()} == {"image_text": 1.0}
    query = SearchQuery(text="red", image_weight=0.0, keyword_weight=0.0, text_mode="keyword")
    with pytest.raises(QueryError, match="weight 0"):
        lists(query, visual=[1.0, 0.0])


def test_plan_more_like_this_excludes_the_product_everywhere():
    product = ProductRef("m", "p")
    plans = lists(SearchQuery(product=product, text="red"), visual=[1.0, 0.0], text=[0.0, 1.0])
    assert all(p.query.exclude == product for p in plans.values())
    assert plans["image_text"].query.template == "more-like-this"
