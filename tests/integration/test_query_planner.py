"""The query planner against the real Elasticsearch: exact and kNN plans find the same
products on a small catalogue, the plan shows in explain, flat lists are searched again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from pipeline.documents import Product
from pipeline.ingest.ingestor import Ingestor
from pipeline.search import planner
from pipeline.search.plan import SearchQuery
from pipeline.search.planner import Estimate
from pipeline.search.query import Filters, ProductRef
from pipeline.search.searcher import Searcher
from tests.integration.helpers import near_duplicate, pattern_image, unique_prefix
from tests.integration.search_catalogue import Catalogue, build_catalogue, index_catalogue


@pytest.fixture(scope="module")
def cat(es, settings, encoder, tmp_path_factory) -> Catalogue:
    catalogue = build_catalogue(tmp_path_factory.mktemp("planner"), unique_prefix())
    index_catalogue(Ingestor(settings, es=es, encoder=encoder), catalogue)
    return catalogue


def searcher(es, settings, encoder, **overrides) -> Searcher:
    return Searcher(settings.model_copy(update=overrides), es, encoder)


def queries(cat: Catalogue) -> list[SearchQuery]:
    bag = cat.products["bag"]
    return [
        SearchQuery(image=cat.image("sneaker"), filters=cat.filters()),
        SearchQuery(image=cat.image("bag"), filters=cat.filters(in_stock=True), k=3),
        SearchQuery(text="red", text_mode="vector", filters=cat.filters()),
        SearchQuery(product=ProductRef(bag.merchant_id, bag.product_id), filters=cat.filters()),
    ]


def products(result) -> list[tuple[str, str]]:
    return [(h["merchant_id"], h["product_id"]) for h in result.hits]


def test_few_documents_are_searched_exactly_with_the_same_results_as_knn(
    es, settings, encoder, cat
):
    exact = searcher(es, settings, encoder)  # the catalogue is far below search_exact_max_docs
    knn = searcher(es, settings, encoder, search_exact_max_docs=0, search_flat_contrast=0)
    for query in queries(cat):
        query = query.model_copy(update={"explain": True})
        by_exact, by_knn = exact.search(query), knn.search(query)
        assert by_exact.plan and by_exact.plan["method"] == "exact", query
        assert by_knn.plan and by_knn.plan["method"] == "knn", query
        assert products(by_exact) == products(by_knn), query
        scores = zip(
            [h["score"] for h in by_exact.hits], [h["score"] for h in by_knn.hits], strict=True
        )
        assert all(a == pytest.approx(b, abs=1e-4) for a, b in scores)
        assert by_exact.plan["estimated_docs"] == by_knn.plan["estimated_docs"] > 0
        calls = [r["template_id"].rsplit("-", 1)[-1] for r in by_exact.requests or []]
        assert "exact" in calls and "knn" not in calls


def test_the_estimate_is_the_count_of_documents_the_filter_keeps(es, settings, encoder, cat):
    s = searcher(es, settings, encoder)
    filters = cat.filters(in_stock=True)
    model_id = encoder.model_id
    expected = es.count(
        index=settings.index_alias,
        query={"bool": {"filter": [{"term": {"tags": cat.prefix}}, {"term": {"in_stock": True}}]}},
    )["count"]
    assert s.counts.estimate(settings.index_alias, filters, model_id).docs == expected > 0
    no_match = Filters(tags_all=[cat.prefix, "no-such-tag"])
    assert s.counts.estimate(settings.index_alias, no_match, model_id) == Estimate(0, 0)


def test_a_price_bound_is_counted_widened_and_a_slider_moved_is_not_counted_again(
    es, settings, encoder, cat
):
    s = searcher(es, settings, encoder)
    alias, model_id = settings.index_alias, encoder.model_id

    def count(max_price: float | None = None) -> int:
        clauses = [{"term": {"tags": cat.prefix}}, {"term": {"model_id": model_id}}]
        if max_price is not None:
            clauses.append({"range": {"price": {"lte": max_price}}})
        return es.count(index=alias, query={"bool": {"filter": clauses}})["count"]

    requests: list[dict] = []
    client = s.counts.es
    s.counts.es = SimpleNamespace(  # type: ignore[assignment]
        msearch=lambda **request: requests.append(request) or client.msearch(**request)
    )
    first = s.counts.estimate(alias, cat.filters(max_price=46.0), model_id)
    assert len(requests) == 1 and len(requests[0]["searches"]) == 4  # widened, and no price
    assert count(46.0) < first.docs == count(2**5.75)  # the grid cell holds sneaker_b (50)
    moved = s.counts.estimate(alias, cat.filters(max_price=20.0), model_id)
    assert len(requests) == 1  # the catalogue keeps fewer than search_exact_max_docs anyway
    assert moved.docs == count() > count(20.0)


def test_over_fetch_only_where_products_have_several_images(es, settings, encoder, cat):
    s = searcher(es, settings, encoder)
    sneaker = SearchQuery(image=cat.image("sneaker"), filters=cat.filters(), k=3, explain=True)
    several = s.search(sneaker)  # the sneaker has two images
    assert several.plan and several.plan["k_docs"] == 3 * settings.search_overfetch
    one = s.search(sneaker.model_copy(update={"filters": cat.filters(category="accessories")}))
    assert one.plan and one.plan["k_docs"] == 3 and "no over-fetch" in one.plan["reason"]
    assert len(one.hits) == 2  # scarf and hat


def test_a_stale_estimate_never_costs_a_product(es, settings, encoder, cat):
    """An estimate that missed the sneaker's second image: asked for as many products as the
    catalogue has documents, the list repeats the sneaker, and runs again with the over-fetch."""
    docs = es.count(index=settings.index_alias, query={"term": {"tags": cat.prefix}})["count"]

    class Stale:
        def estimate(self, index: str, filters: Filters, model_id: str) -> Estimate:
            return Estimate(docs, further_images=0)

    stale = searcher(es, settings, encoder)
    stale.counts = Stale()  # type: ignore[assignment]
    query = SearchQuery(image=cat.image("sneaker"), filters=cat.filters(), k=docs, explain=True)
    result = stale.search(query)
    assert result.plan and "repeated a product" in result.plan["reason"]
    calls = [r["template_id"].rsplit("-", 1)[-1] for r in result.requests or []]
    assert calls == ["exact", "exact"]
    assert products(result) == products(searcher(es, settings, encoder).search(query))
    assert len(products(result)) == len(set(products(result))) == docs - 1


def test_flat_knn_lists_are_searched_again_wider(es, settings, encoder, cat):
    always_flat = searcher(
        es, settings, encoder, search_exact_max_docs=0, search_flat_contrast=1, search_flat_pool=500
    )
    # a query image that is not in the index: an identical hit (distance 0) makes any list
    # steep, whatever search_flat_contrast says
    query = SearchQuery(image=cat.image("sneaker_b_near"), filters=cat.filters(), k=2, explain=True)
    result = always_flat.search(query)
    assert result.plan and result.plan["widened"] and "flat scores" in result.plan["reason"]
    # the catalogue keeps fewer documents than the pool: the second pass is exact
    assert result.plan["method"] == "exact"
    calls = [r["template_id"].rsplit("-", 1)[-1] for r in result.requests or []]
    assert calls == ["knn", "exact"]
    exact = searcher(es, settings, encoder).search(query)
    assert products(result) == products(exact) and exact.plan and not exact.plan["widened"]
    assert (
        searcher(es, settings, encoder).search(query.model_copy(update={"explain": False})).plan
        is None
    )


def test_a_filter_whose_first_passes_come_back_flat_starts_wide(es, settings, encoder, cat):
    always_flat = searcher(es, settings, encoder, search_exact_max_docs=0, search_flat_contrast=1)
    query = SearchQuery(image=cat.image("sneaker_b_near"), filters=cat.filters(), k=2, explain=True)
    first = [always_flat.search(query) for _ in range(planner.FlatHistory.MIN_SEEN)]
    for result in first:
        calls = [r["template_id"].rsplit("-", 1)[-1] for r in result.requests or []]
        assert calls == ["knn", "exact"]
    result = always_flat.search(query)
    calls = [r["template_id"].rsplit("-", 1)[-1] for r in result.requests or []]
    assert calls == ["exact"]  # no first pass to repeat
    assert result.plan and result.plan["widened"] and "came back flat" in result.plan["reason"]
    assert products(result) == products(first[0])
    slider = query.model_copy(update={"filters": cat.filters(max_price=1000.0)})
    calls = [r["template_id"].rsplit("-", 1)[-1] for r in always_flat.search(slider).requests or []]
    assert calls == ["exact"]  # a price range shares the history of the filter without it
    other = query.model_copy(update={"filters": cat.filters(in_stock=True)})
    calls = [r["template_id"].rsplit("-", 1)[-1] for r in always_flat.search(other).requests or []]
    assert calls == ["knn", "exact"]  # another filter has its own history


def test_a_widened_exact_pass_fetches_k_documents_and_refills(es, settings, encoder, tmp_path):
    """After a flat kNN pass, the exact second pass fetches k documents where the estimate says
    one image per product; when its hits repeat a product (here a product with two copies of
    one picture, missed by a stale estimate), it runs again with the over-fetch."""
    prefix = unique_prefix()
    paths = []
    for i, image in enumerate(
        [pattern_image(9000), near_duplicate(pattern_image(9000), size=96, quality=90)]
        + [pattern_image(9001 + i) for i in range(5)]
    ):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    twin = Product(
        product_id=f"{prefix}-twin", merchant_id="m", title="t", images=[str(p) for p in paths[:2]],
        tags=[prefix],
    )  # fmt: skip
    others = [
        Product(product_id=f"{prefix}-{i}", merchant_id="m", title="t", images=[str(p)],
                tags=[prefix])
        for i, p in enumerate(paths[2:])
    ]  # fmt: skip
    Ingestor(settings, es=es, encoder=encoder).ingest([twin, *others], refresh=True)

    class Stale:
        def estimate(self, index: str, filters: Filters, model_id: str) -> Estimate:
            return Estimate(7, further_images=0)

    flat = searcher(es, settings, encoder, search_exact_max_docs=0, search_flat_contrast=1)
    flat.counts = Stale()  # type: ignore[assignment]
    query = SearchQuery(
        image=near_duplicate(pattern_image(9000), size=96, quality=95),
        filters=Filters(tags_all=[prefix]),
        k=2,
        explain=True,
    )
    result = flat.search(query)
    calls = [r["template_id"].rsplit("-", 1)[-1] for r in result.requests or []]
    sizes = [r["params"]["k"] for r in result.requests or []]
    assert calls == ["knn", "exact", "exact"] and sizes[1:] == [2, 6]
    assert result.plan and result.plan["widened"] and "repeated a product" in result.plan["reason"]
    assert [h["product_id"] for h in result.hits][0] == twin.product_id and len(result.hits) == 2


def test_searches_count_their_plan_in_the_metric_without_explain(es, settings, encoder, cat):
    def count(method: str) -> float:
        labels = {"method": method, "widened": "false"}
        return REGISTRY.get_sample_value("vitrine_search_plans_total", labels) or 0.0

    query = queries(cat)[0]
    before = count("exact"), count("knn")
    result = searcher(es, settings, encoder).search(query)
    assert result.plan is None and result.requests is None  # explain is off
    searcher(es, settings, encoder, search_exact_max_docs=0, search_flat_contrast=0).search(query)
    assert (count("exact"), count("knn")) == (before[0] + 1, before[1] + 1)
