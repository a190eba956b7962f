"""A small catalogue where the right answers are known without semantics.

The test model has random weights, so only image identity (exact and near-duplicate images),
words (BM25) and metadata carry meaning. Every product has the catalogue's own tag (its prefix)
so that a search can be confined to it while other tests write into the same index; the tag
filter is then one of the filters under test as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.documents import Product
from pipeline.images import load_image
from pipeline.ingest.ingestor import Ingestor
from pipeline.search.query import Filters
from tests.integration.helpers import near_duplicate, pattern_image

# name: (merchant a|b, image seeds, title, description, tags, category, price, currency, in stock)
ROWS = [
    ("sneaker", "a", (7001, 7002), "Red canvas sneaker", "Low-top canvas shoe", ["sale", "red"],
     "shoes", 45.0, "EUR", True),
    ("boot", "a", (7003,), "Leather boot", "Warm lined boot", ["winter"],
     "shoes", 120.0, "EUR", False),
    ("bag", "a", (7004,), "Tote bag", "Large canvas tote", ["sale"],
     "bags", 30.0, "USD", True),
    ("crimson_bag", "a", (), "Crimson tote bag", "The tote in a deep red", ["red"],
     "bags", 60.0, "EUR", True),
    ("scarf", "b", (7005,), "Wool scarf", "Soft winter scarf", ["winter", "sale"],
     "accessories", 15.0, "EUR", True),
    ("hat", "b", (7006,), "Sun hat", "Straw hat", ["summer"],
     "accessories", 25.0, "EUR", True),
    ("sneaker_b", "b", (7007,), "Canvas sneaker", "Plain canvas shoe", ["summer"],
     "shoes", 50.0, "EUR", True),
    ("gift_card", "b", (7008,), "Gift card", "", [],
     None, None, None, True),
]  # fmt: skip
FIELDS = ("title", "description", "tags", "category", "price", "currency", "in_stock")
SPEC: dict[str, tuple[str, tuple[int, ...], dict[str, Any]]] = {
    name: (merchant, seeds, dict(zip(FIELDS, rest, strict=True)))
    for name, merchant, seeds, *rest in ROWS
}
LOW_RESOLUTION = {"hat"}  # 48 px < the test settings' min_image_side of 64


@dataclass
class Catalogue:
    prefix: str
    products: dict[str, Product]
    query_images: dict[str, Path]  # name -> an image file (the product's or a near-duplicate)

    def filters(self, **fields: Any) -> Filters:
        """Filters confined to this catalogue (its tag), plus ``fields``."""
        tags = [self.prefix, *fields.pop("tags_all", [])]
        return Filters(tags_all=tags, **fields)

    def name(self, hit: dict[str, Any]) -> str:
        key = (hit["merchant_id"], hit["product_id"])
        for name, product in self.products.items():
            if (product.merchant_id, product.product_id) == key:
                return name
        raise AssertionError(f"hit {key} is not in the catalogue")

    def names(self, hits: list[dict[str, Any]]) -> list[str]:
        return [self.name(h) for h in hits]

    def image(self, name: str):
        return load_image(self.query_images[name]).image


def build_catalogue(directory: Path, prefix: str) -> Catalogue:
    products: dict[str, Product] = {}
    query_images: dict[str, Path] = {}
    for name, (merchant, seeds, fields) in SPEC.items():
        paths = []
        for seed in seeds:
            path = directory / f"{name}-{seed}.jpg"
            pattern_image(seed, 48 if name in LOW_RESOLUTION else 96).save(path, quality=95)
            paths.append(path)
        if name == "crimson_bag":  # the bag's picture, resized and re-encoded
            path = directory / "crimson_bag.jpg"
            near_duplicate(pattern_image(SPEC["bag"][1][0])).save(path, quality=90)
            paths.append(path)
        product_id = f"{prefix}-sneaker" if name == "sneaker_b" else f"{prefix}-{name}"
        products[name] = Product.model_validate(
            {
                "product_id": product_id,
                "merchant_id": f"{prefix}-{merchant}",
                "images": [str(p) for p in paths],
                **{**fields, "tags": [prefix, *fields["tags"]]},
            }
        )
        query_images[name] = paths[0]
    for name in ("boot", "scarf", "sneaker_b"):  # query images that are not in the index
        path = directory / f"{name}-near.jpg"
        near_duplicate(pattern_image(SPEC[name][1][0])).save(path, quality=85)
        query_images[f"{name}_near"] = path
    return Catalogue(prefix, products, query_images)


def index_catalogue(ingestor: Ingestor, catalogue: Catalogue) -> None:
    results = ingestor.ingest(list(catalogue.products.values()))
    assert all(r.status == "indexed" for r in results), [
        r for r in results if r.status != "indexed"
    ]
    ingestor.es.indices.refresh(index=ingestor.settings.index_alias)
