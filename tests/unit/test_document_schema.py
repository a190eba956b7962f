"""The document model (``pipeline.documents.ProductDocument``) and the index mapping
(``es_mappings/products_index_template.json`` plus the model's vector field) describe the same
fields with compatible types: change one without the other and these tests fail."""

import json
from datetime import UTC, datetime
from types import NoneType, UnionType
from typing import Any, get_args, get_origin

import numpy as np
import pytest

from pipeline.api.models import SearchHit
from pipeline.documents import (
    HIT_FIELDS,
    ImageFields,
    IndexingFields,
    Product,
    ProductDocument,
    ProductFields,
    build_document,
)
from pipeline.es import mappings
from pipeline.merchants.uploads import product_view

# The Python value type of each Elasticsearch field type the mapping uses. A new field type
# must be added here, with the Python type whose values Elasticsearch accepts for it.
ES_TYPES: dict[str, type] = {
    "keyword": str,
    "binary": str,  # base64
    "text": str,
    "short": int,
    "integer": int,
    "long": int,
    "scaled_float": float,
    "float": float,
    "boolean": bool,
    "date": datetime,
    "dense_vector": float,  # of each element
}


def mapped_fields() -> dict[str, dict[str, Any]]:
    """Every field of a concrete product index: the template's and the model's vector field."""
    template = mappings.products_index_template("shop")["template"]["mappings"]["properties"]
    index = mappings.product_index_body("shop", "model", 4)["mappings"]["properties"]
    return {**template, **index}


def value_type(annotation: Any) -> Any:
    """``X`` for ``X``, ``X | None`` and ``list[X]`` (an Elasticsearch field holds lists too)."""
    args = [arg for arg in get_args(annotation) if arg is not NoneType]
    if get_origin(annotation) in (list, UnionType):
        assert len(args) == 1, f"{annotation}: one value type expected"
        return value_type(args[0])
    return annotation


def test_every_model_field_is_mapped_and_every_mapped_field_modelled():
    modelled, mapped = set(ProductDocument.model_fields), set(mapped_fields())
    assert modelled - mapped == set(), "fields of ProductDocument missing in the mapping"
    assert mapped - modelled == set(), "mapped fields missing in ProductDocument"


@pytest.mark.parametrize("name", list(ProductDocument.model_fields))
def test_field_types_are_compatible(name):
    mapping = mapped_fields()[name]
    annotation = ProductDocument.model_fields[name].annotation
    if mapping["type"] == "object":  # a list of small models: compare their fields
        model = value_type(annotation)
        assert set(model.model_fields) == set(mapping["properties"]), name
        for field, spec in mapping["properties"].items():
            es_type = ES_TYPES[spec["type"]]
            assert value_type(model.model_fields[field].annotation) is es_type, (name, field)
        return
    es_type = mapping["type"]
    assert es_type in ES_TYPES, f"{name}: add Elasticsearch type {es_type!r} to ES_TYPES"
    assert value_type(annotation) is ES_TYPES[es_type], f"{name}: {annotation} vs {es_type}"


def test_build_document_writes_exactly_the_model():
    product = Product(product_id="p", merchant_id="m", title="T", images=["a.jpg"])
    doc = build_document(
        product,
        image_index=0,
        image_sha256="ab" * 32,
        width=1,
        height=2,
        vector=np.ones(4, dtype=np.float32),
        model_id="model",
        indexed_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert list(doc) == list(ProductDocument.model_fields)
    assert ProductDocument.model_validate(doc).indexed_at == datetime(2026, 1, 2, tzinfo=UTC)


def test_the_vector_is_written_as_its_float32_values_in_short_form():
    vector = np.random.default_rng(0).normal(size=512).astype(np.float32)
    product = Product(product_id="p", merchant_id="m", title="T", images=["a.jpg"])
    doc = build_document(
        product, image_index=0, image_sha256="ab" * 32, width=1, height=2, vector=vector,
        model_id="model",
    )  # fmt: skip
    text = json.dumps(doc["image_vector"])
    assert np.array_equal(np.array(json.loads(text), dtype=np.float32), vector)
    assert len(text) < 0.65 * len(json.dumps(vector.tolist()))  # 8-9 digits, not 17


def test_hits_and_product_views_are_made_of_document_fields():
    assert (*ProductFields.model_fields, *ImageFields.model_fields) == HIT_FIELDS
    assert set(HIT_FIELDS) <= set(SearchHit.model_fields)
    source = {name: f"{name}-value" for name in ProductDocument.model_fields}
    view = product_view([source])
    shown = {*ProductFields.model_fields, *IndexingFields.model_fields, "images"}
    assert set(view) == shown | {"auto_tags", "quality_flags"}
    assert set(view["images"][0]) == {*ImageFields.model_fields, *IndexingFields.model_fields}
