"""The query planner's decisions: pure functions of the estimate and the first-pass scores."""

import pytest

from pipeline.search import planner
from pipeline.search.plan import ListPlan, QueryError, Window
from pipeline.search.query import ExactQuery, Filters, KeywordQuery, KnnQuery, ProductRef
from pipeline.settings import VitrineSettings

SETTINGS = VitrineSettings(
    search_exact_max_docs=20_000,
    search_flat_contrast=0.1,
    search_flat_pool=1000,
    search_flat_exact_max_docs=50_000,
)
WINDOW = Window(k=10, k_docs=30, num_candidates=100, from_=0, size=10)


def est(docs: int, further_images: int = 1) -> planner.Estimate:
    """An estimate of a filter that keeps products with several images (the over-fetch)."""
    return planner.Estimate(docs, further_images)


def test_few_documents_are_searched_exactly():
    plan = planner.choose(est(2_000), WINDOW, SETTINGS)
    assert (plan.method, plan.pool, plan.num_candidates, plan.k_docs) == ("exact", 2_000, None, 30)
    assert "2000 documents <= search_exact_max_docs (20000)" in plan.reason
    assert planner.choose(est(20_000), WINDOW, SETTINGS).method == "exact"


def test_many_documents_use_knn_with_the_window():
    plan = planner.choose(est(20_001), WINDOW, SETTINGS)
    assert (plan.method, plan.pool, plan.num_candidates, plan.widened) == ("knn", 30, 100, False)
    never = SETTINGS.model_copy(update={"search_exact_max_docs": 0})
    assert planner.choose(est(1), WINDOW, never).method == "knn"


def test_contrast_is_how_much_nearer_the_best_hit_is_than_the_last():
    assert planner.contrast([0.99, 0.5]) == pytest.approx(0.98)  # distances 0.01 vs 0.5
    assert planner.contrast([0.6, 0.59, 0.58]) == pytest.approx(1 - 0.4 / 0.42)
    assert planner.contrast([0.7]) == 1.0
    assert planner.contrast([1.0, 1.0]) == 1.0


def test_flat_knn_scores_widen_the_pool_once():
    knn = planner.choose(est(100_000), WINDOW, SETTINGS)
    flat = [0.6 - i * 0.0005 for i in range(30)]
    wide = planner.widen(knn, flat, SETTINGS)
    assert wide is not None
    assert (wide.method, wide.pool, wide.num_candidates, wide.widened) == ("knn", 1000, 2000, True)
    assert "flat scores" in wide.reason
    assert planner.widen(wide, flat, SETTINGS) is None  # once only
    steep = [0.95] + [0.6] * 29
    assert planner.widen(knn, steep, SETTINGS) is None


def test_flat_scores_search_exactly_when_the_filter_keeps_few_enough_documents():
    never = SETTINGS.model_copy(update={"search_exact_max_docs": 0})
    for kept in (900, 50_000):
        wide = planner.widen(planner.choose(est(kept), WINDOW, never), [0.6] * 30, SETTINGS)
        assert wide is not None and (wide.method, wide.pool, wide.widened) == ("exact", kept, True)
    wide = planner.widen(planner.choose(est(50_001), WINDOW, never), [0.6] * 30, SETTINGS)
    assert wide is not None and wide.method == "knn"
    no_exact = SETTINGS.model_copy(update={"search_flat_exact_max_docs": 0})
    wide = planner.widen(planner.choose(est(900), WINDOW, never), [0.6] * 30, no_exact)
    assert wide is not None and wide.method == "exact"  # the pool holds every kept document


def test_a_widened_exact_list_fetches_what_a_chosen_exact_list_would():
    """One image per product: k documents, like an exact plan chosen at once (fetching the
    over-fetch cost 1.8 ms a search at 100k documents); several: the over-fetch."""
    never = SETTINGS.model_copy(update={"search_exact_max_docs": 0})
    for further, k_docs in ((0, 10), (5, 30)):
        knn = planner.choose(est(900, further), WINDOW, never)
        assert knn.k_docs == 30 and knn.exact_k_docs == k_docs
        wide = planner.widen(knn, [0.6] * 30, SETTINGS)
        assert wide is not None and (wide.method, wide.k_docs) == ("exact", k_docs)
        started = planner.start_wide(knn, [(3, 3)], SETTINGS)
        assert (started.method, started.k_docs) == ("exact", k_docs)
        # a repeated product still brings the over-fetch back
        refilled = planner.refill(wide, WINDOW, ["a", "a", *"bcdefghi"])
        assert (refilled is not None) is (k_docs < 30)


def test_exact_plans_and_short_lists_are_not_widened():
    exact = planner.choose(est(10), WINDOW, SETTINGS)
    assert planner.widen(exact, [0.6] * 30, SETTINGS) is None
    knn = planner.choose(est(100_000), WINDOW, SETTINGS)
    assert planner.widen(knn, [0.6] * 5, SETTINGS) is None  # fewer hits than asked


def test_apply_replaces_knn_lists_and_keeps_keyword_lists():
    exclude = ProductRef("m", "p")
    knn = KnnQuery([1.0, 0.0], "model", Filters(category="bags"), 30, 100, exclude)
    keyword = KeywordQuery("red", Filters(), "model")
    lists = [ListPlan("image", 0.5, knn), ListPlan("keyword", 0.5, keyword)]

    exact = planner.apply(lists, planner.choose(est(50), WINDOW, SETTINGS))
    assert exact[0].query == ExactQuery([1.0, 0.0], "model", Filters(category="bags"), 30, exclude)
    assert exact[1] is lists[1]

    plan = planner.choose(est(100_000), WINDOW, SETTINGS)
    assert planner.apply(lists, plan)[0].query == knn  # the window as validated
    wide = planner.widen(plan, [0.6] * 30, SETTINGS)
    assert wide is not None
    body = planner.apply(lists, wide)[0].query.body()
    assert (body["knn"]["k"], body["knn"]["num_candidates"], body["size"]) == (1000, 2000, 30)
    assert body["rescore"]["window_size"] == 1000


def test_exact_lists_of_one_image_per_product_need_no_over_fetch():
    plan = planner.choose(planner.Estimate(2_000, further_images=0), WINDOW, SETTINGS)
    assert (plan.method, plan.k_docs, plan.pool) == ("exact", 10, 2_000)
    assert "no over-fetch" in plan.reason
    assert planner.choose(est(2_000), WINDOW, SETTINGS).k_docs == 30
    # kNN keeps it: the over-fetched documents are the pool re-scored and judged for contrast
    knn = planner.choose(planner.Estimate(100_000, further_images=0), WINDOW, SETTINGS)
    assert (knn.method, knn.k_docs, knn.pool) == ("knn", 30, 30)


def test_a_list_that_repeats_a_product_without_over_fetch_is_refilled():
    plan = planner.choose(planner.Estimate(500, 0), WINDOW, SETTINGS)
    distinct = [("m", str(i)) for i in range(10)]
    assert planner.refill(plan, WINDOW, distinct) is None
    repeated = [*distinct[:9], ("m", "0")]
    again = planner.refill(plan, WINDOW, repeated)
    assert again is not None and (again.method, again.k_docs, again.pool) == ("exact", 30, 500)
    assert "repeated a product" in again.reason
    assert planner.refill(again, WINDOW, repeated) is None  # already with the over-fetch
    assert planner.refill(plan, WINDOW, repeated[:5] + [("m", "0")]) is None  # all there is
    knn = planner.choose(planner.Estimate(100_000, 0), WINDOW, SETTINGS)
    assert planner.refill(knn, WINDOW, repeated) is None


def test_estimate_body_counts_the_filter_and_its_further_images():
    body = planner.estimate_body(Filters(tags_all=["p2"]), "model")
    assert body == {
        "query": {"bool": {"filter": [{"term": {"tags": "p2"}}, {"term": {"model_id": "model"}}]}},
        "size": 0,
        "track_total_hits": True,
        "aggs": {"further_images": {"filter": {"range": {"image_index": {"gt": 0}}}}},
    }


class FakeEs:
    """Counts what a filter keeps of a small catalogue (tags, price, image_index), as
    Elasticsearch would answer the planner's ``msearch`` of ``estimate_body`` requests."""

    def __init__(self, docs: list[tuple[str, float, int]]):
        self.docs = docs
        self.requests: list[int] = []  # searches in each msearch

    @staticmethod
    def keeps(clause: dict, doc: tuple[str, float, int]) -> bool:
        tag, price, _ = doc
        if "range" in clause:
            bounds = clause["range"]["price"]
            return bounds.get("gte", price) <= price <= bounds.get("lte", price)
        term = clause["term"]
        return term.get("tags", tag) == tag  # model_id: every document

    def msearch(self, searches: list[dict]) -> dict:
        self.requests.append(len(searches) // 2)
        responses = []
        for body in searches[1::2]:
            clauses = body["query"]["bool"]["filter"]
            kept = [d for d in self.docs if all(self.keeps(c, d) for c in clauses)]
            further = sum(1 for d in kept if d[2] > 0)
            responses.append(
                {
                    "hits": {"total": {"value": len(kept), "relation": "eq"}},
                    "aggregations": {"further_images": {"doc_count": further}},
                }
            )
        return {"responses": responses}


#: 40 "small" documents priced 1..40 (one with a second image), 400 "big" ones priced 1..400
CATALOGUE = [("small", float(p), int(p == 7)) for p in range(1, 41)] + [
    ("big", float(p), 0) for p in range(1, 401)
]


def true_count(tag: str | None, low: float | None, high: float | None) -> int:
    return sum(
        1
        for t, price, _ in CATALOGUE
        if (tag is None or t == tag)
        and (low is None or price >= low)
        and (high is None or price <= high)
    )


def counts(ttl_s: float = 60, max_entries: int = 1024) -> tuple[FakeEs, planner.FilterCounts]:
    es = FakeEs(CATALOGUE)
    found = planner.FilterCounts(es, ttl_s=ttl_s, exact_max_docs=100, max_entries=max_entries)  # type: ignore[arg-type]
    return es, found


def test_filter_counts_are_cached_per_filter_for_the_ttl():
    es, cached = counts(max_entries=2)
    assert cached.estimate("a", Filters(), "m") == planner.Estimate(440, 1)
    assert cached.estimate("a", Filters(), "m") == planner.Estimate(440, 1)
    assert es.requests == [1]
    cached.estimate("a", Filters(tags_all=["small"]), "m")
    cached.estimate("b", Filters(), "m")
    assert es.requests == [1, 1, 1] and len(cached._cache) == 2
    es, expired = counts(ttl_s=0)
    expired.estimate("a", Filters(), "m")
    expired.estimate("a", Filters(), "m")
    assert es.requests == [1, 1]


@pytest.mark.parametrize("price", [0.0, 0.004, 0.5, 1.0, 7.3, 16.0, 99.99, 1234.5, 1e7])
def test_price_bounds_are_widened_to_the_grid_never_narrowed(price):
    wide = planner.widened(Filters(min_price=price, max_price=price))
    assert wide.min_price is not None and wide.max_price is not None
    assert wide.min_price <= price <= wide.max_price
    step = 2 ** (1 / planner.PRICE_GRID_STEPS)
    assert wide.max_price <= price * step * (1 + 1e-9)
    assert wide.min_price == 0 or wide.min_price >= price / step * (1 - 1e-9)


@pytest.mark.parametrize("price", [1.7e308, float("inf")])  # NaN: Filters refuses it
def test_prices_off_the_grid_are_counted_as_asked(price):
    wide = planner.widened(Filters(min_price=price, max_price=price))
    assert str(wide.min_price) == str(wide.max_price) == str(price)


def test_nearby_price_ranges_are_counted_once():
    assert planner.widened(Filters(max_price=41.0)) == planner.widened(Filters(max_price=44.5))
    assert planner.widened(Filters(category="x")) == Filters(category="x")


@pytest.mark.parametrize(
    ("tag", "low", "high"),
    [("small", None, 20.0), ("small", 3.0, 11.0), ("big", 10.0, 60.0), ("big", None, 300.0)],
)
def test_every_estimate_bounds_the_true_count_from_above(tag, low, high):
    es, cached = counts()
    wider = 3 * high
    for filters in (  # the cache warmed with looser filters first, then the one asked
        Filters(tags_all=[tag]),
        Filters(tags_all=[tag], min_price=low, max_price=wider),
        Filters(tags_all=[tag], min_price=low, max_price=high),
    ):
        estimate = cached.estimate("a", filters, "m")
        assert estimate.docs >= true_count(tag, filters.min_price, filters.max_price)
        assert estimate.further_images >= int(tag == "small" and (low or 0) <= 7 <= high)


def test_a_price_slider_is_not_counted_again_when_its_other_filters_keep_few_documents():
    es, cached = counts()  # exact_max_docs 100: "small" keeps 40
    first = cached.estimate("a", Filters(tags_all=["small"], max_price=10.0), "m")
    assert es.requests == [2]  # the widened filter and the filter without its price bounds
    assert first == planner.Estimate(true_count("small", None, 11.32), 1)  # 2^3.5 = 11.31...
    moved = cached.estimate("a", Filters(tags_all=["small"], max_price=30.0), "m")
    assert es.requests == [2] and moved == planner.Estimate(40, 1)  # "small" alone: no request
    es, cached = counts()  # "big" keeps 400 > 100: each new grid cell is counted
    cached.estimate("a", Filters(tags_all=["big"], max_price=10.0), "m")
    moved = cached.estimate("a", Filters(tags_all=["big"], max_price=30.0), "m")
    assert es.requests == [2, 1] and moved.docs == true_count("big", None, 32.0)
    cached.estimate("a", Filters(tags_all=["big"], max_price=31.0), "m")  # the same grid cell
    assert es.requests == [2, 1]


def test_an_estimate_refused_by_elasticsearch_is_a_query_error():
    class Refusing(FakeEs):
        def msearch(self, searches: list[dict]) -> dict:
            error = {"root_cause": [{"reason": "bad filter"}], "reason": "bad filter"}
            return {"responses": [{"error": error, "status": 400}]}

    cached = planner.FilterCounts(Refusing([]), ttl_s=60, exact_max_docs=100)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="bad filter"):
        cached.estimate("a", Filters(), "m")


def test_flatness_is_judged_on_full_first_kNN_passes_only():
    knn = planner.choose(est(100_000), WINDOW, SETTINGS)
    assert planner.is_flat(knn, [0.6] * 30, SETTINGS) is True
    assert planner.is_flat(knn, [0.95] + [0.6] * 29, SETTINGS) is False
    assert planner.is_flat(knn, [0.6] * 5, SETTINGS) is None  # fewer hits than asked
    assert planner.is_flat(planner.choose(est(10), WINDOW, SETTINGS), [0.6] * 30, SETTINGS) is None
    wide = planner.widen(knn, [0.6] * 30, SETTINGS)
    assert wide is not None and planner.is_flat(wide, [0.6] * 1000, SETTINGS) is None


def test_mostly_flat_filters_start_wide():
    knn = planner.choose(est(100_000), WINDOW, SETTINGS)
    start = planner.start_wide(knn, [(3, 4)], SETTINGS)
    assert (start.method, start.widened, start.pool) == ("knn", True, 1000)
    assert start.reason == "3 of the last 4 first passes under this filter came back flat"
    assert planner.start_wide(knn, [(2, 4)], SETTINGS) is knn  # half is not most
    assert planner.start_wide(knn, [(2, 2)], SETTINGS) is knn  # too few seen
    assert planner.start_wide(knn, [(3, 3), (0, 5)], SETTINGS) is knn  # every list must be
    assert planner.start_wide(knn, [], SETTINGS) is knn  # keyword only
    exact = planner.choose(est(10), WINDOW, SETTINGS)
    assert planner.start_wide(exact, [(5, 5)], SETTINGS) is exact


def test_flat_history_keeps_the_last_passes_per_key_for_the_ttl(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(planner.time, "monotonic", lambda: now[0])
    history = planner.FlatHistory(ttl_s=30, max_entries=2)
    for flat in [False] * 10 + [True] * 16:
        history.observe("a", flat)
    assert history.history("a") == (16, 16)  # the last WINDOW passes
    history.observe("b", False)
    assert history.history("b") == (0, 1) and history.history("c") == (0, 0)
    history.observe("c", True)  # a third key: the oldest goes
    assert history.history("a") == (0, 0)
    now[0] += 31
    assert history.history("c") == (0, 0)  # expired
