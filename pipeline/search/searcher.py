"""Running searches: embed the query, check it against the index, run the planned lists against
Elasticsearch (one ``_msearch``), fuse, de-duplicate, page, facet and explain.

Bodies come from ``pipeline.search.query`` and the plan from ``pipeline.search.plan``; every request
is also reported as the stored template and parameters that reproduce it (``explain``), which
is exactly what a frontend calling Elasticsearch directly sends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from elasticsearch import BadRequestError, Elasticsearch
from PIL import Image

from pipeline import metrics
from pipeline.documents import HIT_FIELDS
from pipeline.encoders import Encoder, LazyEncoder, TextNotSupported, get_encoder
from pipeline.es import mappings
from pipeline.es.client import IndexInfo, write_index_info
from pipeline.search import planner
from pipeline.search.fusion import (
    FusedHit,
    RankedList,
    combine_vectors,
    facet_counts,
    facets_from_aggregations,
    fuse,
    product_key,
    single,
)
from pipeline.search.plan import (
    ListPlan,
    QueryError,
    SearchQuery,
    Window,
    checked,
    needs_text_vector,
    plan_lists,
    validate,
)
from pipeline.search.query import KeywordQuery, ProductRef, ProductVectorQuery, Vector, as_floats
from pipeline.settings import VitrineSettings

#: Every field a hit shows, None until its document's source has it.
_NO_FIELDS = dict.fromkeys(HIT_FIELDS)

__all__ = ["Embedding", "IndexInfo", "QueryError", "SearchQuery", "SearchResult", "Searcher"]


@dataclass(frozen=True)
class Embedding:
    model_id: str
    dims: int
    vector: list[float]
    kind: str  # image | text | image_text


@dataclass
class SearchResult:
    shape: str
    k: int
    from_: int
    size: int
    total: int
    total_relation: str  # "eq", or "gte" when a keyword search matched over 10,000
    hits: list[dict[str, Any]]
    model_id: str | None = None
    fusion: str | None = None
    facets: dict[str, list[dict[str, Any]]] | None = None
    next_search_after: list[Any] | None = None
    requests: list[dict[str, Any]] | None = None
    plan: dict[str, Any] | None = None  # with explain: the query planner's choice and why

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``POST /v1/search`` returns it (``from_`` is ``from``). Shallow: the
        hits and plan are this result's own dicts (``asdict``'s deep copy took 0.9 ms a search in a
        profile of the API)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["from"] = data.pop("from_")
        return data


@dataclass
class _Run:
    """Bookkeeping of one search: the requests made, as template calls; kept only for
    ``explain``, so other searches never build the template parameters."""

    alias: str
    explain: bool
    requests: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, weight: float | None, query: Any) -> None:
        if not self.explain:
            return
        self.requests.append(
            {
                "list": name,
                "weight": weight,
                "template_id": mappings.search_template_id(self.alias, query.template),
                "params": query.template_params(),
            }
        )


class Searcher:
    """Searches one alias. Keyword searches need no model; the encoder is loaded on first use."""

    def __init__(
        self,
        settings: VitrineSettings,
        es: Elasticsearch,
        encoder: Encoder | LazyEncoder | None = None,
        *,
        index_info_ttl_s: float = 10.0,
    ):
        self.settings = settings
        self.es = es
        self.encoder = (
            encoder if isinstance(encoder, LazyEncoder) else LazyEncoder(settings, encoder)
        )
        self._ttl = index_info_ttl_s
        self._info: tuple[float, IndexInfo] | None = None
        self.counts = planner.FilterCounts(
            es, ttl_s=settings.search_count_ttl_s, exact_max_docs=settings.search_exact_max_docs
        )
        self.flat = planner.FlatHistory(ttl_s=settings.search_count_ttl_s)

    # ------------------------------------------------------------------ index and vectors

    def index_info(self) -> IndexInfo:
        """Model id and dims of the alias's write index (cached for a few seconds)."""
        now = time.monotonic()
        if self._info and now - self._info[0] < self._ttl:
            return self._info[1]
        alias = self.settings.index_alias
        info = write_index_info(self.es, alias)
        if info is None:
            raise QueryError(
                "index_not_found", f"no index behind alias {alias}; run `vitrine init-index`"
            )
        self._info = (now, info)
        return info

    def _encoder_for(self, info: IndexInfo | None) -> Encoder:
        """This process's encoder or, when the alias serves another model's index (after a
        re-embed's swap, or a rollback), that model as the index's ``_meta`` records it: the
        API follows the alias without a restart (the first such query loads the model)."""
        encoder = self.encoder()
        fields = info.meta.get("encoder") if info else None
        if info is None or encoder.model_id == info.model_id or not fields:
            return encoder
        other = get_encoder(self.settings.model_copy(update=fields))
        return other if other.model_id == info.model_id else encoder

    def _checked_encoder(self, info: IndexInfo) -> Encoder:
        encoder = self._encoder_for(info)
        if encoder.model_id != info.model_id:
            raise QueryError(
                "encoder_model_mismatch",
                f"index {info.index} holds vectors of model {info.model_id!r}, but this process "
                f"embeds with {encoder.model_id!r}; configure the same model",
            )
        return encoder

    def check_vector(self, vector: Sequence[float], model_id: str) -> IndexInfo:
        """Raise ``QueryError`` unless ``vector`` can be compared with the index's vectors."""
        info = self.index_info()
        if model_id != info.model_id:
            raise QueryError(
                "model_mismatch",
                f"the query vector comes from model {model_id!r}, the index holds vectors of "
                f"{info.model_id!r}; embed the query again with POST /v1/embed",
            )
        if len(vector) != info.dims:
            raise QueryError(
                "dimension_mismatch",
                f"the query vector has {len(vector)} dimensions, the index's vectors {info.dims}",
            )
        return info

    def embed(
        self,
        *,
        image: Image.Image | None = None,
        text: str | None = None,
        image_weight: float = 0.5,
    ) -> Embedding:
        """The query vector for an image, a text, or both (``normalise(w*image + (1-w)*text)``)."""
        text = text.strip() if text else None
        if image is None and not text:
            raise QueryError("invalid_query", "give an image, a text, or both")
        try:
            info: IndexInfo | None = self.index_info()
        except QueryError:  # no index yet: this process's own model
            info = None
        encoder = self._encoder_for(info)
        if text and not encoder.supports_text:
            raise _text_not_supported(encoder, "embed text")
        image_vec = encoder.encode_images([image])[0] if image is not None else None
        text_vec = encoder.encode_texts([text])[0] if text else None
        vector: Any
        if image_vec is not None and text_vec is not None:
            try:
                vector, kind = combine_vectors(image_vec, text_vec, image_weight), "image_text"
            except ValueError as exc:
                raise QueryError("invalid_query", str(exc)) from exc
        else:
            vector, kind = (image_vec, "image") if image_vec is not None else (text_vec, "text")
        assert vector is not None
        return Embedding(encoder.model_id, encoder.dim, as_floats(vector), kind)

    def product_vector(self, product: ProductRef, info: IndexInfo, run: _Run) -> list[float]:
        lookup = ProductVectorQuery(product, info.model_id)
        run.record("product_vector", None, lookup)
        hits = self.es.search(index=self.settings.index_alias, **lookup.body())["hits"]["hits"]
        if not hits:
            raise QueryError(
                "product_not_found",
                f"product {product.merchant_id}/{product.product_id} has no image indexed with "
                f"model {info.model_id!r}",
            )
        return list(hits[0]["_source"]["image_vector"])

    # ------------------------------------------------------------------ search

    def search(self, query: SearchQuery) -> SearchResult:
        """Run a search; raises ``QueryError`` for anything the caller must change.

        Queries filter by the serving index's model, read from a cache: when the alias has just
        swapped to a re-embedded index, an empty answer (or a product not found) is checked
        once against the index the alias serves now, instead of reported."""
        window = validate(query, self.settings)
        info = self.index_info()
        try:
            result = self._search(query, window, info)
        except QueryError as exc:
            if exc.reason != "product_not_found" or not self._alias_moved(info):
                raise
            return self._search(query, window, self.index_info())
        if not result.hits and self._alias_moved(info):
            return self._search(query, window, self.index_info())
        return result

    def _alias_moved(self, info: IndexInfo) -> bool:
        self._info = None
        return self.index_info().index != info.index

    def _search(self, query: SearchQuery, window: Window, info: IndexInfo) -> SearchResult:
        run = _Run(self.settings.index_alias, query.explain)
        try:
            if query.shape == "keyword":
                result = self._keyword(query, window.size, info, run)
            else:
                result = self._vector(query, window, info, run)
        except BadRequestError as exc:
            raise QueryError("invalid_query", f"Elasticsearch refused the search: {exc}") from exc
        result.requests = run.requests if query.explain else None
        return result

    def _keyword(self, query: SearchQuery, size: int, info: IndexInfo, run: _Run) -> SearchResult:
        keyword = KeywordQuery(
            query.clean_text,
            query.filters,
            info.model_id or None,
            query.from_,
            size,
            query.sort,
            query.search_after,
            query.facets,
        )
        run.record("keyword", 1.0, keyword)
        response = self.es.search(index=self.settings.index_alias, **keyword.body())
        hits = response["hits"]["hits"]
        fused = single(RankedList("keyword", hits))
        total = response["hits"]["total"]
        facets = None
        if query.facets:
            facets = facets_from_aggregations(
                response.get("aggregations", {}), mappings.facet_aggs()
            )
        return SearchResult(
            shape="keyword",
            k=size,
            from_=query.from_,
            size=size,
            total=int(total["value"]),
            total_relation=str(total["relation"]),
            hits=[self._hit(f, None, query) for f in fused],
            model_id=info.model_id or None,
            facets=facets,
            next_search_after=list(hits[-1]["sort"]) if hits and len(hits) == size else None,
        )

    def _vector(
        self, query: SearchQuery, window: Window, info: IndexInfo, run: _Run
    ) -> SearchResult:
        visual: Vector | None = None
        if query.image is not None:
            visual = self._checked_encoder(info).encode_images([query.image])[0]
        elif query.vector is not None:
            self.check_vector(query.vector, query.vector_model_id or "")
            visual = list(query.vector)
        elif query.product is not None:
            visual = self.product_vector(query.product, info, run)
        text_vector = None
        if needs_text_vector(query):
            assert query.clean_text is not None
            encoder = self._checked_encoder(info)
            if encoder.supports_text:
                text_vector = encoder.encode_texts([query.clean_text])[0]
            elif query.text_mode != "hybrid":  # hybrid keeps its keyword list for the text
                raise _text_not_supported(encoder, "search by text vector")
        plans = plan_lists(
            query, window, model_id=info.model_id, visual_vector=visual, text_vector=text_vector
        )
        alias = self.settings.index_alias
        estimate = self.counts.estimate(alias, query.filters, info.model_id)
        # flatness is the data's, which a price range does not change: a slider shares it
        memory = planner.filter_key(alias, planner.without_price(query.filters), info.model_id)
        keys = [f"{memory}|{plan.name}" if plan.name != "keyword" else None for plan in plans]
        chosen = planner.start_wide(
            planner.choose(estimate, window, self.settings),
            [self.flat.history(key) for key in keys if key],
            self.settings,
        )
        lists, chosen = self._run_planned(plans, keys, chosen, window, run)
        metrics.SEARCH_PLANS.labels(chosen.method, str(chosen.widened).lower()).inc()
        rrf_k = query.rrf_k or self.settings.rrf_k
        ranked = fuse(lists, query.fusion, rrf_k=rrf_k)[: window.k]
        method = query.fusion if len(lists) > 1 else None
        page = ranked[window.from_ : window.from_ + window.size]
        facets = None
        if query.facets:
            facets = facet_counts([f.hit for f in ranked], mappings.facet_aggs())
        return SearchResult(
            shape=query.shape,
            k=window.k,
            from_=window.from_,
            size=window.size,
            total=len(ranked),
            total_relation="eq",
            hits=[self._hit(f, method, query, rrf_k) for f in page],
            model_id=info.model_id,
            fusion=method,
            facets=facets,
            plan=chosen.to_dict() if query.explain else None,
        )

    def _run_planned(
        self,
        plans: list[ListPlan],
        keys: list[str | None],
        chosen: planner.QueryPlan,
        window: Window,
        run: _Run,
    ) -> tuple[list[RankedList], planner.QueryPlan]:
        """Run the lists as planned. Vector lists run again with the over-fetch when one of
        them, fetched without it, repeats a product; then those that came back flat, wider
        (and refilled likewise). ``keys``: each vector list's key in the flatness history
        (None: a keyword list)."""
        lists = self._run_lists(planner.apply(plans, chosen), run)
        vector = {i: key for i, key in enumerate(keys) if key}
        chosen = self._refill(plans, lists, list(vector), chosen, window, run)
        wider: dict[int, planner.QueryPlan] = {}
        for i, key in vector.items():
            scores = [float(hit["_score"]) for hit in lists[i].hits]
            flat = planner.is_flat(chosen, scores, self.settings)
            if flat is not None:
                self.flat.observe(key, flat)
            widened = planner.widen(chosen, scores, self.settings)
            if widened is not None:
                wider[i] = widened
        if not wider:
            return lists, chosen
        chosen = next(iter(wider.values()))
        self._rerun(plans, lists, list(wider), chosen, run)
        return lists, self._refill(plans, lists, list(wider), chosen, window, run)

    def _refill(
        self,
        plans: list[ListPlan],
        lists: list[RankedList],
        indices: list[int],
        chosen: planner.QueryPlan,
        window: Window,
        run: _Run,
    ) -> planner.QueryPlan:
        """Run the lists at ``indices`` again with the over-fetch when one of them, fetched
        without it, repeats a product (``planner.refill``); the plan they ran by."""
        for i in indices:
            refilled = planner.refill(chosen, window, [product_key(h) for h in lists[i].hits])
            if refilled is not None:
                self._rerun(plans, lists, indices, refilled, run)
                return refilled
        return chosen

    def _rerun(
        self,
        plans: list[ListPlan],
        lists: list[RankedList],
        indices: list[int],
        chosen: planner.QueryPlan,
        run: _Run,
    ) -> None:
        """Run the lists at ``indices`` again as ``chosen`` says, in place in ``lists``."""
        again = self._run_lists(planner.apply([plans[i] for i in indices], chosen), run)
        for i, ranked in zip(indices, again, strict=True):
            lists[i] = ranked

    def _run_lists(self, plans: list[ListPlan], run: _Run) -> list[RankedList]:
        searches: list[dict[str, Any]] = []
        for plan in plans:
            run.record(plan.name, plan.weight, plan.query)
            searches += [{"index": self.settings.index_alias}, plan.query.body()]
        responses = self.es.msearch(searches=searches)["responses"]
        lists = []
        for plan, response in zip(plans, responses, strict=True):
            hits = checked(response, f"{plan.name} list")["hits"]["hits"]
            lists.append(RankedList(plan.name, hits, plan.weight))
        return lists

    @staticmethod
    def _hit(
        fused: FusedHit, method: str | None, query: SearchQuery, rrf_k: int | None = None
    ) -> dict[str, Any]:
        source = fused.hit["_source"]
        hit = {"document_id": fused.hit["_id"], **_NO_FIELDS}
        hit.update((name, value) for name, value in source.items() if name in _NO_FIELDS)
        hit["score"] = fused.score
        if query.explain:
            hit["explanation"] = {
                "fusion": method,
                "rrf_k": rrf_k if method == "rrf" else None,
                "lists": {
                    name: {
                        "rank": c.rank,
                        "score": c.score,
                        "weight": c.weight,
                        "contribution": c.value,
                    }
                    for name, c in fused.contributions.items()
                },
            }
        if "sort" in fused.hit:
            hit["sort"] = list(fused.hit["sort"])
        return hit


def _text_not_supported(encoder: Encoder, what: str) -> QueryError:
    return QueryError(
        TextNotSupported.reason,
        f"the encoder {encoder.model_id} embeds images only and cannot {what}; use "
        "text_mode='hybrid' or 'keyword' for text",
    )
