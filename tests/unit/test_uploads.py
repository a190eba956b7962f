import pytest

from pipeline.documents import ImageFields, IndexingFields
from pipeline.merchants.uploads import (
    ForeignMerchant,
    MetadataError,
    attach_images,
    job_ownership,
    product_view,
    public_job_results,
    validate_metadata,
)
from pipeline.storage import StoredImage


def locs(exc: MetadataError) -> list[tuple]:
    return [tuple(e["loc"][2:]) for e in exc.errors]


def test_metadata_with_files_gets_the_keys_merchant_and_placeholders():
    product = validate_metadata({"product_id": "p1", "title": "T"}, merchant_id="shop-a", files=2)
    assert product.merchant_id == "shop-a" and len(product.images) == 2
    stored = [
        StoredImage("a" * 64, "/s/aa/" + "a" * 64, True, 1),
        StoredImage("b" * 64, "/s/bb/" + "b" * 64, False, 1),
    ]
    attached = attach_images(product, stored)
    assert attached.images == ["/s/aa/" + "a" * 64, "/s/bb/" + "b" * 64]


def test_urls_are_kept_after_uploaded_files():
    product = validate_metadata(
        {"product_id": "p1", "title": "T", "images": ["https://cdn.example/1.jpg"]},
        merchant_id="m",
        files=1,
    )
    attached = attach_images(product, [StoredImage("c" * 64, "/s/c", True, 1)])
    assert attached.images == ["/s/c", "https://cdn.example/1.jpg"]


def test_another_merchant_in_the_metadata_is_forbidden():
    with pytest.raises(ForeignMerchant):
        validate_metadata(
            {"product_id": "p", "title": "T", "merchant_id": "shop-b"},
            merchant_id="shop-a",
            files=1,
        )
    same = validate_metadata(
        {"product_id": "p", "title": "T", "merchant_id": "shop-a"}, merchant_id="shop-a", files=1
    )
    assert same.merchant_id == "shop-a"


@pytest.mark.parametrize(
    ("metadata", "files", "expected"),
    [
        ({"product_id": "p", "title": "T"}, 0, [("image",)]),
        ({"product_id": "p", "title": "T", "image_url": "file:///etc/passwd"}, 0, [("image_url",)]),
        (
            {"product_id": "p", "title": "T", "images": ["https://ok.example/a.jpg", "/etc/x"]},
            0,
            [("images", 1)],
        ),
        (
            {"product_id": "p", "title": "T", "image": "x", "image_url": "https://a/b"},
            0,
            [("image",)],
        ),
        ({"title": "T", "price": -2}, 1, [("product_id",), ("price",)]),
        (
            {"product_id": "p", "title": "T", "images": [f"https://a/{i}" for i in range(21)]},
            0,
            [("images",)],
        ),
    ],
)
def test_invalid_metadata_lists_every_problem(metadata, files, expected):
    with pytest.raises(MetadataError) as info:
        validate_metadata(metadata, merchant_id="m", files=files)
    assert locs(info.value) == expected


def test_put_takes_the_id_from_the_url_and_refuses_a_contradiction():
    product = validate_metadata({"title": "T"}, merchant_id="m", product_id="sku-9", files=1)
    assert product.product_id == "sku-9"
    with pytest.raises(MetadataError) as info:
        validate_metadata(
            {"product_id": "sku-1", "title": "T"}, merchant_id="m", product_id="sku-9", files=1
        )
    assert locs(info.value) == [("product_id",)]


def test_metadata_must_be_an_object():
    with pytest.raises(MetadataError) as info:
        validate_metadata(["x"], merchant_id="m", files=1)
    assert info.value.errors[0]["type"] == "dict_type"


def test_job_ownership():
    description = {"products": ["a/p1", "a/p2"], "merchants": ["a"]}
    assert job_ownership(description, []).belongs_to("a")
    assert not job_ownership(description, []).belongs_to("b")
    assert not job_ownership(None, []).belongs_to("a")
    mixed = {"products": ["a/p1", "b/p2"], "merchants": ["a", "b"]}
    assert not job_ownership(mixed, []).belongs_to("a")
    # results name another merchant than the description: nobody's
    assert not job_ownership(description, [{"merchant_id": "b"}]).belongs_to("a")


def test_public_job_results_drop_server_details():
    result = {
        "merchant_id": "a",
        "product_id": "p",
        "status": "failed",
        "reason": "corrupt",
        "message": "m",
        "image": "/srv/images/aa/aaaa",
        "transient": False,
        "documents": [],
    }
    assert public_job_results([result]) == [
        {
            "product_id": "p",
            "status": "failed",
            "reason": "corrupt",
            "message": "m",
            "documents": [],
        }
    ]


def test_product_view_merges_image_documents():
    docs = [
        {
            "merchant_id": "a",
            "product_id": "p",
            "title": "T",
            "tags": ["x"],
            "image_index": 0,
            "image_sha256": "1" * 64,
            "image_url": "/srv/11/" + "1" * 64,
            "width": 10,
            "height": 10,
            "quality_flags": ["low_resolution"],
            "auto_tags": ["red"],
            "model_id": "m1",
        },
        {
            "merchant_id": "a",
            "product_id": "p",
            "title": "T",
            "tags": ["x"],
            "image_index": 1,
            "image_sha256": "2" * 64,
            "image_url": "https://cdn/2.jpg",
            "width": 300,
            "height": 300,
            "quality_flags": [],
            "auto_tags": ["blue", "red"],
            "model_id": "m1",
        },
    ]
    view = product_view(docs)
    assert view["quality_flags"] == ["low_resolution"] and view["auto_tags"] == ["blue", "red"]
    # as stored: the API turns store paths into its image URLs (merchants build no HTTP paths)
    assert [i["image_url"] for i in view["images"]] == ["/srv/11/" + "1" * 64, "https://cdn/2.jpg"]
    assert set(view["images"][0]) == {*ImageFields.model_fields, *IndexingFields.model_fields}
    assert view["model_id"] == "m1" and view["title"] == "T"
