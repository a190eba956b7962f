"""Every saved search and Lens chart of the Kibana export, and every KQL and ES|QL example of
docs/analysts.md, run against the real Elasticsearch on indices made from Vitrine's own
templates and seeded so that each one has something to show.

No Kibana runs here, so each Lens layer is translated to the aggregation Kibana sends (bucket
columns nested in column order, count as doc_count, the dashboard's time range on the data
view's time field), and each saved search to its query (KQL kept to the subset that Lucene's
``query_string`` reads the same way, checked by ``tests/unit/test_kibana_objects.py``), its
sort and its columns. A field missing from the real mapping, a non-aggregatable or unsortable
field, a query Elasticsearch refuses, or a chart that would come back empty fails the test.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.documents import Product, build_document, document_id
from pipeline.es import indexing, mappings
from tests.unit.test_kibana_objects import (
    COMMON_KQL,
    ERRORS_VIEW,
    PRODUCTS_VIEW,
    RECORDS_FIELD,
    layer_data_view,
    lens_layers,
    objects_of_type,
    saved_search_source,
    saved_search_view,
)

pytestmark = pytest.mark.integration

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"
MODEL_ID = "test:kibana:4"
TIME_RANGE = "now-30d"  # the dashboard's timeFrom


@pytest.fixture(scope="module")
def indices(es, settings):
    """``{data view id: index}`` for a seeded product alias and ingest-errors index."""
    alias = f"test-kibana-{uuid.uuid4().hex[:8]}"
    local = settings.model_copy(update={"index_alias": alias, "errors_index": f"{alias}_errors"})
    indexing.ensure_indices(es, local, MODEL_ID, 4)
    rng = np.random.default_rng(3)
    documents = []
    for n in range(12):
        merchant = ["shop-a", "shop-b", "shop-c"][n % 3]
        product = Product(
            product_id=f"p{n}",
            merchant_id=merchant,
            title=f"Item {n}",
            category=["bags", "shoes"][n % 2],
            tags=["sale"] if n % 2 else ["new"],
            price=10.0 + 7 * n,
            currency="EUR",
            in_stock=n % 4 != 0,
            images=[f"/img/{n}.png"],
        )
        sha = f"{n:064x}"
        document = build_document(
            product,
            image_index=0,
            image_sha256=sha,
            width=300,
            height=300,
            vector=rng.normal(size=4),
            model_id=MODEL_ID,
            quality_flags=[["blurry"], ["too_dark", "category_mismatch"], []][n % 3],
            auto_tags=["colour:red"] if n % 2 else ["colour:blue"],
            auto_category="bag",
            auto_category_score=0.5 + n / 100,
            auto_tag_scores={"colour:red": 0.7},
            visual_cluster=f"c00{n % 3}" if n < 10 else None,
            visual_cluster_name=["bag", "shoe", None][n % 3] if n < 10 else None,
        )
        document["duplicate_group"] = f"g{n % 4}" if n < 8 else None
        documents.append((document_id(merchant, product.product_id, sha), document))
    assert not indexing.bulk_write(es, mappings.index_actions(alias, documents), local).failed
    for n, (merchant, reason) in enumerate(
        [
            ("shop-a", "fetch_failed"),
            ("shop-a", "fetch_timeout"),
            ("shop-b", "corrupt"),
            ("shop-c", "fetch_failed"),
        ]
    ):
        doc_id, record = indexing.ingest_error(
            job_id=f"job-{n}",
            product_id=f"p{n}",
            merchant_id=merchant,
            reason=reason,
            message=f"{reason} for p{n}",
            image=f"/img/{n}.png",
            model_id=MODEL_ID,
            attempts=2,
        )
        record["occurred_at"] = (datetime.now(UTC) - timedelta(hours=5 * n)).isoformat()
        indexing.write_ingest_error(es, local, doc_id, record)
    es.indices.refresh(index=[alias, local.errors_index])
    yield {PRODUCTS_VIEW: alias, ERRORS_VIEW: local.errors_index}
    created = list(es.indices.get(index=f"{alias}.*", expand_wildcards="all"))
    for index in [*created, local.errors_index]:
        es.options(ignore_status=404).indices.delete(index=index)
    for template in (mappings.product_template_name(alias), local.errors_index):
        es.options(ignore_status=404).indices.delete_index_template(name=template)
    for script in mappings.search_templates(alias):
        es.options(ignore_status=404).delete_script(id=script)


TIME_FIELD = {PRODUCTS_VIEW: "indexed_at", ERRORS_VIEW: "occurred_at"}


def kql_query(kql: str) -> dict[str, Any]:
    """The Elasticsearch query of a KQL string of the common KQL/Lucene subset."""
    assert COMMON_KQL.match(kql), f"not in the KQL/Lucene common subset: {kql!r}"
    if not kql.strip():
        return {"match_all": {}}
    return {"query_string": {"query": kql, "allow_leading_wildcard": False}}


def kibana_query(view: str, kql: str) -> dict[str, Any]:
    """What Kibana sends for a query bar and the dashboard's time range."""
    time_range = {"range": {TIME_FIELD[view]: {"gte": TIME_RANGE, "lte": "now"}}}
    return {"bool": {"filter": [kql_query(kql), time_range]}}


def bucket_agg(column: dict[str, Any], columns: dict[str, Any]) -> dict[str, Any]:
    field, params = column["sourceField"], column.get("params", {})
    operation = column["operationType"]
    if operation == "terms":
        order_by = params["orderBy"]
        by_count = order_by["type"] == "column" and (
            columns[order_by["columnId"]]["operationType"] == "count"
        )
        order = {"_count" if by_count else "_key": params.get("orderDirection", "desc")}
        return {"terms": {"field": field, "size": params["size"], "order": order}}
    if operation == "date_histogram":
        return {"date_histogram": {"field": field, "fixed_interval": "1h", "min_doc_count": 0}}
    if operation == "range":
        return {"histogram": {"field": field, "interval": 10}}
    raise AssertionError(f"no translation for Lens operation {operation}")


def lens_requests():
    for lens in objects_of_type("lens"):
        for layer_id, layer in lens_layers(lens).items():
            columns = layer["columns"]
            buckets = [c for c in layer["columnOrder"] if columns[c]["isBucketed"]]
            metrics = [c for c in layer["columnOrder"] if not columns[c]["isBucketed"]]
            assert all(columns[m]["sourceField"] == RECORDS_FIELD for m in metrics)
            aggs: dict[str, Any] = {}
            for column_id in reversed(buckets):
                agg = bucket_agg(columns[column_id], columns)
                if aggs:
                    agg["aggs"] = aggs
                aggs = {column_id: agg}
            query = lens["attributes"]["state"]["query"]["query"]
            yield pytest.param(layer_data_view(lens, layer_id), query, aggs, buckets, id=lens["id"])


@pytest.mark.parametrize(("view", "kql", "aggs", "buckets"), list(lens_requests()))
def test_lens_chart_runs_and_shows_data(es, indices, view, kql, aggs, buckets):
    response = es.search(index=indices[view], size=0, query=kibana_query(view, kql), aggs=aggs)
    assert response["hits"]["total"]["value"] > 0
    level: dict[str, Any] = response["aggregations"]
    for column_id in buckets:  # every bucket level has something to draw
        filled = [b for b in level[column_id]["buckets"] if b["doc_count"] > 0]
        assert filled, f"{column_id}: no bucket with data"
        level = filled[0]


def saved_searches():
    for search in objects_of_type("search"):
        yield pytest.param(search, id=search["id"])


@pytest.mark.parametrize("search", list(saved_searches()))
def test_saved_search_runs_and_finds_documents(es, indices, search):
    view = saved_search_view(search)
    columns, sort = search["attributes"]["columns"], search["attributes"]["sort"]
    caps = es.field_caps(index=indices[view], fields=columns + [f for f, _ in sort])
    for field in columns + [f for f, _ in sort]:
        assert field in caps["fields"], f"{field} is not in the real mapping"
    for field, _ in sort:
        assert all(c["aggregatable"] for c in caps["fields"][field].values()), field
    response = es.search(
        index=indices[view],
        query=kibana_query(view, saved_search_source(search)["query"]["query"]),
        sort=[{field: {"order": direction}} for field, direction in sort],
        fields=columns,
        source=False,
        size=50,
    )
    hits = response["hits"]["hits"]
    assert hits, "the saved search finds nothing in the seeded data"
    assert any(set(columns) & set(hit.get("fields", {})) for hit in hits)


def guide_blocks(language: str) -> list[tuple[str, str]]:
    """``(info string rest, code)`` of every fenced block of ``language`` in the guide."""
    pattern = rf"```{language}([^\n]*)\n(.*?)```"
    return [(m[0].strip(), m[1].strip()) for m in re.findall(pattern, GUIDE.read_text(), re.S)]


def test_the_guide_has_examples_for_the_common_questions():
    esql = " ".join(code for _, code in guide_blocks("esql"))
    for field in (
        "merchant_id",
        "reason",
        "quality_flags",
        "auto_category",
        "duplicate_group",
        "visual_cluster",
        "price",
        "model_id",
    ):
        assert field in esql, f"no ES|QL example uses {field}"
    assert len(guide_blocks("kql")) >= 5


@pytest.mark.parametrize(("view", "kql"), guide_blocks("kql"))
def test_guide_kql_examples_run(es, indices, view, kql):
    assert view in indices, f"a KQL block must name its data view, not {view!r}"
    response = es.search(index=indices[view], query=kql_query(kql), size=1)
    assert response["hits"]["total"]["value"] > 0, kql


@pytest.mark.parametrize("esql", [code for _, code in guide_blocks("esql")])
def test_guide_esql_examples_run(es, indices, esql):
    query = esql
    for view, index in indices.items():
        query = re.sub(rf"^FROM {re.escape(view)}\b", f"FROM {index}", query)
    assert query != esql, "an ES|QL example must read one of the data views' indices"
    result = es.esql.query(query=query)
    assert result["columns"], esql
    assert result["values"], f"no rows: {esql}"
