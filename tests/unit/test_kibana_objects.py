"""Static checks of es_mappings/kibana/saved_objects.ndjson (Kibana 8.12 saved objects export).

The file is imported by the `kibana-objects` compose service with
``POST /api/saved_objects/_import?overwrite=true``. Kibana cannot run here, so these tests check
the export format, that every reference resolves inside the file, that the dashboard panels are
wired the way Kibana 8.x injects them (``<panelIndex>:panel_<panelIndex>``), and that the Lens
columns only use fields of the documented index schemas, with aggregatable types.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NDJSON = ROOT / "es_mappings" / "kibana" / "saved_objects.ndjson"

PRODUCTS_VIEW = "vitrine-products"
ERRORS_VIEW = "vitrine-ingest-errors"
DASHBOARD_ID = "vitrine-overview"

# Expected schema of the documents behind each data view: field -> Elasticsearch type.
# Keep in sync with the index mappings (a cross-check against the real mapping will compare the
# two); multi-fields are listed with their full path.
PRODUCT_FIELDS: dict[str, str] = {
    "product_id": "keyword",
    "merchant_id": "keyword",
    "title": "text",
    "title.keyword": "keyword",
    "description": "text",
    "category": "keyword",
    "tags": "keyword",
    "auto_tags": "keyword",
    "quality_flags": "keyword",
    "price": "scaled_float",
    "currency": "keyword",
    "in_stock": "boolean",
    "image_url": "keyword",
    "image_sha256": "keyword",
    "image_index": "short",
    "width": "integer",
    "height": "integer",
    "image_vector": "dense_vector",
    "model_id": "keyword",
    "content_hash": "keyword",
    "indexed_at": "date",
    "auto_category": "keyword",
    "auto_category_score": "float",
    "auto_tag_scores.tag": "keyword",
    "auto_tag_scores.score": "float",
    "image_text": "text",
    "phash": "keyword",
    "duplicate_group": "keyword",
    "visual_cluster": "keyword",
    "visual_cluster_name": "keyword",
}
ERROR_FIELDS: dict[str, str] = {
    "job_id": "keyword",
    "product_id": "keyword",
    "merchant_id": "keyword",
    "reason": "keyword",
    "message": "text",
    "image": "keyword",
    "model_id": "keyword",
    "attempts": "integer",
    "occurred_at": "date",
}
SCHEMA_BY_DATA_VIEW: dict[str, dict[str, str]] = {
    PRODUCTS_VIEW: PRODUCT_FIELDS,
    ERRORS_VIEW: ERROR_FIELDS,
}

NUMERIC_TYPES = {
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "unsigned_long",
}
# Which field types each bucket operation may use. Never "text" (not aggregatable).
BUCKET_FIELD_TYPES = {
    "terms": {"keyword", "boolean", "ip"} | NUMERIC_TYPES,
    "date_histogram": {"date", "date_nanos"},
    "range": NUMERIC_TYPES,
}
RECORDS_FIELD = "___records___"  # Lens' pseudo-field of count()
LAYER_REF_PREFIX = "indexpattern-datasource-layer-"

TYPE_MIGRATION_VERSION = {
    "index-pattern": "8.0.0",
    "lens": "8.9.0",
    "dashboard": "8.9.0",
    "search": "8.0.0",
}
SEARCH_INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
#: KQL that Lucene's query_string reads the same way (field:value, field:"phrase", field:*,
#: upper-case AND/OR/NOT, parentheses): saved searches and the analyst guide keep to it, so the
#: integration tests can run each query on the real Elasticsearch without Kibana.
_KQL_CLAUSE = r'(NOT\s+)?\(*[a-z_.]+:(\*|"[^"]*"|[A-Za-z0-9_.*-]+)\)*'
COMMON_KQL = re.compile(rf"^\s*({_KQL_CLAUSE}(\s+(AND|OR)\s+{_KQL_CLAUSE})*)?\s*$")
SUMMARY_KEYS = {
    "excludedObjects",
    "excludedObjectsCount",
    "exportedCount",
    "missingRefCount",
    "missingReferences",
}


# --------------------------------------------------------------------------------------------
# Loading and helpers
# --------------------------------------------------------------------------------------------


@cache
def _lines() -> tuple[str, ...]:
    text = NDJSON.read_text(encoding="utf-8")
    return tuple(text.splitlines())


def load_objects() -> list[dict[str, Any]]:
    """The saved objects of the export, without the trailing export summary line."""
    return [json.loads(line) for line in _lines()[:-1]]


def load_summary() -> dict[str, Any]:
    return json.loads(_lines()[-1])


def objects_of_type(type_: str) -> list[dict[str, Any]]:
    return [o for o in load_objects() if o["type"] == type_]


def lens_layers(lens: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]


def layer_data_view(lens: dict[str, Any], layer_id: str) -> str:
    """Id of the data view a Lens layer reads, from the layer's reference."""
    refs = [r for r in lens["references"] if r["name"] == LAYER_REF_PREFIX + layer_id]
    assert len(refs) == 1, f"{lens['id']}: layer {layer_id} needs exactly one data view reference"
    assert refs[0]["type"] == "index-pattern"
    return refs[0]["id"]


def lens_columns(objects: list[dict[str, Any]] | None = None):
    """Yield (lens id, data view id, column id, column) for every Lens column."""
    for lens in objects if objects is not None else objects_of_type("lens"):
        if lens["type"] != "lens":
            continue
        for layer_id, layer in lens_layers(lens).items():
            view = layer_data_view(lens, layer_id)
            for col_id, col in layer["columns"].items():
                yield lens["id"], view, col_id, col


def LENS_FIELDS_BY_DATA_VIEW(  # noqa: N802 (name asked for; reads like the constant it describes)
    objects: list[dict[str, Any]] | None = None,
) -> dict[str, set[str]]:
    """{data view id: set of index fields the Lens visualisations use} (``sourceField`` of every
    column, minus Lens' ``___records___`` pseudo-field). Meant for cross-checks against the real
    index mappings."""
    fields: dict[str, set[str]] = {}
    for _lens_id, view, _col_id, col in lens_columns(objects):
        field = col.get("sourceField")
        if field and field != RECORDS_FIELD:
            fields.setdefault(view, set()).add(field)
    return fields


def dashboard() -> dict[str, Any]:
    (board,) = [o for o in objects_of_type("dashboard") if o["id"] == DASHBOARD_ID]
    return board


def dashboard_panels() -> list[dict[str, Any]]:
    return json.loads(dashboard()["attributes"]["panelsJSON"])


# --------------------------------------------------------------------------------------------
# File format
# --------------------------------------------------------------------------------------------


def test_every_line_is_a_json_object() -> None:
    raw = NDJSON.read_text(encoding="utf-8")
    assert raw.endswith("\n") and not raw.endswith("\n\n")
    for n, line in enumerate(raw.splitlines(), 1):
        assert line.strip(), f"line {n} is empty"
        assert isinstance(json.loads(line), dict), f"line {n} is not a JSON object"


def test_export_summary_is_last_and_counts_the_objects() -> None:
    summary = load_summary()
    assert set(summary) == SUMMARY_KEYS
    assert summary["exportedCount"] == len(load_objects())
    assert summary["missingRefCount"] == 0 and summary["missingReferences"] == []
    assert summary["excludedObjectsCount"] == 0 and summary["excludedObjects"] == []
    # No other line looks like a summary.
    assert all("id" in o and "type" in o for o in load_objects())


def test_saved_object_envelopes() -> None:
    for obj in load_objects():
        for key in ("id", "type", "attributes", "references"):
            assert key in obj, f"{obj.get('id')}: missing {key}"
        assert obj["type"] in TYPE_MIGRATION_VERSION, obj["type"]
        assert isinstance(obj["attributes"], dict) and isinstance(obj["references"], list)
        assert obj["coreMigrationVersion"] == "8.8.0", obj["id"]
        assert obj["typeMigrationVersion"] == TYPE_MIGRATION_VERSION[obj["type"]], obj["id"]
        assert obj["attributes"].get("title"), f"{obj['id']}: no title"
        for ref in obj["references"]:
            assert set(ref) == {"id", "name", "type"}, f"{obj['id']}: bad reference {ref}"


def test_ids_are_unique() -> None:
    ids = [o["id"] for o in load_objects()]
    assert len(ids) == len(set(ids))


def test_every_reference_resolves_within_the_file() -> None:
    present = {(o["type"], o["id"]) for o in load_objects()}
    for obj in load_objects():
        names = [r["name"] for r in obj["references"]]
        assert len(names) == len(set(names)), f"{obj['id']}: duplicate reference names"
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in present, f"{obj['id']}: dangling reference {ref}"


# --------------------------------------------------------------------------------------------
# Data views
# --------------------------------------------------------------------------------------------


def test_data_views() -> None:
    views = {o["id"]: o["attributes"] for o in objects_of_type("index-pattern")}
    assert set(views) == {PRODUCTS_VIEW, ERRORS_VIEW}

    products = views[PRODUCTS_VIEW]
    assert products["title"] == "vitrine-products"  # the alias over vitrine-products.<model>.<n>
    assert products["name"] == "Vitrine products"
    assert products["timeFieldName"] == "indexed_at"

    errors = views[ERRORS_VIEW]
    assert errors["title"] == "vitrine-ingest-errors"
    assert errors["timeFieldName"] == "occurred_at"

    for view_id, attrs in views.items():
        schema = SCHEMA_BY_DATA_VIEW[view_id]
        assert schema[attrs["timeFieldName"]] == "date", view_id
        # Kibana stores these attributes as JSON strings.
        for key in ("fields", "fieldAttrs", "fieldFormatMap", "runtimeFieldMap", "sourceFilters"):
            json.loads(attrs[key])
        for source_filter in json.loads(attrs["sourceFilters"]):
            assert source_filter["value"] in schema, f"{view_id}: unknown source filter"


# --------------------------------------------------------------------------------------------
# Lens visualisations
# --------------------------------------------------------------------------------------------


def test_lens_visualisations_cover_the_expected_charts() -> None:
    lenses = objects_of_type("lens")
    assert len(lenses) >= 4
    charts = {
        (view, col["operationType"], col.get("sourceField"))
        for _lens_id, view, _col_id, col in lens_columns()
    }
    for expected in [
        (PRODUCTS_VIEW, "date_histogram", "indexed_at"),
        (PRODUCTS_VIEW, "terms", "category"),
        (PRODUCTS_VIEW, "terms", "tags"),
        (PRODUCTS_VIEW, "range", "price"),
        (PRODUCTS_VIEW, "terms", "model_id"),
        (ERRORS_VIEW, "terms", "reason"),
        (ERRORS_VIEW, "date_histogram", "occurred_at"),
        (ERRORS_VIEW, "terms", "merchant_id"),
        (PRODUCTS_VIEW, "terms", "auto_tags"),
        (PRODUCTS_VIEW, "terms", "auto_category"),
        (PRODUCTS_VIEW, "terms", "quality_flags"),
        (PRODUCTS_VIEW, "terms", "duplicate_group"),
        (PRODUCTS_VIEW, "terms", "visual_cluster"),
        (PRODUCTS_VIEW, "count", RECORDS_FIELD),
        (ERRORS_VIEW, "count", RECORDS_FIELD),
    ]:
        assert expected in charts, f"no Lens column for {expected}"


def test_lens_layer_references_match_layers() -> None:
    for lens in objects_of_type("lens"):
        layers = set(lens_layers(lens))
        assert layers, f"{lens['id']}: no formBased layer"
        layer_refs = {
            r["name"][len(LAYER_REF_PREFIX) :]
            for r in lens["references"]
            if r["name"].startswith(LAYER_REF_PREFIX)
        }
        assert layer_refs == layers, lens["id"]
        for layer_id in layers:
            assert layer_data_view(lens, layer_id) in SCHEMA_BY_DATA_VIEW


def test_lens_fields_exist_in_the_documented_schema() -> None:
    used = LENS_FIELDS_BY_DATA_VIEW()
    assert set(used) == set(SCHEMA_BY_DATA_VIEW)
    for view, fields in used.items():
        unknown = fields - set(SCHEMA_BY_DATA_VIEW[view])
        assert not unknown, f"{view}: Lens uses fields not in the schema: {sorted(unknown)}"


def test_lens_fields_helper_ignores_the_records_pseudo_field() -> None:
    used = LENS_FIELDS_BY_DATA_VIEW()
    assert all(RECORDS_FIELD not in fields for fields in used.values())
    assert {"indexed_at", "category", "tags", "price", "model_id"} <= used[PRODUCTS_VIEW]
    assert {"occurred_at", "reason"} <= used[ERRORS_VIEW]


@pytest.mark.parametrize("operation", sorted(BUCKET_FIELD_TYPES))
def test_bucket_columns_use_aggregatable_fields(operation: str) -> None:
    for lens_id, view, col_id, col in lens_columns():
        if col["operationType"] != operation:
            continue
        field_type = SCHEMA_BY_DATA_VIEW[view][col["sourceField"]]
        assert field_type != "text", f"{lens_id}.{col_id}: {operation} on text field"
        assert field_type in BUCKET_FIELD_TYPES[operation], (
            f"{lens_id}.{col_id}: {operation} on {col['sourceField']} ({field_type})"
        )
        assert col["isBucketed"] is True


def test_lens_columns_are_well_formed() -> None:
    expected_data_type = {"date_histogram": "date", "range": "number", "count": "number"}
    for lens_id, view, col_id, col in lens_columns():
        for key in ("label", "dataType", "operationType", "isBucketed", "sourceField"):
            assert key in col, f"{lens_id}.{col_id}: missing {key}"
        op = col["operationType"]
        if op in expected_data_type:
            assert col["dataType"] == expected_data_type[op], f"{lens_id}.{col_id}"
        if op == "count":
            assert col["sourceField"] == RECORDS_FIELD and col["isBucketed"] is False
        if op == "terms":
            field_type = SCHEMA_BY_DATA_VIEW[view][col["sourceField"]]
            wanted = "number" if field_type in NUMERIC_TYPES else "string"
            if field_type == "boolean":
                wanted = "boolean"
            assert col["dataType"] == wanted, f"{lens_id}.{col_id}"


def test_lens_state_is_internally_consistent() -> None:
    for lens in objects_of_type("lens"):
        attrs = lens["attributes"]
        assert attrs["visualizationType"] in {"lnsXY", "lnsPie", "lnsMetric", "lnsDatatable"}
        state = attrs["state"]
        assert state["query"]["language"] == "kuery" and isinstance(state["filters"], list)
        columns_by_layer = {}
        for layer_id, layer in lens_layers(lens).items():
            cols = layer["columns"]
            assert sorted(layer["columnOrder"]) == sorted(cols), f"{lens['id']}.{layer_id}"
            for col in cols.values():
                order_by = col.get("params", {}).get("orderBy", {})
                if order_by.get("type") == "column":
                    assert order_by["columnId"] in cols, f"{lens['id']}: bad orderBy"
            columns_by_layer[layer_id] = set(cols)

        # Every accessor of the visualisation names a column of its layer, and every column of a
        # layer is shown.
        for vis_layer in state["visualization"]["layers"]:
            layer_id = vis_layer["layerId"]
            assert layer_id in columns_by_layer, f"{lens['id']}: unknown layer {layer_id}"
            accessors = set(vis_layer.get("accessors", [])) | set(vis_layer.get("metrics", []))
            accessors |= set(vis_layer.get("primaryGroups", []))
            for key in ("xAccessor", "splitAccessor"):
                if vis_layer.get(key):
                    accessors.add(vis_layer[key])
            assert accessors == columns_by_layer[layer_id], lens["id"]


# --------------------------------------------------------------------------------------------
# Saved searches (Discover)
# --------------------------------------------------------------------------------------------


def saved_search_source(search: dict[str, Any]) -> dict[str, Any]:
    return json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


def saved_search_view(search: dict[str, Any]) -> str:
    (ref,) = [r for r in search["references"] if r["name"] == SEARCH_INDEX_REF]
    assert ref["type"] == "index-pattern"
    return ref["id"]


def test_saved_searches_cover_failures_flags_duplicates_and_clusters() -> None:
    searches = {o["id"]: o for o in objects_of_type("search")}
    assert {saved_search_view(s) for s in searches.values()} == {PRODUCTS_VIEW, ERRORS_VIEW}
    queries = {saved_search_source(s)["query"]["query"] for s in searches.values()}
    assert {"quality_flags:*", "duplicate_group:*", "NOT visual_cluster:*"} <= queries


def test_saved_searches_are_well_formed() -> None:
    for search in objects_of_type("search"):
        attrs, source = search["attributes"], saved_search_source(search)
        assert source["indexRefName"] == SEARCH_INDEX_REF, search["id"]
        assert source["query"]["language"] == "kuery" and source["filter"] == []
        assert COMMON_KQL.match(source["query"]["query"]), search["id"]
        schema = SCHEMA_BY_DATA_VIEW[saved_search_view(search)]
        assert attrs["columns"] and set(attrs["columns"]) <= set(schema), search["id"]
        for field, direction in attrs["sort"]:
            assert direction in {"asc", "desc"}
            assert schema[field] not in {"text", "dense_vector"}, f"{search['id']}: sorts {field}"


def test_common_kql_subset() -> None:
    for good in [
        "",
        "quality_flags:*",
        'merchant_id:"shop-a" AND NOT reason:fetch_timeout',
        '(auto_tags:"colour:red" OR auto_tags:"colour:blue") AND in_stock:true',
    ]:
        assert COMMON_KQL.match(good), good
    for bad in ["price >= 10", "merchant_id:a and reason:x", "auto_tags:colour:red", "a:b c:d"]:
        assert not COMMON_KQL.match(bad), bad


# --------------------------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------------------------


def test_dashboard_attributes() -> None:
    board = dashboard()
    attrs = board["attributes"]
    assert attrs["title"] == "Vitrine — catalogue & ingest"
    json.loads(attrs["optionsJSON"])
    json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
    assert isinstance(dashboard_panels(), list)


def test_dashboard_panels_resolve_to_lens_objects() -> None:
    board = dashboard()
    refs = {r["name"]: r for r in board["references"]}
    lens_ids = {o["id"] for o in objects_of_type("lens")}
    shown = set()
    for panel in dashboard_panels():
        index = panel["panelIndex"]
        assert panel["gridData"]["i"] == index
        ref_name = panel["panelRefName"]
        assert ref_name == f"panel_{index}"
        # Kibana 8.x prefixes each panel's references with "<panelIndex>:" and injects them back
        # by that prefix (dashboard_container_references.ts).
        ref = refs.get(f"{index}:{ref_name}")
        assert ref is not None, f"panel {index}: no reference {index}:{ref_name}"
        assert ref["type"] == panel["type"] == "lens"
        assert ref["id"] in lens_ids
        assert "id" not in panel, "by-reference panels carry panelRefName, not id"
        shown.add(ref["id"])
    assert shown == lens_ids, "every Lens visualisation is on the dashboard"
    assert len(refs) == len(dashboard_panels()), "no unused dashboard references"


def test_dashboard_grid_layout() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard_panels():
        grid = panel["gridData"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= 48, f"panel {panel['panelIndex']} is wider than the 48-column grid"
        mine = {(cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)}
        assert not cells & mine, f"panel {panel['panelIndex']} overlaps another panel"
        cells |= mine
