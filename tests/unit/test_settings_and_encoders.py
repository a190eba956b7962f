from pathlib import Path

import numpy as np
import pytest

from pipeline.encoders import EncoderError, available_encoders, create_encoder, l2_normalise
from pipeline.encoders.open_clip_encoder import (
    WeightsUnavailable,
    checkpoint_identity,
    create_random_checkpoint,
    resolve_weights,
)
from pipeline.settings import VitrineSettings


def test_settings_round_trip_through_environment(monkeypatch):
    settings = VitrineSettings(
        index_alias="shop", es_password="secret", processors=["a", "embed_image"]
    )
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert VitrineSettings() == settings


def test_l2_normalise_handles_zero_vectors():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_open_clip_is_a_registered_encoder_and_unknown_names_fail():
    assert "open_clip" in available_encoders()
    with pytest.raises(EncoderError, match="unknown vitrine.encoders plugin 'nope'; installed: "):
        create_encoder(VitrineSettings(encoder="nope"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return create_random_checkpoint(
        "vitrine-tiny-vit", tmp_path_factory.mktemp("m") / "tiny.pt", seed=3
    )


def test_local_checkpoint_identity_says_random(tiny):
    identity, semantic = checkpoint_identity(tiny)
    assert identity.startswith("random-init-seed3-") and semantic is False
    resolved = resolve_weights(
        VitrineSettings(model_arch="vitrine-tiny-vit", model_pretrained=str(tiny))
    )
    assert resolved.pretrained == str(tiny) and not resolved.semantic


def test_unknown_checkpoint_file_is_identified_by_hash(tmp_path, tiny):
    copy = tmp_path / "weights.pt"
    copy.write_bytes(tiny.read_bytes())
    identity, semantic = checkpoint_identity(copy)
    assert identity.startswith("file-") and semantic is True


def test_weight_resolution_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights(VitrineSettings(model_pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(EncoderError, match="no pretrained tag"):
        resolve_weights(VitrineSettings(model_pretrained="no_such_tag"))
    with pytest.raises(EncoderError, match="unknown open_clip architecture"):
        resolve_weights(VitrineSettings(model_arch="ViT-Nope"))
    with pytest.raises(WeightsUnavailable, match="VITRINE_ALLOW_RANDOM_WEIGHTS"):
        resolve_weights(
            VitrineSettings(model_arch="RN50", model_pretrained="openai", home=tmp_path)
        )


def test_random_fallback_only_when_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    settings = VitrineSettings(
        model_arch="RN50", model_pretrained="openai", allow_random_weights=True, home=tmp_path
    )
    monkeypatch.setattr(
        "pipeline.encoders.open_clip_encoder.create_random_checkpoint",
        lambda arch, path: create_random_checkpoint("vitrine-tiny-vit", path),
    )
    resolved = resolve_weights(settings)
    assert not resolved.semantic and resolved.identity.startswith("random-init-seed0")
    assert Path(resolved.pretrained).parent == tmp_path / "models"


def test_tiny_encoder_embeds_unit_vectors_through_the_checkpoint_path(tiny):
    from PIL import Image

    encoder = create_encoder(
        VitrineSettings(model_arch="vitrine-tiny-vit", model_pretrained=str(tiny))
    )
    images = encoder.embed_images([Image.new("RGB", (50, 70), c) for c in ("red", "blue", "red")])
    texts = encoder.embed_texts(["a red shoe", "a blue bag"])
    assert images.shape == (3, 32) and texts.shape == (2, 32) and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(images[0], images[2], atol=1e-6)
    assert encoder.model_id.startswith(
        "open_clip:vitrine-tiny-vit:random-init-seed3-"
    ) and encoder.model_id.endswith(":32")
    assert not encoder.semantic
