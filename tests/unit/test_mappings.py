"""The pure builders produce bodies that agree with each other and with es_mappings/."""

import fnmatch
import re

import pytest

from pipeline.es import mappings
from pipeline.settings import ELASTIC_NAME
from tests.unit.test_kibana_objects import LENS_FIELDS_BY_DATA_VIEW


def test_index_names_are_valid_and_model_specific():
    name = mappings.product_index_name(
        "vitrine-products", "open_clip:ViT-B-32:laion2b_s34b_b79k:512"
    )
    assert name == "vitrine-products.open-clip-vit-b-32-laion2b-s34b-b79k-512.000001"
    assert name == name.lower() and len(name.encode()) < 255
    assert mappings.product_index_name("a", "m", 2).endswith(".000002")


def test_template_matches_concrete_indices_but_not_the_errors_index():
    template = mappings.products_index_template("vitrine-products")
    assert template["index_patterns"] == ["vitrine-products.*"]
    assert "_comment" not in template
    assert template["template"]["mappings"]["dynamic"] == "strict"
    errors = mappings.errors_index_template("vitrine-ingest-errors")
    assert errors["index_patterns"] == ["vitrine-ingest-errors"]


@pytest.mark.parametrize(
    ("alias", "other"),
    [("shop", "shop-eu"), ("vitrine", "vitrine-ingest-errors"), ("a", "a_b"), ("a", "a+b")],
)
def test_patterns_of_prefix_aliases_never_overlap(alias: str, other: str):
    """Elasticsearch refuses (400) two templates of one priority whose patterns can match the
    same name: an alias that prefixes another alias or the errors index must not match theirs."""
    names = [
        mappings.product_index_name(other, "m"),
        mappings.write_alias(other),
        other,  # an errors index named like this
    ]
    pattern = mappings.products_index_template(alias)["index_patterns"][0]
    assert not [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    assert fnmatch.fnmatchcase(mappings.product_index_name(alias, "m", 7), pattern)
    for name in (alias, other):  # no Vitrine name passes the settings check with a dot
        assert re.match(ELASTIC_NAME, name) and mappings.SEPARATOR not in name
    assert not re.match(ELASTIC_NAME, "shop.eu")


def test_index_body_sets_dims_model_and_aliases():
    body = mappings.product_index_body("shop", "model-x", 384, meta={"queue": "q"})
    vector = body["mappings"]["properties"]["image_vector"]
    assert vector["dims"] == 384 and vector["similarity"] == "cosine" and vector["index"] is True
    assert vector["index_options"]["type"] == "int8_hnsw"
    assert body["mappings"]["_meta"] == {
        "model_id": "model-x",
        "dims": 384,
        "alias": "shop",
        "queue": "q",
    }
    assert body["aliases"] == {"shop.write": {}, "shop": {}}
    assert body["settings"]["index"] == {"number_of_shards": 1, "number_of_replicas": 0}
    building = mappings.product_index_body("shop", "model-y", 8, serving=False)
    assert building["aliases"] == {"shop.write": {}}  # searches see it only after the swap


def test_swap_moves_both_aliases_in_one_call():
    actions = mappings.swap_actions("shop", serving="shop.new.000002", retiring="shop.old.000001")
    assert {"add": {"index": "shop.new.000002", "alias": "shop"}} in actions
    assert {"add": {"index": "shop.new.000002", "alias": "shop.write"}} in actions
    assert {"remove": {"index": "shop.old.000001", "alias": "shop"}} in actions
    assert {"remove": {"index": "shop.old.000001", "alias": "shop.write"}} in actions
    assert len(actions) == 4


def test_index_body_takes_shards_and_replicas_for_a_cluster():
    body = mappings.product_index_body("shop", "model-x", 8, shards=3, replicas=1)
    assert body["settings"]["index"] == {"number_of_shards": 3, "number_of_replicas": 1}


def test_loaded_files_are_copies():
    mappings.image_vector_mapping(3)["index_options"]["type"] = "changed"
    assert mappings.image_vector_mapping(3)["index_options"]["type"] == "int8_hnsw"


def test_stale_documents_query_keeps_new_ids_per_product():
    query = mappings.stale_documents_query([(("m", "p1"), ["id2", "id1"]), (("m", "p2"), ["id3"])])
    first, second = query["bool"]["should"]
    assert first["bool"]["filter"] == mappings.product_filter("m", "p1")
    assert first["bool"]["must_not"] == [{"ids": {"values": ["id1", "id2"]}}]
    assert second["bool"]["must_not"] == [{"ids": {"values": ["id3"]}}]
    assert query["bool"]["minimum_should_match"] == 1


def test_bulk_actions():
    actions = list(mappings.index_actions("alias", [("1", {"a": 1})]))
    assert actions == [{"_op_type": "index", "_index": "alias", "_id": "1", "_source": {"a": 1}}]


def test_kibana_charts_use_aggregatable_mapped_fields():
    products = mappings.products_index_template("x")["template"]["mappings"]["properties"]
    errors = mappings.errors_index_template("e")["template"]["mappings"]["properties"]
    by_view = LENS_FIELDS_BY_DATA_VIEW()
    for view, properties in (("vitrine-products", products), ("vitrine-ingest-errors", errors)):
        for field in by_view.get(view, set()):
            root, _, sub = field.partition(".")
            assert root in properties, f"{view}: {field} is not mapped"
            mapped = properties[root]["fields"][sub] if sub else properties[root]
            assert mapped["type"] != "text", f"{view}: {field} is a text field"
