"""ONNX Runtime image towers: export, int8, agreement with torch fp32, selection by a setting,
the cache, and refusal below the agreement bound (tiny random-initialised checkpoint)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from pipeline.encoders import EncoderError, cache_key, create_encoder, prepare
from pipeline.encoders import onnx_runtime as ox
from pipeline.encoders.calibration import agreement_images, calibration_images
from pipeline.settings import VitrineSettings

TINY_ARCH = "vitrine-tiny-vit"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: each variant is exported once, later tests load it."""
    return tmp_path_factory.mktemp("onnx-home")


def settings_for(checkpoint: Path, home: Path, **update: object) -> VitrineSettings:
    return VitrineSettings(
        model_arch=TINY_ARCH, model_pretrained=str(checkpoint), home=home, **update
    )


def images() -> list[Image.Image]:
    return [Image.new("RGB", (90, 70), (30 * i, 200 - 20 * i, 90)) for i in range(5)]


def test_agreement_is_the_row_wise_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    b = np.array([[3.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    result = ox.agreement(a, b)
    assert (result.mean, result.min, result.images) == (0.5, 0.0, 2)


def test_the_fixed_image_sets_are_deterministic_and_disjoint():
    first, again = calibration_images(3), calibration_images(3)
    assert [i.tobytes() for i in first] == [i.tobytes() for i in again]
    held_out = {i.tobytes() for i in agreement_images(3)}
    assert not held_out & {i.tobytes() for i in first}


def test_the_runtime_is_a_validated_setting(monkeypatch):
    monkeypatch.setenv("VITRINE_ENCODER_RUNTIME", "onnx-int8")
    assert VitrineSettings().encoder_runtime == "onnx-int8"
    with pytest.raises(ValidationError):
        VitrineSettings(encoder_runtime="tensorrt")
    assert VitrineSettings().model_copy(update={"encoder_runtime": "torch"}) is not None
    keys = {cache_key(VitrineSettings(encoder_runtime=r)) for r in ox.RUNTIMES}
    assert len(keys) == len(ox.RUNTIMES)  # one loaded encoder per runtime, never shared


def test_onnx_fp32_matches_torch_and_has_its_own_model_id(tiny_checkpoint, home):
    torch_encoder = create_encoder(settings_for(tiny_checkpoint, home))
    onnx_encoder = create_encoder(settings_for(tiny_checkpoint, home, encoder_runtime="onnx"))
    assert onnx_encoder.model_id == torch_encoder.model_id + ":onnx"
    assert onnx_encoder.agreement is not None and onnx_encoder.agreement.mean > 0.9999
    expected = torch_encoder.encode_images(images())
    got = onnx_encoder.encode_images(images())
    assert got.shape == expected.shape
    assert np.min(np.sum(got * expected, axis=1)) > 0.9999
    # text stays in torch: same tower, same vectors
    np.testing.assert_allclose(
        onnx_encoder.encode_texts(["a red mug"]),
        torch_encoder.encode_texts(["a red mug"]),
        atol=1e-6,
    )
    assert list(Path(home, "models", "onnx").glob("*/onnx.onnx"))


def test_onnx_int8_measures_its_agreement(tiny_checkpoint, home):
    encoder = create_encoder(
        settings_for(tiny_checkpoint, home, encoder_runtime="onnx-int8", encoder_min_agreement=0)
    )
    assert encoder.model_id.endswith(f":onnx-{ox.DEFAULT_INT8.name}")  # the recipe changes vectors
    assert encoder.agreement is not None and encoder.agreement.images == ox.AGREEMENT_IMAGES
    assert 0 < encoder.agreement.min <= encoder.agreement.mean < 1
    vectors = encoder.encode_images(images())  # checked: finite unit rows
    assert vectors.shape == (5, encoder.dim)


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_the_default_int8_recipe_keeps_convolutions_in_fp32(tmp_path):
    """ONNX Runtime's dynamic ``ConvInteger`` is slower than its fp32 convolution."""
    convnet = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4)
    )
    ox.export(convnet, tmp_path / "fp32.onnx", torch.randn(2, 3, 8, 8))
    default, all_ops = tmp_path / "default.onnx", tmp_path / "all-ops.onnx"
    ox.quantise(tmp_path / "fp32.onnx", default, ox.DEFAULT_INT8, np.empty(0))
    ox.quantise(
        tmp_path / "fp32.onnx", all_ops, replace(ox.DEFAULT_INT8, convolutions=True), np.empty(0)
    )
    assert {"Conv", "MatMulInteger"} <= op_types(default) and "ConvInteger" not in op_types(default)
    assert "ConvInteger" in op_types(all_ops)


def test_a_vit_tower_is_exported_as_matrix_products_all_in_int8(tiny_checkpoint, home):
    create_encoder(
        settings_for(tiny_checkpoint, home, encoder_runtime="onnx-int8", encoder_min_agreement=0)
    )
    (int8,) = Path(home, "models", "onnx").glob(f"*/{ox.DEFAULT_INT8.name}.onnx")
    ops = op_types(int8)
    assert "MatMulInteger" in ops and not {"Conv", "ConvInteger"} & ops


def test_a_variant_below_the_bound_is_refused_in_one_line(tiny_checkpoint, home):
    strict = settings_for(
        tiny_checkpoint, home, encoder_runtime="onnx-int8", encoder_min_agreement=1.0
    )
    with pytest.raises(ox.AgreementTooLow) as info:
        create_encoder(strict)
    message = str(info.value)
    assert "\n" not in message
    assert "refused" in message and "encoder_min_agreement=1.0" in message


def test_the_export_is_cached_and_not_rebuilt(tiny_checkpoint, home, monkeypatch):
    settings = settings_for(tiny_checkpoint, home, encoder_runtime="onnx")
    create_encoder(settings)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(ox, "export", no_export)
    assert create_encoder(settings).model_id.endswith(":onnx")


def test_onnx_runs_on_the_cpu_only(tiny_checkpoint, home):
    settings = settings_for(tiny_checkpoint, home, encoder_runtime="onnx", device="cuda")
    with pytest.raises(EncoderError, match="runs on the CPU"):
        ox.RuntimeOptions.from_settings(settings)


def test_a_worker_session_sleeps_between_operators_and_gives_the_same_vectors(
    tiny_checkpoint, home
):
    settings = settings_for(tiny_checkpoint, home, encoder_runtime="onnx")
    in_worker = settings.for_worker_processes(1, 2)
    spinning, sleeping = create_encoder(settings), create_encoder(in_worker)
    key = "session.intra_op.allow_spinning"  # absent: ONNX Runtime's default, spinning
    with pytest.raises(RuntimeError, match="does not have configuration"):
        spinning.runtime.session.get_session_options().get_session_config_entry(key)
    assert sleeping.runtime.session.get_session_options().get_session_config_entry(key) == "0"
    np.testing.assert_allclose(
        spinning.encode_images(images()), sleeping.encode_images(images()), atol=1e-6
    )


def test_prepare_builds_in_a_child_and_passes_a_refusal_on(tiny_checkpoint, home):
    """What ``vitrine worker`` does before forking its pool."""
    settings = settings_for(tiny_checkpoint, home, encoder_runtime="onnx-int8")
    prepare(settings)
    assert list(Path(home, "models", "onnx").glob("*/int8-*.json"))
    with pytest.raises(ox.AgreementTooLow, match="refused"):
        prepare(settings.model_copy(update={"encoder_min_agreement": 1.0}))
