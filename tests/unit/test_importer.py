import csv
import hashlib

import pandas as pd

from pipeline.documents import Product
from pipeline.images import ImageLimits
from pipeline.ingest.catalogue import (
    RejectedRow,
    read_catalogue,
    summarise_rejections,
    write_reject_report,
)
from pipeline.ingest.importer import batches_by_merchant, content_hash_query, plan_import
from pipeline.storage import ImageStore


def product(pid, merchant="m", **fields):
    return Product.model_validate(
        {
            "product_id": pid,
            "merchant_id": merchant,
            "title": "T",
            "image": "https://a/b.jpg",
            **fields,
        }
    )


def write_catalogue(tmp_path, rows: str):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.jpg").write_bytes(b"image a")
    (tmp_path / "img" / "b.jpg").write_bytes(b"image b")
    path = tmp_path / "cat.csv"
    path.write_text("product_id,merchant_id,title,price,image,supplier_code\n" + rows)
    return path


def test_local_images_go_to_the_store_and_unreadable_ones_are_rejected(tmp_path):
    path = write_catalogue(
        tmp_path,
        "p1,m,One,1,img/a.jpg,X1\n"
        "p2,m,Two,2,img/missing.jpg,X2\n"
        "p3,m,Three,3,https://cdn.example/3.jpg,X3\n"
        "p4,m,Four,-1,img/b.jpg,X4\n",
    )
    store = ImageStore(tmp_path / "store")
    plan = plan_import(path, store=store, limits=ImageLimits())
    assert plan.catalogue.ignored_columns == ["supplier_code"]
    assert [p.product_id for p in plan.products] == ["p1", "p3"]
    sha = hashlib.sha256(b"image a").hexdigest()
    assert plan.products[0].images == [str(store.get(sha))]
    assert plan.products[1].images == ["https://cdn.example/3.jpg"]
    rejected = {r.row: r for r in plan.rejected}
    assert rejected[2].stage == "image" and rejected[2].reason.startswith("not_found")
    assert rejected[4].stage == "validation" and rejected[4].reason.startswith("price")


def test_changed_only_skips_products_whose_hash_is_indexed(tmp_path):
    path = write_catalogue(tmp_path, "p1,m,One,1,img/a.jpg,\np2,m,Two,2,img/b.jpg,\n")
    store = ImageStore(tmp_path / "store")
    first = plan_import(path, store=store, limits=ImageLimits())
    known = {first.products[0].content_hash}
    asked: list[list[str]] = []

    def lookup(hashes):
        asked.append(hashes)
        return known

    plan = plan_import(path, store=store, limits=ImageLimits(), indexed_hashes=lookup)
    assert [p.product_id for p in plan.unchanged] == ["p1"]
    assert [p.product_id for p in plan.products] == ["p2"]
    assert len(asked) == 1 and len(asked[0]) == 2
    # a new image under the same file name is a change
    (tmp_path / "img" / "a.jpg").write_bytes(b"image a, new photo")
    plan = plan_import(path, store=store, limits=ImageLimits(), indexed_hashes=lookup)
    assert [p.product_id for p in plan.products] == ["p1", "p2"]


def test_content_hash_is_stable_and_covers_metadata():
    assert product("p").content_hash == product("p").content_hash
    assert product("p").content_hash != product("p", price=1).content_hash
    assert product("p").content_hash != product("p", image="https://a/c.jpg").content_hash
    assert product("p").content_hash != product("p", merchant="n").content_hash


def test_batches_never_mix_merchants():
    products = [product("1", "a"), product("2", "b"), product("3", "a"), product("4", "a")]
    batches = batches_by_merchant(products, 2)
    assert [[p.product_id for p in b] for b in batches] == [["1", "3"], ["4"], ["2"]]


def test_content_hash_query():
    body = content_hash_query(["h1", "h2"])
    assert body["query"] == {"terms": {"content_hash": ["h1", "h2"]}}
    assert body["aggs"]["found"]["terms"] == {"field": "content_hash", "size": 2}
    assert body["size"] == 0


def test_reject_report_and_summary(tmp_path):
    rejected = [
        RejectedRow(5, "p5", "price: Input should be a number", "m"),
        RejectedRow(2, "p2", "not_found: no such file", "m", "image"),
        RejectedRow(3, "p3", "price: Input should be greater than 0", "m"),
    ]
    path = write_reject_report(tmp_path / "out" / "r.csv", rejected)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["row"] for r in rows] == ["2", "3", "5"]
    assert rows[0] == {
        "row": "2",
        "merchant_id": "m",
        "product_id": "p2",
        "stage": "image",
        "reason": "not_found: no such file",
    }
    assert summarise_rejections(rejected) == {"validation/price": 2, "image/not_found": 1}


def test_parquet_catalogue(tmp_path):
    frame = pd.DataFrame(
        {
            "product_id": ["a", "b"],
            "merchant_id": ["m", "m"],
            "title": ["A", "B"],
            "price": [1.5, None],
            "tags": [["x", "Y"], []],
            "image": ["https://a/1.jpg", "rel.jpg"],
        }
    )
    path = tmp_path / "cat.parquet"
    frame.to_parquet(path)
    catalogue = read_catalogue(path)
    assert not catalogue.rejected
    a, b = catalogue.products
    assert a.tags == ["x", "y"] and a.price == 1.5 and b.price is None
    assert b.images == [str(tmp_path / "rel.jpg")]
    assert catalogue.rows == {("m", "a"): 1, ("m", "b"): 2}


def test_invalid_boolean_is_rejected_not_guessed(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text(
        "product_id,merchant_id,title,in_stock,image\na,m,A,no,/x.jpg\nb,m,B,maybe,/x.jpg\n"
    )
    catalogue = read_catalogue(path)
    assert catalogue.products[0].in_stock is False
    assert catalogue.rejected[0].row == 2 and catalogue.rejected[0].reason.startswith("in_stock")
