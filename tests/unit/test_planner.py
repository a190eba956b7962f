"""The query planner's decisions: pure functions of the estimate and the first-pass scores."""

import pytest

from pipeline.search import planner
from pipeline.search.plan import ListPlan, Window
from pipeline.search.query import ExactQuery, Filters, KeywordQuery, KnnQuery, ProductRef
from pipeline.settings import VitrineSettings

SETTINGS = VitrineSettings(
    search_exact_max_docs=20_000,
    search_flat_contrast=0.1,
    search_flat_pool=1000,
    search_flat_exact_max_docs=50_000,
)
WINDOW = Window(k=10, k_docs=30, num_candidates=100, from_=0, size=10)


def test_few_documents_are_searched_exactly():
    plan = planner.choose(2_000, WINDOW, SETTINGS)
    assert (plan.method, plan.pool, plan.num_candidates, plan.k_docs) == ("exact", 2_000, None, 30)
    assert "2000 documents <= search_exact_max_docs (20000)" in plan.reason
    assert planner.choose(20_000, WINDOW, SETTINGS).method == "exact"


def test_many_documents_use_knn_with_the_window():
    plan = planner.choose(20_001, WINDOW, SETTINGS)
    assert (plan.method, plan.pool, plan.num_candidates, plan.widened) == ("knn", 30, 100, False)
    never = SETTINGS.model_copy(update={"search_exact_max_docs": 0})
    assert planner.choose(1, WINDOW, never).method == "knn"


def test_contrast_is_how_much_nearer_the_best_hit_is_than_the_last():
    assert planner.contrast([0.99, 0.5]) == pytest.approx(0.98)  # distances 0.01 vs 0.5
    assert planner.contrast([0.6, 0.59, 0.58]) == pytest.approx(1 - 0.4 / 0.42)
    assert planner.contrast([0.7]) == 1.0
    assert planner.contrast([1.0, 1.0]) == 1.0


def test_flat_knn_scores_widen_the_pool_once():
    knn = planner.choose(100_000, WINDOW, SETTINGS)
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
        wide = planner.widen(planner.choose(kept, WINDOW, never), [0.6] * 30, SETTINGS)
        assert wide is not None and (wide.method, wide.pool, wide.widened) == ("exact", kept, True)
    wide = planner.widen(planner.choose(50_001, WINDOW, never), [0.6] * 30, SETTINGS)
    assert wide is not None and wide.method == "knn"
    no_exact = SETTINGS.model_copy(update={"search_flat_exact_max_docs": 0})
    wide = planner.widen(planner.choose(900, WINDOW, never), [0.6] * 30, no_exact)
    assert wide is not None and wide.method == "exact"  # the pool holds every kept document


def test_exact_plans_and_short_lists_are_not_widened():
    exact = planner.choose(10, WINDOW, SETTINGS)
    assert planner.widen(exact, [0.6] * 30, SETTINGS) is None
    knn = planner.choose(100_000, WINDOW, SETTINGS)
    assert planner.widen(knn, [0.6] * 5, SETTINGS) is None  # fewer hits than asked


def test_apply_replaces_knn_lists_and_keeps_keyword_lists():
    exclude = ProductRef("m", "p")
    knn = KnnQuery([1.0, 0.0], "model", Filters(category="bags"), 30, 100, exclude)
    keyword = KeywordQuery("red", Filters(), "model")
    lists = [ListPlan("image", 0.5, knn), ListPlan("keyword", 0.5, keyword)]

    exact = planner.apply(lists, planner.choose(50, WINDOW, SETTINGS))
    assert exact[0].query == ExactQuery([1.0, 0.0], "model", Filters(category="bags"), 30, exclude)
    assert exact[1] is lists[1]

    plan = planner.choose(100_000, WINDOW, SETTINGS)
    assert planner.apply(lists, plan)[0].query == knn  # the window as validated
    wide = planner.widen(plan, [0.6] * 30, SETTINGS)
    assert wide is not None
    body = planner.apply(lists, wide)[0].query.body()
    assert (body["knn"]["k"], body["knn"]["num_candidates"], body["size"]) == (1000, 2000, 30)
    assert body["rescore"]["window_size"] == 1000


def test_count_body_is_the_filter_with_the_model():
    body = planner.count_body(Filters(tags_all=["p2"]), "model")
    assert body == {
        "query": {"bool": {"filter": [{"term": {"tags": "p2"}}, {"term": {"model_id": "model"}}]}}
    }


class FakeEs:
    def __init__(self):
        self.calls = 0

    def count(self, index, query):
        self.calls += 1
        return {"count": 42}


def test_filter_counts_are_cached_per_filter_for_the_ttl():
    es = FakeEs()
    counts = planner.FilterCounts(es, ttl_s=60, max_entries=2)  # type: ignore[arg-type]
    assert counts.estimate("a", Filters(), "m") == 42
    assert counts.estimate("a", Filters(), "m") == 42
    assert es.calls == 1
    counts.estimate("a", Filters(category="x"), "m")
    counts.estimate("b", Filters(), "m")
    assert es.calls == 3 and len(counts._cache) == 2
    expired = planner.FilterCounts(es, ttl_s=0)  # type: ignore[arg-type]
    expired.estimate("a", Filters(), "m")
    expired.estimate("a", Filters(), "m")
    assert es.calls == 5
