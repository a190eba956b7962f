import json

import pytest

from pipeline.ingest.catalogue import CatalogueError, read_catalogue


def test_csv_rows_become_products_with_resolved_images(tmp_path):
    (tmp_path / "img").mkdir()
    csv = tmp_path / "cat.csv"
    csv.write_text(
        "product_id,merchant_id,title,tags,price,in_stock,image\n"
        "a1,m,Red shoe,red|sale,10.5,false,img/a.jpg\n"
        "a2,m,Blue shoe,,,,https://shop.example/b.jpg\n"
    )
    catalogue = read_catalogue(csv)
    assert not catalogue.rejected
    first, second = catalogue.products
    assert first.images == [str(tmp_path / "img" / "a.jpg")]
    assert first.tags == ["red", "sale"] and first.price == 10.5 and first.in_stock is False
    assert second.images == ["https://shop.example/b.jpg"] and second.price is None


def test_invalid_and_duplicate_rows_are_rejected_with_row_and_reason(tmp_path):
    csv = tmp_path / "cat.csv"
    csv.write_text(
        "product_id,merchant_id,title,price,image\n"
        "a1,m,Good,1,/x.jpg\n"
        "a2,m,,1,/x.jpg\n"
        "a3,m,Bad price,-4,/x.jpg\n"
        "a1,m,Duplicate,1,/y.jpg\n"
        "a5,m,No image,1,\n"
    )
    catalogue = read_catalogue(csv)
    assert [p.product_id for p in catalogue.products] == ["a1"]
    reasons = {r.row: r.reason for r in catalogue.rejected}
    assert set(reasons) == {2, 3, 4, 5}
    assert "title" in reasons[2]
    assert "price" in reasons[3]
    assert reasons[4] == "duplicate product_id: first seen in row 1"
    assert "images" in reasons[5]


def test_jsonl_with_lists(tmp_path):
    path = tmp_path / "cat.jsonl"
    row = {
        "product_id": 7,
        "merchant_id": "m",
        "title": "T",
        "tags": ["A"],
        "images": ["/a.jpg", "/b.jpg"],
    }
    path.write_text(json.dumps(row) + "\n")
    [product] = read_catalogue(path).products
    assert product.product_id == "7" and product.tags == ["a"] and len(product.images) == 2


def test_missing_columns_and_unknown_formats_fail_the_whole_file(tmp_path):
    csv = tmp_path / "cat.csv"
    csv.write_text("product_id,title\n1,x\n")
    with pytest.raises(CatalogueError, match="merchant_id.*image"):
        read_catalogue(csv)
    with pytest.raises(CatalogueError, match="unsupported"):
        read_catalogue(tmp_path / "cat.xlsx")
