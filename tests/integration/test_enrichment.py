"""Enrichment through a real worker: the documents carry the new fields (zero-shot tags,
quality flags, text read from the image, perceptual hash), and filters, facets and keyword
search use them.

This worker runs every enrichment processor, ocr included, with a taxonomy whose thresholds
are 0 so that every image gets a category and tags: the test model has random weights, so
*which* labels it picks means nothing; only that they are written and searchable is tested.
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pipeline.documents import Product
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.search.query import Filters, KeywordQuery
from tests.integration.helpers import pattern_image, unique_prefix

TAXONOMY = """
logit_scale: 100
facets:
  category:
    threshold: 0
    templates: ["a photo of {}."]
    labels: {bag: ["a bag"], shoe: ["a shoe"], mug: ["a mug"]}
  colour:
    threshold: 0
    max_labels: 2
    templates: ["a {} product."]
    labels: {red: ["red"], blue: ["blue"], green: ["green"]}
"""


def captioned(seed: int) -> Image.Image:
    image = pattern_image(seed, 320)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 250, 320, 310], fill=(255, 255, 255))
    draw.text((12, 258), "SUMMER SALE", font=ImageFont.load_default(size=36), fill="black")
    return image


@pytest.fixture(scope="module")
def enriched(settings, es, tmp_path_factory):
    """Index three products with an all-processors worker; their documents by name."""
    from pipeline.dev.worker_process import worker_process

    directory = tmp_path_factory.mktemp("enrich")
    taxonomy = directory / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY)
    current = settings.model_copy(
        update={
            "queue": f"{settings.queue}-enrich",
            "processors": ["decode_image", "ocr", "image_quality", "phash", "embed_image",
                           "auto_tag"],
            "auto_tag_on_random_weights": True,
            "taxonomy_path": taxonomy,
        }
    )  # fmt: skip
    prefix = unique_prefix()
    images = {
        "caption": captioned(1),
        "blurred": pattern_image(2, 320).filter(ImageFilter.GaussianBlur(8)),
        "plain": pattern_image(3, 320),
    }
    products = []
    for name, image in images.items():
        path = directory / f"{name}.png"
        image.save(path)
        products.append(
            Product(
                product_id=f"{prefix}-{name}", merchant_id="merchant-e", title=f"Item {name}",
                category="furniture", tags=[prefix], images=[str(path)],
            )
        )  # fmt: skip
    with (directory / "worker.log").open("w") as log, worker_process(current, output=log) as app:
        job_ids = enqueue(app, products, batch_size=3)
        statuses = wait_for_jobs(app, job_ids, timeout_s=300)
    assert [statuses[j].state for j in job_ids] == ["done"], (directory / "worker.log").read_text()
    es.indices.refresh(index=settings.index_alias)
    hits = es.search(index=settings.index_alias, query={"term": {"tags": prefix}}, size=10)["hits"][
        "hits"
    ]
    return prefix, {h["_source"]["product_id"].rsplit("-", 1)[1]: h["_source"] for h in hits}


def test_documents_carry_the_enrichment_fields(enriched):
    _, docs = enriched
    assert set(docs) == {"caption", "blurred", "plain"}
    for doc in docs.values():
        assert doc["category"] == "furniture"  # the merchant's, untouched
        assert doc["auto_category"] in {"bag", "shoe", "mug"}
        assert 0 < doc["auto_category_score"] <= 1
        assert len(doc["auto_tags"]) == 2 and all(t.startswith("colour:") for t in doc["auto_tags"])
        assert [s["tag"] for s in doc["auto_tag_scores"]] == doc["auto_tags"]
        assert re.fullmatch(r"[0-9a-f]{16}", doc["phash"])
    assert "SALE" in docs["caption"]["image_text"]
    assert docs["caption"]["quality_flags"] == ["text_overlay"]
    assert docs["blurred"]["quality_flags"] == ["blurry"]
    assert docs["plain"]["quality_flags"] == [] and docs["plain"]["image_text"] is None


def search(es, settings, query: KeywordQuery) -> dict:
    return es.search(index=settings.index_alias, **query.body())


def names(response: dict) -> set[str]:
    return {h["_source"]["product_id"].rsplit("-", 1)[1] for h in response["hits"]["hits"]}


def test_filters_on_auto_fields_and_quality_flags(enriched, es, settings):
    prefix, docs = enriched
    mine = Filters(tags_all=[prefix])
    category = docs["plain"]["auto_category"]
    expected = {n for n, d in docs.items() if d["auto_category"] == category}
    by_category = Filters(tags_all=[prefix], auto_category=category.upper())
    assert names(search(es, settings, KeywordQuery(filters=by_category))) == expected
    tags = docs["caption"]["auto_tags"]
    expected = {n for n, d in docs.items() if set(tags) <= set(d["auto_tags"])}
    by_tags = Filters(tags_all=[prefix], auto_tags_all=tags)
    assert names(search(es, settings, KeywordQuery(filters=by_tags))) == expected
    clean = Filters(tags_all=[prefix], exclude_quality_flags=["blurry", "text_overlay"])
    assert names(search(es, settings, KeywordQuery(filters=clean))) == {"plain"}
    word = docs["caption"]["image_text"].split()[0].lower()  # text read from the image
    assert names(search(es, settings, KeywordQuery(word, filters=mine))) == {"caption"}


def test_facets_count_auto_fields_and_flags(enriched, es, settings):
    prefix, docs = enriched
    response = search(es, settings, KeywordQuery(filters=Filters(tags_all=[prefix]), facets=True))
    aggs = response["aggregations"]
    counted = {b["key"]: b["doc_count"] for b in aggs["auto_category"]["buckets"]}
    assert counted == {
        c: sum(d["auto_category"] == c for d in docs.values())
        for c in {d["auto_category"] for d in docs.values()}
    }
    flags = {b["key"]: b["doc_count"] for b in aggs["quality_flags"]["buckets"]}
    assert flags == {"blurry": 1, "text_overlay": 1}
    tag_total = sum(b["doc_count"] for b in aggs["auto_tags"]["buckets"])
    assert tag_total == sum(len(d["auto_tags"]) for d in docs.values())


def test_cli_search_filters_on_auto_fields_and_flags(enriched, settings):
    from typer.testing import CliRunner

    from pipeline.cli import app

    prefix, docs = enriched
    category = docs["caption"]["auto_category"]
    args = [
        "search",
        "--tag",
        prefix,
        "--auto-category",
        category,
        "--exclude-quality-flag",
        "blurry",
    ]
    out = CliRunner().invoke(app, [*args, "--json"], env=settings.to_env())
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)["hits"]
    expected = {n for n, d in docs.items() if d["auto_category"] == category and n != "blurred"}
    assert {h["product_id"].rsplit("-", 1)[1] for h in hits} == expected
    assert all(h["auto_category"] == category for h in hits)
