import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.documents import (
    MAX_PRICE,
    MAX_TAG_CHARS,
    Product,
    build_document,
    document_id,
    stable_id,
)


def product(**overrides):
    data = {"product_id": "sku-1", "merchant_id": "acme", "title": "Red shoe", "image": "a.jpg"}
    return Product.model_validate({**data, **overrides})


def test_image_shorthand_and_tag_normalisation():
    p = product(tags=[" Red ", "red", "Summer  Sale", ""], category=" Shoes ")
    assert p.images == ["a.jpg"]
    assert p.tags == ["red", "summer sale"]
    assert p.category == "shoes"


@pytest.mark.parametrize(
    "overrides",
    [
        {"product_id": ""},
        {"product_id": "has space"},
        {"merchant_id": "-leading-dash"},
        {"title": ""},
        {"price": -1},
        {"currency": "eur"},
        {"images": []},
        {"unknown_field": 1},
        # values the index cannot hold (es_mappings/products_index_template.json)
        {"price": float("nan")},
        {"price": float("inf")},
        {"price": MAX_PRICE * 10},
        {"tags": ["x" * 100_000]},
        {"tags": ["x" * (MAX_TAG_CHARS + 1)]},
        {"tags": [f"t{i}" for i in range(101)]},
        {"category": "c" * (MAX_TAG_CHARS + 1)},
        {"images": ["https://cdn.example/" + "a" * 3000]},
    ],
)
def test_invalid_products_are_refused(overrides):
    with pytest.raises(ValidationError):
        product(**overrides)


def test_the_largest_accepted_values_fit_the_index():
    p = product(price=MAX_PRICE, tags=["x" * MAX_TAG_CHARS])
    assert round(p.price * 100) == MAX_PRICE * 100  # cents exact in the scaled_float
    assert len(p.tags[0].encode()) <= 32_766  # Lucene's largest term


def test_document_id_is_deterministic_and_scoped_by_merchant():
    sha = "ab" * 32
    assert document_id("acme", "sku-1", sha) == document_id("acme", "sku-1", sha)
    assert document_id("acme", "sku-1", sha) != document_id("other", "sku-1", sha)
    assert document_id("acme", "sku-1", sha) != document_id("acme", "sku-1", "cd" * 32)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("shop-d:a", "b:c"), ("shop-d", "a:b:c")),  # the overwrite of issue 8
        (("a:b", "c"), ("a", "b:c")),
        (("a/b", "c"), ("a", "b/c")),
        (("a", "b" * 127), ("a" + "b" * 127, "")),
    ],
)
def test_document_ids_cannot_collide_across_id_boundaries(one, other):
    sha = "ab" * 32
    assert document_id(*one, sha) != document_id(*other, sha)


def test_stable_id_is_injective_over_its_parts():
    assert stable_id("a:1", "b") != stable_id("a", "1:b")
    assert stable_id("ab", "") != stable_id("a", "b") != stable_id("", "ab")
    assert stable_id("x") != stable_id("x", "")
    assert stable_id("ingest-error", "job", "m", "p", "") == stable_id(
        "ingest-error", "job", "m", "p", ""
    )
    assert len(document_id("m", "p", "ab" * 32)) == 64  # well under Elasticsearch's 512 bytes


def test_build_document_fields():
    doc = build_document(
        product(price=9.5, currency="EUR", tags=["x"]),
        image_index=0,
        image_sha256="cd" * 32,
        width=10,
        height=20,
        vector=np.array([0.6, 0.8], dtype=np.float32),
        model_id="m:1",
        quality_flags=["low_resolution"],
    )
    assert doc["image_vector"] == pytest.approx([0.6, 0.8])
    assert doc["image_url"] == "a.jpg" and doc["image_index"] == 0
    assert doc["quality_flags"] == ["low_resolution"] and doc["auto_tags"] == []
    assert (doc["price"], doc["currency"], doc["model_id"]) == (9.5, "EUR", "m:1")
    assert doc["indexed_at"].endswith("+00:00")
