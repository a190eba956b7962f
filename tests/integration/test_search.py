"""Every query shape against the real Elasticsearch, on a catalogue where the answer is known;
the stored templates against the Python path; errors for vectors that do not fit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from elasticsearch import BadRequestError
from typer.testing import CliRunner

from pipeline.documents import MATCHING_FIELDS, document_id
from pipeline.encoders import Encoder
from pipeline.es import mappings
from pipeline.ingest.ingestor import Ingestor
from pipeline.search import fusion
from pipeline.search.fusion import RankedList
from pipeline.search.plan import QueryError, SearchQuery
from pipeline.search.query import (
    ExactQuery,
    Filters,
    KeywordQuery,
    KnnQuery,
    ProductRef,
    ProductVectorQuery,
)
from pipeline.search.searcher import Searcher
from tests.integration.helpers import unique_prefix
from tests.integration.search_catalogue import Catalogue, build_catalogue, index_catalogue

ALL = {"sneaker", "boot", "bag", "crimson_bag", "scarf", "hat", "sneaker_b", "gift_card"}


@pytest.fixture(scope="module")
def cat(es, settings, encoder, tmp_path_factory) -> Catalogue:
    catalogue = build_catalogue(tmp_path_factory.mktemp("search"), unique_prefix())
    index_catalogue(Ingestor(settings, es=es, encoder=encoder), catalogue)
    return catalogue


@pytest.fixture(scope="module")
def searcher(es, settings, encoder) -> Searcher:
    return Searcher(settings, es, encoder)


def test_templates_are_installed_with_the_index(es, settings, cat):
    for template_id, body in mappings.search_templates(settings.index_alias).items():
        stored = es.get_script(id=template_id)
        assert stored["found"] and stored["script"]["source"] == body["script"]["source"]


# --------------------------------------------------------------------------- shapes


def test_image_finds_its_product_first_and_each_product_once(searcher, cat):
    result = searcher.search(SearchQuery(image=cat.image("sneaker"), filters=cat.filters()))
    names = cat.names(result.hits)
    assert result.shape == "image" and result.fusion is None
    assert names[0] == "sneaker" and result.hits[0]["score"] > 0.99
    assert sorted(names) == sorted(ALL)  # the sneaker's two images give one hit
    keys = [(h["merchant_id"], h["product_id"]) for h in result.hits]
    assert len(keys) == len(set(keys)) == result.total
    top = result.hits[0]
    assert (top["merchant_id"], top["product_id"]) == (f"{cat.prefix}-a", f"{cat.prefix}-sneaker")
    expected_id = document_id(top["merchant_id"], top["product_id"], top["image_sha256"])
    assert top["document_id"] == expected_id


@pytest.mark.parametrize("name", ["boot", "scarf", "sneaker_b"])
def test_near_duplicate_query_image_finds_the_original(searcher, cat, name):
    result = searcher.search(SearchQuery(image=cat.image(f"{name}_near"), filters=cat.filters()))
    assert cat.name(result.hits[0]) == name


def test_indexed_near_duplicates_rank_together(searcher, cat):
    result = searcher.search(SearchQuery(image=cat.image("bag"), filters=cat.filters(), k=2))
    assert cat.names(result.hits) == ["bag", "crimson_bag"]


def test_keyword_text_matches_titles_descriptions_and_tags(searcher, cat):
    red = searcher.search(SearchQuery(text="red", text_mode="keyword", filters=cat.filters()))
    assert result_set(cat, red) == {"sneaker", "crimson_bag"}  # title, tag, description
    crimson = searcher.search(
        SearchQuery(text="Crimson", text_mode="keyword", filters=cat.filters())
    )
    assert cat.names(crimson.hits) == ["crimson_bag"] and crimson.total == 1
    tote = searcher.search(SearchQuery(text="tote bag", text_mode="keyword", filters=cat.filters()))
    assert set(cat.names(tote.hits)[:2]) == {"bag", "crimson_bag"}


def test_text_hybrid_puts_the_keyword_match_first(searcher, cat):
    result = searcher.search(SearchQuery(text="crimson", filters=cat.filters(), explain=True))
    assert result.shape == "text" and result.fusion == "rrf"
    assert cat.name(result.hits[0]) == "crimson_bag"
    lists = result.hits[0]["explanation"]["lists"]
    assert set(lists) == {"text", "keyword"} and lists["keyword"]["rank"] == 1
    assert result.hits[0]["score"] == pytest.approx(
        sum(c["weight"] / (60 + c["rank"]) for c in lists.values())
    )
    assert all(set(h["explanation"]["lists"]) == {"text"} for h in result.hits[1:])
    vector_only = searcher.search(
        SearchQuery(text="crimson", text_mode="vector", filters=cat.filters())
    )
    assert vector_only.fusion is None and len(vector_only.hits) == len(ALL)


@pytest.mark.parametrize("mode", ["lists", "embedding"])
@pytest.mark.parametrize("method", ["rrf", "linear"])
def test_like_this_but_crimson(searcher, cat, mode, method):
    query = SearchQuery(
        image=cat.image("bag"), text="crimson", combine=mode, fusion=method, filters=cat.filters()
    )
    result = searcher.search(query)
    assert result.shape == "image_text"
    names = cat.names(result.hits)
    if mode == "lists":  # image list: bag, crimson_bag; keyword list: crimson_bag
        assert names[0] == "crimson_bag"
    else:  # one mixed vector (meaningless text half here) fused with the keyword list
        assert "crimson_bag" in names[:2]


def test_image_weight_one_is_the_image_search(searcher, cat):
    image = cat.image("boot")
    plain = searcher.search(SearchQuery(image=image, filters=cat.filters()))
    weighted = searcher.search(
        SearchQuery(image=image, text="crimson", image_weight=1.0, filters=cat.filters())
    )
    assert [h["document_id"] for h in weighted.hits] == [h["document_id"] for h in plain.hits]
    assert [h["score"] for h in weighted.hits] == pytest.approx([h["score"] for h in plain.hits])


def test_more_like_this_excludes_the_product(searcher, cat):
    bag = cat.products["bag"]
    result = searcher.search(
        SearchQuery(product=ProductRef(bag.merchant_id, bag.product_id), filters=cat.filters())
    )
    names = cat.names(result.hits)
    assert result.shape == "more_like_this"
    assert names[0] == "crimson_bag" and "bag" not in names and len(names) == len(ALL) - 1


def test_more_like_this_unknown_product(searcher, cat):
    with pytest.raises(QueryError) as info:
        searcher.search(SearchQuery(product=ProductRef(f"{cat.prefix}-a", "nope")))
    assert info.value.reason == "product_not_found"


# --------------------------------------------------------------------------- filters

FILTER_CASES = [
    ({"tags_all": ["sale"]}, {"sneaker", "bag", "scarf"}),
    ({"tags_any": ["winter", "Summer"]}, {"boot", "scarf", "hat", "sneaker_b"}),
    ({"category": "Bags"}, {"bag", "crimson_bag"}),
    ({"merchant_id": "{prefix}-b"}, {"scarf", "hat", "sneaker_b", "gift_card"}),
    ({"min_price": 20, "max_price": 50}, {"sneaker", "bag", "hat", "sneaker_b"}),
    ({"min_price": 0}, ALL - {"gift_card"}),
    ({"currency": "USD"}, {"bag"}),
    ({"in_stock": False}, {"boot"}),
    ({"in_stock": True}, ALL - {"boot"}),
    ({"exclude_quality_flags": ["low_resolution"]}, ALL - {"hat"}),
    ({"category": "shoes", "in_stock": True, "max_price": 48}, {"sneaker"}),
]


def result_set(cat: Catalogue, result) -> set[str]:
    return set(cat.names(result.hits))


@pytest.mark.parametrize(("fields", "expected"), FILTER_CASES)
@pytest.mark.parametrize("shape", ["image", "text", "keyword", "more_like_this"])
def test_filters_never_leak(searcher, cat, fields, expected, shape):
    fields = {
        k: v.format(prefix=cat.prefix) if isinstance(v, str) else v for k, v in fields.items()
    }
    filters = cat.filters(**fields)
    boot = cat.products["boot"]
    query = {
        "image": SearchQuery(image=cat.image("boot"), filters=filters),
        "text": SearchQuery(text="tote", filters=filters),
        "keyword": SearchQuery(filters=filters),
        "more_like_this": SearchQuery(
            product=ProductRef(boot.merchant_id, boot.product_id), filters=filters
        ),
    }[shape]
    if shape == "more_like_this":
        expected = expected - {"boot"}
    assert result_set(cat, searcher.search(query)) == expected


def test_filters_apply_inside_knn_not_after(es, settings, searcher, cat, encoder):
    vector = encoder.embed_images([cat.image("boot")])[0]
    body = KnnQuery(vector, encoder.model_id, cat.filters(category="bags"), k=1).body()
    hits = es.search(index=settings.index_alias, **body)["hits"]["hits"]
    assert len(hits) == 1 and hits[0]["_source"]["category"] == "bags"
    result = searcher.search(
        SearchQuery(image=cat.image("boot"), filters=cat.filters(category="bags"), k=1)
    )
    assert [h["category"] for h in result.hits] == ["bags"]


# --------------------------------------------------------------------------- paging and facets


def test_vector_pagination_is_stable(searcher, cat):
    base = {"image": cat.image("scarf"), "filters": cat.filters(), "k": 8}
    full = [h["document_id"] for h in searcher.search(SearchQuery(**base)).hits]
    pages = [
        h["document_id"]
        for start in (0, 3, 6)
        for h in searcher.search(SearchQuery(**base, from_=start, size=3)).hits
    ]
    assert pages == full and len(full) == 8
    assert [h["document_id"] for h in searcher.search(SearchQuery(**base)).hits] == full


@pytest.mark.parametrize("sort", ["relevance", "price_asc", "price_desc", "newest"])
def test_keyword_pagination_from_and_search_after(searcher, cat, sort):
    full = searcher.search(SearchQuery(filters=cat.filters(), sort=sort))
    ids = [h["document_id"] for h in full.hits]
    assert len(ids) == full.total == len(ALL)
    by_from = [
        h["document_id"]
        for start in (0, 3, 6)
        for h in searcher.search(
            SearchQuery(filters=cat.filters(), sort=sort, from_=start, size=3)
        ).hits
    ]
    assert by_from == ids
    by_cursor, after = [], None
    while True:
        page = searcher.search(
            SearchQuery(filters=cat.filters(), sort=sort, size=3, search_after=after)
        )
        by_cursor += [h["document_id"] for h in page.hits]
        after = page.next_search_after
        if after is None:
            break
    assert by_cursor == ids
    prices = [h["price"] for h in full.hits if h["price"] is not None]
    if sort == "price_asc":
        assert prices == sorted(prices) and full.hits[-1]["price"] is None
    if sort == "price_desc":
        assert prices == sorted(prices, reverse=True)


EXPECTED_FACETS = {
    "category": [("shoes", 3), ("accessories", 2), ("bags", 2)],
    "price": [("0-25", 1), ("25-50", 3), ("50-100", 2), ("100-200", 1), ("200+", 0)],
}


def test_facets_count_products_in_keyword_and_vector_searches(searcher, cat):
    keyword = searcher.search(SearchQuery(filters=cat.filters(), facets=True)).facets
    vector = searcher.search(
        SearchQuery(image=cat.image("hat"), filters=cat.filters(), facets=True)
    ).facets
    assert keyword == vector
    for name, expected in EXPECTED_FACETS.items():
        assert [(b["value"], b["count"]) for b in keyword[name]] == expected
    tags = {b["value"]: b["count"] for b in keyword["tags"]}
    assert tags == {cat.prefix: 8, "sale": 3, "red": 2, "winter": 2, "summer": 2}
    merchants = {b["value"]: b["count"] for b in keyword["merchant_id"]}
    assert merchants == {f"{cat.prefix}-a": 4, f"{cat.prefix}-b": 4}


# --------------------------------------------------------------------------- templates


def template_cases(cat: Catalogue, model_id: str, vector: list[float]):
    filters = Filters(
        tags_all=[cat.prefix, "Sale"],
        tags_any=["red", "winter"],
        category="shoes",
        merchant_id=f"{cat.prefix}-a",
        min_price=0,
        max_price=99.5,
        currency="EUR",
        in_stock=True,
        exclude_quality_flags=["low_resolution"],
        auto_tags_all=["colour:Red", "material:leather"],
        auto_category="Bag",
    )
    product = ProductRef(f"{cat.prefix}-a", f"{cat.prefix}-bag")
    return [
        KnnQuery(vector, model_id, Filters(), k=5, num_candidates=50),
        KnnQuery(vector, model_id, filters, k=7, num_candidates=100),
        KnnQuery(vector, model_id, Filters(in_stock=False), k=3, exclude=product),
        KnnQuery(vector, model_id, filters, k=40, num_candidates=80, size=7),
        ExactQuery(vector, model_id, Filters(), k=5),
        ExactQuery(vector, model_id, filters, k=7, exclude=product),
        KeywordQuery(),
        KeywordQuery(
            'red "canvas" \\ shoe', filters, model_id, 2, 5, "price_desc", None, True, product
        ),
        KeywordQuery(
            "tote", Filters(tags_any=[cat.prefix]), sort="newest", search_after=[1.0, "a", "b"]
        ),
        ProductVectorQuery(product, model_id),
        ProductVectorQuery(product),
    ]


def test_templates_render_exactly_the_python_bodies(es, settings, cat, encoder):
    vector = [float(x) for x in encoder.embed_texts(["a query"])[0]]
    for query in template_cases(cat, encoder.model_id, vector):
        template_id = mappings.search_template_id(settings.index_alias, query.template)
        rendered = es.render_search_template(id=template_id, params=query.template_params())
        assert rendered["template_output"] == query.body(), query


def run_like_a_frontend(es, settings, result) -> list[dict]:
    """Reproduce a search from its template calls only: run them, then de-duplicate and fuse
    as the README's frontend section tells frontend developers to."""
    lists, vector = [], None
    for call in result.requests:
        params = dict(call["params"])
        response = es.search_template(
            index=settings.index_alias, id=call["template_id"], params=params
        )
        hits = response["hits"]["hits"]
        assert not any(set(MATCHING_FIELDS) & set(hit["_source"]) for hit in hits)
        if call["list"] == "product_vector":
            vector = hits[0]["_source"]["image_vector"]
            continue
        if vector is not None and call["list"] == "image":
            assert params["query_vector"] == pytest.approx(vector)
        lists.append(RankedList(call["list"], hits, call["weight"]))
    fused = fusion.fuse(lists, result.fusion or "rrf", rrf_k=settings.rrf_k)[: result.k]
    page = fused[result.from_ : result.from_ + result.size]
    return [{"document_id": f.hit["_id"], "score": f.score} for f in page]


def test_templates_return_the_same_hits_as_the_python_path(es, settings, searcher, cat):
    bag = cat.products["bag"]
    queries = [
        SearchQuery(image=cat.image("sneaker"), filters=cat.filters(tags_any=["sale", "red"])),
        SearchQuery(text="crimson tote", filters=cat.filters(), k=6, size=4, from_=1),
        SearchQuery(text="canvas", fusion="linear", filters=cat.filters(in_stock=True)),
        SearchQuery(image=cat.image("bag"), text="crimson", combine="lists", filters=cat.filters()),
        SearchQuery(image=cat.image("bag"), text="red", image_weight=0.7, filters=cat.filters()),
        SearchQuery(product=ProductRef(bag.merchant_id, bag.product_id), filters=cat.filters()),
        SearchQuery(
            product=ProductRef(bag.merchant_id, bag.product_id), text="red", filters=cat.filters()
        ),
        SearchQuery(text="canvas", text_mode="keyword", filters=cat.filters(), size=2, facets=True),
        SearchQuery(
            filters=cat.filters(max_price=100),
            sort="price_asc",
            size=3,
            search_after=[25.0, 1.0, "", ""],
        ),
    ]
    for query in queries:
        result = searcher.search(query.model_copy(update={"explain": True}))
        assert result.requests and result.hits, query
        expected = [{"document_id": h["document_id"], "score": h["score"]} for h in result.hits]
        got = run_like_a_frontend(es, settings, result)
        assert [g["document_id"] for g in got] == [e["document_id"] for e in expected], query
        assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected])


# --------------------------------------------------------------------------- errors


def test_query_vectors_of_another_dimension_or_model_are_refused(
    es, settings, searcher, encoder, cat
):
    vector = [float(x) for x in encoder.embed_images([cat.image("bag")])[0]]
    ok = searcher.search(
        SearchQuery(vector=vector, vector_model_id=encoder.model_id, filters=cat.filters())
    )
    assert cat.name(ok.hits[0]) == "bag"
    with pytest.raises(QueryError, match="31 dimensions, the index's vectors 32") as info:
        searcher.search(SearchQuery(vector=vector[:31], vector_model_id=encoder.model_id))
    assert info.value.reason == "dimension_mismatch"
    with pytest.raises(QueryError, match="embed the query again") as info:
        searcher.search(SearchQuery(vector=vector, vector_model_id="open_clip:other:x:32"))
    assert info.value.reason == "model_mismatch"
    # a frontend calling the template with a wrong-sized vector gets Elasticsearch's 400
    template_id = mappings.search_template_id(settings.index_alias, "knn")
    with pytest.raises(BadRequestError, match="different dimension"):
        es.search_template(
            index=settings.index_alias,
            id=template_id,
            params={"query_vector": vector[:31], "model_id": encoder.model_id},
        )


class OtherModel(Encoder):
    model_id, dim, semantic = "open_clip:other:y:32", 32, False

    def embed_images(self, images):
        return np.ones((len(images), 32), dtype=np.float32) / np.sqrt(32)

    def embed_texts(self, texts):
        return self.embed_images(texts)


def test_a_process_with_another_model_follows_the_index_model(es, settings, cat):
    """The index records its encoder settings: a process configured for another model (the API
    after a re-embed's swap) embeds queries with the index's model instead."""
    searcher = Searcher(settings, es, OtherModel())
    result = searcher.search(SearchQuery(image=cat.image("bag"), filters=cat.filters()))
    assert cat.names(result.hits)[0] == "bag"


def test_a_process_with_another_model_cannot_search_an_index_without_encoder_settings(
    es, settings, cat, monkeypatch
):
    searcher = Searcher(settings, es, OtherModel())
    info = searcher.index_info()
    unrecorded = dataclasses.replace(
        info, meta={k: v for k, v in info.meta.items() if k != "encoder"}
    )
    monkeypatch.setattr(searcher, "index_info", lambda: unrecorded)
    with pytest.raises(QueryError) as raised:
        searcher.search(SearchQuery(image=cat.image("bag")))
    assert raised.value.reason == "encoder_model_mismatch"


def test_keyword_search_loads_no_model(es, settings, cat):
    searcher = Searcher(settings, es, lambda: pytest.fail("the model was loaded"))
    result = searcher.search(SearchQuery(text="scarf", text_mode="keyword", filters=cat.filters()))
    assert cat.names(result.hits) == ["scarf"]


def test_missing_index(es, settings):
    searcher = Searcher(settings.model_copy(update={"index_alias": "no-such-alias-x1"}), es)
    with pytest.raises(QueryError) as info:
        searcher.search(SearchQuery())
    assert info.value.reason == "index_not_found"


# --------------------------------------------------------------------------- CLI


def test_cli_search(settings, cat):
    from pipeline.cli import app

    runner = CliRunner()
    env = settings.to_env()
    out = runner.invoke(
        app, ["search", "--text", "crimson", "--tag", cat.prefix, "--json"], env=env
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert (
        result["shape"] == "text" and result["hits"][0]["product_id"] == f"{cat.prefix}-crimson_bag"
    )

    image = str(cat.query_images["boot_near"])
    args = ["search", "--image", image, "--tag", cat.prefix, "-k", "3", "--explain", "--facets"]
    out = runner.invoke(app, args, env=env)
    assert out.exit_code == 0, out.output
    rows = out.output.splitlines()
    assert f"{cat.prefix}-boot" in rows[2] and "image #1" in rows[3]
    assert "facet category:" in out.output
    assert "plan: exact (the filter keeps at most " in out.output

    args = ["search", "--product-id", "nope", "--merchant", "m", "--tag", cat.prefix]
    out = runner.invoke(app, args, env=env)
    assert out.exit_code == 1 and "product_not_found" in out.output
