"""The plugin contract: only configured plugins load, broken ones fail with one clear line,
encoder output is checked, processors write only the fields they declare, options reach the
encoder (and its cache key)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from pipeline.documents import Product, build_document
from pipeline.encoders import (
    IMAGE,
    Encoder,
    EncoderError,
    EncoderOutputInvalid,
    TextNotSupported,
    available_encoders,
    cache_key,
    check_vectors,
    create_encoder,
    l2_normalise,
    load_factory,
)
from pipeline.ingest.ingestor import check_plugins
from pipeline.ingest.processors import (
    IngestItem,
    Processor,
    ProcessorChain,
    ProcessorContext,
    available_processors,
)
from pipeline.plugins import PluginError
from pipeline.settings import VitrineSettings
from tests.broken_plugin import write_broken_distribution


@pytest.fixture
def broken(tmp_path, monkeypatch):
    """The broken plugin distribution, installed for this test."""
    root = write_broken_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    return root


class RowsEncoder(Encoder):
    """Image-only; returns whatever rows it is given (to test the output checks)."""

    model_id = "test:rows:3"
    dim = 3
    capabilities = frozenset({IMAGE})

    def __init__(self, rows: np.ndarray | None = None):
        self.rows = rows

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.rows is not None:
            return self.rows
        return l2_normalise(np.ones((len(images), 3), dtype=np.float32))


# ---------------------------------------------------------------- loading


def test_listing_plugins_imports_none_of_them(broken):
    assert {"open_clip", "broken_missing", "broken_import"} <= set(available_encoders())
    assert {"decode_image", "embed_image", "broken_missing"} <= set(available_processors())
    assert "broken_vitrine_plugin" not in sys.modules


def test_broken_plugins_do_not_break_the_default_path(broken, tmp_path):
    assert callable(load_factory("open_clip"))
    check_plugins(VitrineSettings())  # default processors and encoder
    items = _items(tmp_path, 2)
    _chain(RowsEncoder()).run(items)
    assert all(item.ok and item.vector is not None for item in items)


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("broken_missing", "ModuleNotFoundError: No module named 'no_such_module_for_vitrine'"),
        ("broken_import", "ImportError: this plugin needs libfoo 9, which is not installed"),
    ],
)
def test_a_chosen_broken_encoder_fails_with_one_line_naming_it(broken, name, cause):
    with pytest.raises(EncoderError) as info:
        create_encoder(VitrineSettings(encoder=name))
    message = str(info.value)
    assert f"vitrine.encoders plugin '{name}'" in message and "broken-vitrine-plugin" in message
    assert message.endswith(cause) and "\n" not in message


def test_encoders_that_break_the_contract_are_refused(broken):
    with pytest.raises(EncoderError, match="'not_callable' .* is broken: it is not callable"):
        create_encoder(VitrineSettings(encoder="not_callable"))
    with pytest.raises(EncoderError, match="factory returned str, not an Encoder"):
        create_encoder(VitrineSettings(encoder="wrong_type"))
    with pytest.raises(EncoderError, match="declares 'text' but does not implement embed_texts"):
        create_encoder(VitrineSettings(encoder="text_without_tower"))


def test_a_chosen_broken_processor_fails_naming_every_broken_one(broken):
    names = ["decode_image", "broken_missing", "not_a_processor", "embed_image"]
    with pytest.raises(PluginError) as info:
        _chain(RowsEncoder(), names)
    message = str(info.value)
    assert "vitrine.processors plugin 'broken_missing'" in message
    assert "'not_a_processor'" in message and "not a Processor subclass" in message


def test_a_processor_may_not_claim_vitrines_fields(broken):
    with pytest.raises(PluginError, match="'clashing'.*declares field 'title', owned by Vitrine"):
        _chain(RowsEncoder(), ["decode_image", "clashing", "embed_image"])


def test_worker_refuses_to_start_with_a_broken_plugin_in_one_line(broken):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker"],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(broken), os.getcwd()]),
            "VITRINE_ENCODER": "broken_import",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: vitrine.encoders plugin 'broken_import'")
    assert "libfoo 9" in lines[0]


# ---------------------------------------------------------------- encoder output


def test_check_vectors_accepts_unit_rows_and_names_bad_ones():
    good = l2_normalise(np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]]))
    assert check_vectors(good, 2, 3, "m").dtype == np.float32
    with pytest.raises(EncoderOutputInvalid, match=r"shape \(2, 4\), expected \(2, 3\)") as info:
        check_vectors(np.zeros((2, 4)), 2, 3, "m")
    assert info.value.rows == {}
    with pytest.raises(EncoderOutputInvalid, match="no array"):
        check_vectors([[1.0], "x"], 2, 1, "m")
    bad = good.copy()
    bad[0, 0] = np.nan
    bad[1] *= 2
    with pytest.raises(EncoderOutputInvalid) as info:
        check_vectors(bad, 2, 3, "m")
    assert info.value.reason == "encoder_output_invalid"
    assert info.value.rows == {0: "non-finite values", 1: "L2 norm 2, expected 1"}


def test_invalid_vectors_fail_only_their_own_products(tmp_path):
    rows = l2_normalise(np.eye(3, dtype=np.float32))
    rows[1] = [np.inf, 0, 0]
    items = _items(tmp_path, 3)
    _chain(RowsEncoder(rows)).run(items)
    assert [item.ok for item in items] == [True, False, True]
    assert items[1].error is not None and items[1].error.reason == "encoder_output_invalid"
    assert "test:rows:3" in items[1].error.message and items[1].vector is None


def test_output_of_the_wrong_shape_fails_the_whole_batch(tmp_path):
    items = _items(tmp_path, 2)
    _chain(RowsEncoder(np.ones((1, 3), dtype=np.float32))).run(items)
    assert [item.error.reason for item in items if item.error] == ["encoder_output_invalid"] * 2


def test_encode_methods_check_output_and_capabilities(broken):
    encoder = create_encoder(VitrineSettings(encoder="bad_output"))
    with pytest.raises(EncoderOutputInvalid, match="L2 norm 6"):
        encoder.encode_images([Image.new("RGB", (8, 8))])
    assert not encoder.supports_text
    with pytest.raises(TextNotSupported, match="images only") as info:
        encoder.encode_texts(["a red shoe"])
    assert info.value.reason == "text_not_supported"


# ---------------------------------------------------------------- processor fields


class Brightness(Processor):
    name = "brightness"
    fields = {"x_brightness": {"type": "float"}}

    def process(self, item: IngestItem) -> None:
        assert item.image is not None
        item.extra["x_brightness"] = float(np.asarray(item.image.image).mean() / 255)


class Sloppy(Brightness):
    def process(self, item: IngestItem) -> None:
        item.extra["undeclared"] = 1


def test_processor_fields_are_declared_and_reach_the_document(tmp_path):
    chain = _chain(RowsEncoder())
    chain.processors.insert(1, Brightness(chain.processors[0].context))
    chain.field_mappings.update(Brightness.fields)
    items = _items(tmp_path, 1)
    chain.run(items)
    assert items[0].ok and items[0].extra == {"x_brightness": pytest.approx(20 / 255)}
    item = items[0]
    assert item.image is not None and item.vector is not None
    doc = build_document(
        item.product,
        image_index=0,
        image_sha256=item.image.sha256,
        width=8,
        height=8,
        vector=item.vector,
        model_id="m",
        extra={**item.extra, "title": "never overrides Vitrine's fields"},
    )
    assert doc["x_brightness"] == item.extra["x_brightness"] and doc["title"] == "t"


def test_an_undeclared_field_fails_the_item(tmp_path):
    chain = _chain(RowsEncoder())
    chain.processors.insert(1, Sloppy(chain.processors[0].context))
    items = _items(tmp_path, 1)
    chain.run(items)
    assert items[0].error is not None and items[0].error.reason == "processor_output_invalid"
    assert "undeclared" in items[0].error.message


# ---------------------------------------------------------------- encoder options


def test_encoder_options_from_json_or_one_variable_each(monkeypatch):
    monkeypatch.setenv("VITRINE_ENCODER_OPTIONS", '{"bins": 4, "weights": "/w.pt"}')
    assert VitrineSettings().encoder_options == {"bins": 4, "weights": "/w.pt"}
    monkeypatch.setenv("VITRINE_ENCODER_OPTIONS__BINS", "8")  # one key overrides the JSON's
    assert VitrineSettings().encoder_options == {"bins": "8", "weights": "/w.pt"}
    monkeypatch.delenv("VITRINE_ENCODER_OPTIONS")
    assert VitrineSettings().encoder_options == {"bins": "8"}  # strings: the plugin converts
    monkeypatch.delenv("VITRINE_ENCODER_OPTIONS__BINS")
    settings = VitrineSettings(encoder_options={"bins": 4})
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert VitrineSettings().encoder_options == {"bins": 4}


def test_encoder_cache_key_includes_the_options():
    first = cache_key(VitrineSettings(encoder="x", encoder_options={"bins": 4}))
    assert first == cache_key(VitrineSettings(encoder="x", encoder_options={"bins": 4}))
    assert first != cache_key(VitrineSettings(encoder="x", encoder_options={"bins": 8}))


# ---------------------------------------------------------------- helpers


def _chain(encoder: Encoder, names: Sequence[str] | None = None) -> ProcessorChain:
    settings = VitrineSettings(min_image_side=4)
    return ProcessorChain(names or settings.processors, ProcessorContext(settings, lambda: encoder))


def _items(tmp_path, n: int) -> list[IngestItem]:
    items = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (20, 20, 20)).save(path)
        product = Product(product_id=f"p{i}", merchant_id="m", title="t", images=[str(path)])
        items.append(IngestItem(product, 0))
    return items


# ---------------------------------------------------------------- the demo's encoder


def test_demo_keeps_a_configured_encoder_and_never_resolves_clip_for_it(monkeypatch):
    from pipeline.cli import demo

    def no_clip(settings):
        raise AssertionError("CLIP weights resolved for another encoder")

    monkeypatch.setattr(demo, "resolve_weights", no_clip)
    settings = VitrineSettings(encoder="example_histogram", encoder_options={"bins": 4})
    assert demo._demo_model(settings) is settings


def test_demo_without_clip_weights_prefers_the_offline_image_encoder(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from pipeline.cli import demo

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    chosen = demo._demo_model(VitrineSettings(model_pretrained=str(tmp_path / "none.pt")))
    assert chosen.encoder == "efficientnet_lite0"
