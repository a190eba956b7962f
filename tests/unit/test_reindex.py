"""The pure parts of the re-embed: the comparison that decides what to send and when to swap,
and rebuilding a product from its documents."""

from __future__ import annotations

import numpy as np

from pipeline.documents import Product, build_document
from pipeline.es.aliases import DeploymentIndex, next_generation
from pipeline.es.client import IndexInfo
from pipeline.ingest.reindex import Copy, compare, product_from_documents

T1, T2, T3 = "2026-11-23T00:00:01+00:00", "2026-11-23T00:00:02+00:00", "2026-11-23T00:00:03+00:00"


def test_identical_indices_need_nothing():
    old = {"a": Copy(("m", "p"), "h1", T1), "b": Copy(("m", "q"), "h2", T1)}
    new = {"a": Copy(("m", "p"), "h1", T2), "b": Copy(("m", "q"), "h2", T2)}
    assert compare(old, new).empty


def test_missing_outdated_and_extra_documents():
    old = {
        "a": Copy(("m", "missing"), "h", T1),
        "b": Copy(("m", "changed"), "h-new", T1),  # updated in the old index meanwhile
        "c": Copy(("m", "same"), "h", T1),
    }
    new = {
        "b": Copy(("m", "changed"), "h-old", T2),  # re-embedded from the version before
        "c": Copy(("m", "same"), "h", T2),
        "d": Copy(("m", "deleted"), "h", T2),
    }
    diff = compare(old, new)
    assert diff.stale == {("m", "missing"), ("m", "changed")}
    assert diff.extra == ["d"]


def test_after_the_swap_a_newer_copy_in_the_new_index_wins():
    """After the swap the new index takes writes first: an older old copy must not overwrite."""
    old = {"a": Copy(("m", "p"), "h-old", T2)}
    new = {"a": Copy(("m", "p"), "h-newer", T3)}
    assert compare(old, new, since=T1).empty


def test_after_the_swap_only_late_writes_count_and_nothing_is_deleted():
    old = {
        "a": Copy(("m", "early"), "h", T1),
        "b": Copy(("m", "late"), "h", T3),
        "c": Copy(("m", "late-changed"), "h2", T3),
    }
    new = {
        "c": Copy(("m", "late-changed"), "h1", T2),
        "x": Copy(("m", "uploaded-after-swap"), "h", T3),
    }
    diff = compare(old, new, since=T2)
    assert diff.stale == {("m", "late"), ("m", "late-changed")} and diff.extra == []


def test_product_rebuilt_from_documents_has_the_same_content_hash():
    product = Product.model_validate(
        {
            "product_id": "p1",
            "merchant_id": "m1",
            "title": "Red shoe",
            "category": "Shoes",
            "tags": ["Red", "red", " sale "],
            "price": 19.99,
            "currency": "EUR",
            "images": ["/store/ab/ab12", "https://img.example/2.jpg", "/store/cd/cd34"],
        }
    )
    documents = [
        build_document(
            product,
            image_index=i,
            image_sha256=f"{i:064x}",
            width=10,
            height=10,
            vector=np.ones(4, dtype=np.float32) / 2,
            model_id="m",
        )
        for i in (2, 0, 1)  # any order
    ]
    rebuilt = product_from_documents(documents)
    assert rebuilt == product
    assert rebuilt.content_hash == product.content_hash


def test_next_generation_follows_the_highest():
    def item(name: str) -> DeploymentIndex:
        return DeploymentIndex(IndexInfo(name, "m", 4), serving=False, writing=False)

    assert next_generation([]) == 1
    assert next_generation([item("shop.a.000001"), item("shop.b.000007")]) == 8
