"""Zero-shot tagging with a deterministic encoder whose text and image vectors are known, so
label vectors, probabilities, thresholds and the category_mismatch flag are checked exactly."""

import logging
import re
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from pipeline.documents import Product, build_document
from pipeline.encoders import IMAGE, TEXT, Encoder, l2_normalise
from pipeline.ingest.enrich import tagging
from pipeline.ingest.enrich.auto_tag import AutoTag
from pipeline.ingest.enrich.tagging import (
    category_mismatch,
    compute_label_vectors,
    label_vectors,
    tag_vector,
)
from pipeline.ingest.enrich.taxonomy import Taxonomy, load_taxonomy
from pipeline.ingest.processors import IngestItem, ProcessorContext
from pipeline.settings import VitrineSettings

CONCEPTS = ["bag", "shoe", "red", "blue", "leather", "cotton", "other"]


def concept(*names: str) -> np.ndarray:
    """The unit vector along the given concept axes (equal weights)."""
    vector = np.zeros(len(CONCEPTS))
    for name in names:
        vector[CONCEPTS.index(name)] = 1.0
    return vector / np.linalg.norm(vector)


class KeywordEncoder(Encoder):
    """A text is the normalised sum of the concept axes its words name ("other" if none);
    an image's vector is whatever the test registered for its size."""

    dim = len(CONCEPTS)
    capabilities = frozenset({IMAGE, TEXT})

    def __init__(self, model_id: str = "test:keywords:7", *, semantic: bool = True):
        self.model_id = model_id
        self.semantic = semantic
        self.text_calls = 0
        self.image_vectors: dict[tuple[int, int], np.ndarray] = {}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_calls += 1
        words = [set(re.findall(r"[a-z]+", text.lower())) & set(CONCEPTS) for text in texts]
        return np.stack([concept(*w) if w else concept("other") for w in words])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return l2_normalise(np.stack([self.image_vectors[image.size] for image in images]))


class ImageOnlyEncoder(KeywordEncoder):
    capabilities = frozenset({IMAGE})


TAXONOMY = Taxonomy.model_validate(
    {
        "logit_scale": 10,
        "facets": {
            "category": {
                "threshold": 0.5,
                "templates": ["a photo of a {}.", "{}, product shot"],
                "labels": {
                    "bag": {"phrases": ["bag", "leather bag"], "aliases": ["bags", "handbags"]},
                    "shoe": {"phrases": ["shoe"], "aliases": ["footwear"]},
                    "hat": ["hat"],  # no concept axis: "other"
                },
            },
            "colour": {
                "threshold": 0.3,
                "max_labels": 2,
                "templates": ["a {} thing"],
                "labels": {"red": ["red"], "blue": ["blue"], "green": ["green"]},
            },
            "material": {
                "threshold": 0.6,
                "templates": ["made of {}"],
                "labels": {"leather": ["leather"], "cotton": ["cotton"]},
            },
        },
    }
)


def softmax(logits: list[float]) -> np.ndarray:
    e = np.exp(np.asarray(logits) - max(logits))
    return e / e.sum()


@pytest.fixture(autouse=True)
def empty_memory_cache(monkeypatch):
    monkeypatch.setattr(tagging, "_memory", {})


def test_label_vectors_are_normalised_means_of_their_prompts():
    vectors = compute_label_vectors(KeywordEncoder(), TAXONOMY)
    names, matrix = vectors.facets["category"]
    assert names == ["bag", "shoe", "hat"]
    # bag: 2 templates x ("bag" -> bag axis, "leather bag" -> bag+leather, normalised)
    expected_bag = l2_normalise((concept("bag") + concept("bag", "leather"))[None, :] / 2)[0]
    np.testing.assert_allclose(matrix[0], expected_bag, atol=1e-6)
    np.testing.assert_allclose(matrix[1], concept("shoe"), atol=1e-6)
    np.testing.assert_allclose(matrix[2], concept("other"), atol=1e-6)
    assert vectors.digest == TAXONOMY.digest and vectors.model_id == "test:keywords:7"


def test_probabilities_thresholds_and_max_labels_exactly():
    vectors = compute_label_vectors(KeywordEncoder(), TAXONOMY)
    image = 0.8 * concept("shoe") + 0.6 * concept("red")  # unit length
    result = tag_vector(image, TAXONOMY, vectors)
    p_category = softmax([0.0, 8.0, 0.0])  # cos with bag is 0 (no shared axis), shoe 0.8
    p_colour = softmax([6.0, 0.0, 0.0])
    assert result.category == "shoe"
    assert result.category_score == round(float(p_category[1]), 4) == 0.9993
    assert result.tags == {"colour:red": round(float(p_colour[0]), 4)}  # material: 0.5 < 0.6
    assert result.probabilities["material"] == {"leather": 0.5, "cotton": 0.5}
    assert result.probability("colour", "blue") == round(float(p_colour[1]), 4)


def with_colour(**changes) -> Taxonomy:
    data = TAXONOMY.model_dump()
    data["facets"]["colour"].update(changes)
    return Taxonomy.model_validate(data)


def test_labels_just_above_the_threshold_are_kept_and_just_below_are_not():
    vectors = compute_label_vectors(KeywordEncoder(), TAXONOMY)
    image = concept("red", "blue")
    logit = 10 / np.sqrt(2)
    p = float(softmax([logit, logit, 0.0])[0])  # red and blue tie, green far behind
    assert tag_vector(image, with_colour(threshold=p - 1e-9), vectors).tags.keys() == {
        "colour:red",
        "colour:blue",
    }
    assert tag_vector(image, with_colour(threshold=p + 1e-9), vectors).tags == {}
    one = with_colour(max_labels=1)
    assert list(tag_vector(image, one, vectors).tags) == ["colour:red"]  # ties: taxonomy order


def test_category_mismatch_needs_a_confident_other_category_and_a_low_merchant_score():
    vectors = compute_label_vectors(KeywordEncoder(), TAXONOMY)
    shoe = tag_vector(concept("shoe"), TAXONOMY, vectors)
    assert shoe.probability("category", "bag") == round(float(softmax([0, 10, 0])[0]), 4)
    assert category_mismatch(shoe, TAXONOMY, "Handbags", max_score=0.02)  # alias of bag
    assert not category_mismatch(shoe, TAXONOMY, "footwear", max_score=0.02)  # agrees
    assert not category_mismatch(shoe, TAXONOMY, "furniture", max_score=0.02)  # unknown
    assert not category_mismatch(shoe, TAXONOMY, None, max_score=0.02)
    assert not category_mismatch(shoe, TAXONOMY, "bags", max_score=0.0)  # never below 0
    unsure = tag_vector(concept("shoe", "other"), TAXONOMY, vectors)  # shoe and hat tie
    assert unsure.category is None
    assert not category_mismatch(unsure, TAXONOMY, "bags", max_score=0.5)


def test_label_vectors_are_computed_once_per_model_and_taxonomy(tmp_path):
    encoder = KeywordEncoder()
    first = label_vectors(encoder, TAXONOMY, tmp_path)
    assert label_vectors(encoder, TAXONOMY, tmp_path) is first and encoder.text_calls == 1
    [cached] = tmp_path.glob("labels-*.npz")

    tagging._memory.clear()  # a new process: read back from disk, no text embedding
    again = KeywordEncoder()
    from_disk = label_vectors(again, TAXONOMY, tmp_path)
    assert again.text_calls == 0
    for name, (names, matrix) in first.facets.items():
        assert from_disk.facets[name][0] == names
        np.testing.assert_array_equal(from_disk.facets[name][1], matrix)

    other_model = KeywordEncoder("test:keywords-v2:7")
    label_vectors(other_model, TAXONOMY, tmp_path)
    changed = TAXONOMY.model_copy(update={"logit_scale": 20.0})
    assert changed.digest != TAXONOMY.digest
    label_vectors(other_model, changed, tmp_path)
    assert other_model.text_calls == 2 and len(list(tmp_path.glob("labels-*.npz"))) == 3
    assert cached.exists()


def make_items(*specs: tuple[str | None, np.ndarray | None]) -> list[IngestItem]:
    items = []
    for i, (category, vector) in enumerate(specs):
        product = Product(
            product_id=f"p{i}", merchant_id="m", title="t", category=category,
            tags=["Merchant Tag"], images=["/nowhere.jpg"],
        )  # fmt: skip
        items.append(IngestItem(product, 0, vector=vector))
    return items


def auto_tag(encoder: Encoder, tmp_path, **settings) -> AutoTag:
    current = VitrineSettings(home=tmp_path, **settings)
    processor = AutoTag(ProcessorContext(current, lambda: encoder))
    processor.taxonomy = TAXONOMY
    return processor


def test_processor_fills_auto_fields_and_flags_mismatch_but_keeps_merchant_fields(tmp_path):
    items = make_items(("Bags", concept("shoe")), ("shoes", concept("shoe")), (None, None))
    auto_tag(KeywordEncoder(), tmp_path).process_batch(items)
    mismatched, agreed, not_embedded = items
    shoe_score = round(float(softmax([0.0, 10.0, 0.0])[1]), 4)
    assert mismatched.auto_category == "shoe" and mismatched.auto_category_score == shoe_score
    assert mismatched.quality_flags == ["category_mismatch"]
    assert agreed.auto_category == "shoe" and agreed.quality_flags == []
    assert not_embedded.auto_category is None and not_embedded.auto_tags == []
    document = build_document(
        mismatched.product, image_index=0, image_sha256="0" * 64, width=1, height=1,
        vector=concept("shoe"), model_id="test", auto_tags=mismatched.auto_tags,
        quality_flags=mismatched.quality_flags, auto_category=mismatched.auto_category,
        auto_category_score=mismatched.auto_category_score,
        auto_tag_scores=mismatched.auto_tag_scores,
    )  # fmt: skip
    assert document["category"] == "bags" and document["tags"] == ["merchant tag"]
    assert document["auto_category"] == "shoe" and document["auto_category_score"] == shoe_score
    assert document["quality_flags"] == ["category_mismatch"]


def test_processor_writes_tags_with_scores(tmp_path):
    [item] = make_items((None, 0.8 * concept("shoe") + 0.6 * concept("red")))
    auto_tag(KeywordEncoder(), tmp_path).process_batch([item])
    score = round(float(softmax([6.0, 0.0, 0.0])[0]), 4)
    assert item.auto_tags == ["colour:red"] and item.auto_tag_scores == {"colour:red": score}


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (ImageOnlyEncoder(), "embeds images only"),
        (KeywordEncoder(semantic=False), "weights are random"),
    ],
)
def test_skips_cleanly_without_text_tower_or_real_weights(encoder, message, tmp_path, caplog):
    processor = auto_tag(encoder, tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.enrich.auto_tag"):
        for _ in range(2):
            items = make_items(("bags", concept("shoe")))
            processor.process_batch(items)
            assert items[0].ok and items[0].auto_category is None and items[0].quality_flags == []
    [record] = caplog.records  # said once per process, not per batch
    assert message in record.getMessage() and encoder.model_id in record.getMessage()


def test_random_weights_can_be_tagged_on_request(tmp_path):
    items = make_items((None, concept("bag")))
    encoder = KeywordEncoder(semantic=False)
    auto_tag(encoder, tmp_path, auto_tag_on_random_weights=True).process_batch(items)
    assert items[0].auto_category == "bag"


def test_the_shipped_taxonomy_is_valid_and_its_aliases_unambiguous():
    taxonomy = load_taxonomy()
    assert "category" in taxonomy.facets and taxonomy.facets["category"].max_labels == 1
    names: dict[str, str] = {}
    for label, spec in taxonomy.facets["category"].labels.items():
        for alias in [label, *spec.aliases]:
            assert names.setdefault(alias, label) == label, alias
            assert taxonomy.category_label(alias.upper()) == label
    assert taxonomy.category_label("Shoes") == "shoe"
    assert taxonomy.category_label("spaceships") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"templates": ["no placeholder"]}, "exactly one"),
        ({"labels": {"Red": ["red"], "blue": ["blue"]}}, "lower case"),
        ({"max_labels": 2}, "max_labels must be 1"),
    ],
)
def test_invalid_taxonomies_are_refused(change, message):
    data = TAXONOMY.model_dump()
    data["facets"]["category"].update(change)
    with pytest.raises(ValueError, match=message):
        Taxonomy.model_validate(data)
