"""The fast ingest path: JPEG draft decoding, batch preprocessing equal to open_clip's, the
stage profile, the chain's decode size and the worker's thread rule."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import profile
from pipeline.encoders.preprocess import ClipPreprocess
from pipeline.es import mappings
from pipeline.images import DecodeSize, decode_image, draft_request
from pipeline.ingest.processors import Processor, ProcessorChain, ProcessorContext
from pipeline.settings import VitrineSettings

CLIP_CFG = {
    "size": (224, 224),
    "mode": "RGB",
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus noise: JPEG-like content, not a flat test card."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([x, y, (x + y) / 2], axis=2) * 200
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def jpeg(img: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "need", "expected"),
    [
        ((640, 480), DecodeSize(short=224), (320, 240)),
        ((640, 480), DecodeSize(short=224, long=256), (320, 240)),
        ((4000, 3000), DecodeSize(short=224), (500, 375)),
        ((640, 480), DecodeSize(short=300), None),
        ((200, 150), DecodeSize(short=224), None),
        ((640, 480), DecodeSize(), (80, 60)),
    ],
)
def test_draft_request_picks_the_largest_reduction_that_meets_the_need(size, need, expected):
    assert draft_request(*size, need) == expected


def test_draft_decoding_keeps_the_original_size_and_hash():
    data = jpeg(photo((640, 480)))
    full = decode_image(data)
    small = decode_image(data, size=DecodeSize(short=224))
    assert small.image.size == (320, 240) and full.image.size == (640, 480)
    assert (small.width, small.height) == (full.width, full.height) == (640, 480)
    assert small.sha256 == full.sha256 == hashlib.sha256(data).hexdigest()
    assert small.image.mode == "RGB"


def test_draft_decoding_of_a_turned_jpeg_reports_the_upright_original_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    loaded = decode_image(jpeg(photo((640, 480)), exif=exif), size=DecodeSize(short=224))
    assert (loaded.width, loaded.height) == (480, 640)
    assert loaded.image.size == (240, 320)


def test_draft_decoding_leaves_other_formats_alone():
    buffer = io.BytesIO()
    photo((640, 480)).save(buffer, "PNG")
    loaded = decode_image(buffer.getvalue(), size=DecodeSize(short=224))
    assert loaded.image.size == (640, 480)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 224), (301, 157), (100, 80)])
def test_batch_preprocess_equals_open_clip_transform(size):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(
        224, is_train=False, mean=CLIP_CFG["mean"], std=CLIP_CFG["std"]
    )
    fast = ClipPreprocess.from_config(CLIP_CFG)
    assert fast is not None
    images = [photo(size, 3), photo(size, 4).convert("L")]
    expected = torch.stack([reference(img) for img in images])
    actual = fast(images)
    assert actual.shape == expected.shape == (2, 3, 224, 224)
    assert float((actual - expected).abs().max()) < 1e-5


def test_batch_preprocess_refuses_transforms_it_does_not_reproduce():
    assert ClipPreprocess.from_config({**CLIP_CFG, "resize_mode": "squash"}) is None
    assert ClipPreprocess.from_config({**CLIP_CFG, "size": (224, 256)}) is None
    assert ClipPreprocess.from_config({**CLIP_CFG, "interpolation": "lanczos"}) is None


def test_stage_timers_record_only_into_an_active_profile():
    with profile.stage("forward", 3):
        pass  # no active profile: nothing to record, no error
    batch = profile.StageProfile(batches=1, products=2)
    with profile.active(batch):
        with profile.stage("forward", 3):
            pass
        profile.record("queue_wait", 0.5, 2)
    assert batch.items == {"forward": 3, "queue_wait": 2}
    assert batch.seconds["queue_wait"] == 0.5
    total = profile.StageProfile()
    total.merge(batch)
    total.merge(batch)
    assert (total.batches, total.products, total.items["forward"]) == (2, 4, 6)
    again = profile.StageProfile.from_dict(total.to_dict())
    assert again.to_dict() == total.to_dict()
    assert list(again.to_dict()["seconds"]) == ["queue_wait", "forward"]  # pipeline order
    assert "4 products in 2 batches" in total.summary()


class SizedEncoder:
    model_id, dim, input_side = "test:sized:3", 3, 224


class WantsPixels(Processor):
    name = "wants_pixels"


def test_the_chain_decodes_as_little_as_its_processors_allow(monkeypatch):
    settings = VitrineSettings()
    context = ProcessorContext(settings, lambda: SizedEncoder())  # type: ignore[arg-type,return-value]
    chain = ProcessorChain(settings.processors, context)
    assert chain.decode_size() == DecodeSize(short=224, long=256)
    chain.processors.append(WantsPixels(context))  # a plugin that says nothing: full images
    assert chain.decode_size() is None


def test_worker_threads_fill_the_cores_without_oversubscribing():
    assert VitrineSettings().for_worker_processes(1, 2).torch_threads == 2
    assert VitrineSettings().for_worker_processes(2, 2).torch_threads == 1
    assert VitrineSettings().for_worker_processes(4, 2).torch_threads == 1
    assert VitrineSettings().for_worker_processes(2, 16).torch_threads == 8
    assert VitrineSettings(torch_threads=3).for_worker_processes(2, 2).torch_threads == 3


def test_worker_forward_passes_leave_the_cores_to_decoding_between_operators():
    assert VitrineSettings().encoder_spin_wait is None  # outside a worker: ONNX Runtime spins
    assert VitrineSettings().for_worker_processes(1, 2).encoder_spin_wait is False
    explicit = VitrineSettings(encoder_spin_wait=True)
    assert explicit.for_worker_processes(1, 2).encoder_spin_wait is True


def test_delete_actions_name_the_concrete_index():
    actions = list(mappings.delete_actions([("shop-x-1", "id1")]))
    assert actions == [{"_op_type": "delete", "_index": "shop-x-1", "_id": "id1"}]
