"""CLIP encoders from open_clip, with explicit weight resolution.

Weights come from, in order: a local checkpoint path, the Hugging Face hub cache, a download
(unless ``HF_HUB_OFFLINE`` is set), and, only when the settings allow it, a locally generated
random-initialised checkpoint whose ``model_id`` says ``random-init`` so nobody mistakes its
results for semantics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from pipeline.encoders import IMAGE, TEXT, Encoder, EncoderError, l2_normalise, onnx_runtime
from pipeline.encoders.preprocess import ClipPreprocess
from pipeline.profile import stage
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


def _open_clip() -> ModuleType:
    """Import open_clip with Vitrine's extra model configs (e.g. the tiny test model) added."""
    import open_clip

    if "vitrine-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


@dataclass(frozen=True)
class ResolvedWeights:
    pretrained: str  # what open_clip gets: a file path
    identity: str  # weights part of model_id
    semantic: bool


class WeightsUnavailable(EncoderError):
    pass


def checkpoint_identity(path: Path) -> tuple[str, bool]:
    """Identity of a local checkpoint: its sidecar metadata if we made it, else its hash."""
    sidecar = path.with_suffix(path.suffix + ".json")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        return f"{meta['weights']}-{meta['sha256'][:12]}", bool(meta.get("semantic", False))
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
    return f"file-{digest.hexdigest()[:12]}", True


def create_random_checkpoint(arch: str, path: Path, *, seed: int = 0) -> Path:
    """Save a random-initialised model as a checkpoint (tests, offline demos).

    Loaded back through ``pretrained=<path>``, the same code path as real weights.
    """
    open_clip = _open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    with tmp.open("rb") as fh:
        sha = hashlib.file_digest(fh, "sha256").hexdigest()
    tmp.rename(path)
    meta = {"weights": f"random-init-seed{seed}", "sha256": sha, "semantic": False, "arch": arch}
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=2))
    log.info("saved random-initialised %s checkpoint to %s", arch, path)
    return path


def _cached_hub_weights(arch: str, tag: str) -> str | None:
    """Path of already-downloaded pretrained weights, without touching the network."""
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors"]
        names.append("open_clip_pytorch_model.bin")
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
    url = cfg.get("url", "")
    if url:
        candidate = Path.home() / ".cache" / "clip" / os.path.basename(url)
        if candidate.exists():
            return str(candidate)
    return None


def resolve_weights(settings: VitrineSettings) -> ResolvedWeights:
    open_clip = _open_clip()
    arch, pretrained = settings.model_arch, settings.model_pretrained
    if arch not in open_clip.list_models():
        raise EncoderError(f"unknown open_clip architecture {arch!r}")
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".bin", ".safetensors", ".pth") or path.exists():
        if not path.exists():
            raise WeightsUnavailable(f"checkpoint {path} does not exist")
        identity, semantic = checkpoint_identity(path)
        return ResolvedWeights(str(path), identity, semantic)
    if not open_clip.get_pretrained_cfg(arch, pretrained):
        tags = ", ".join(t for a, t in open_clip.list_pretrained() if a == arch)
        raise EncoderError(f"no pretrained tag {pretrained!r} for {arch}; known: {tags}")
    found = _cached_hub_weights(arch, pretrained)
    if found is None:
        found = _download(arch, pretrained, settings)
    if found is not None:
        return ResolvedWeights(found, pretrained, True)
    if not settings.allow_random_weights:
        raise WeightsUnavailable(
            f"pretrained weights {arch}/{pretrained} are not in the hub cache and cannot be "
            "downloaded; mount them and set VITRINE_MODEL_PRETRAINED=/path/to/checkpoint, or set "
            "VITRINE_ALLOW_RANDOM_WEIGHTS=true for a mechanics-only random model"
        )
    log.warning(
        "REAL CLIP WEIGHTS UNAVAILABLE for %s/%s: using a random-initialised checkpoint. "
        "Vectors are deterministic but carry no meaning; only exact and near-duplicate "
        "image matches are meaningful.",
        arch,
        pretrained,
    )
    random_path = settings.models_dir / f"{arch}-random-init-seed0.pt"
    if not random_path.exists():
        create_random_checkpoint(arch, random_path)
    identity, semantic = checkpoint_identity(random_path)
    return ResolvedWeights(str(random_path), identity, semantic)


def _download(arch: str, tag: str, settings: VitrineSettings) -> str | None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        log.info("HF_HUB_OFFLINE is set: not downloading %s/%s", arch, tag)
        return None
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:  # the hub client retries for ~50 s when offline; a failed name look-up answers at once
        socket.getaddrinfo(host, 443)
    except OSError:
        log.warning("model hub %s cannot be resolved: not downloading %s/%s", host, arch, tag)
        return None
    open_clip = _open_clip()
    try:
        return open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, tag)) or None
    except Exception as exc:  # network, hub or disk: all mean "not available here"
        log.warning("could not download %s/%s: %s", arch, tag, exc)
        return None


class OpenClipEncoder(Encoder):
    capabilities = frozenset({IMAGE, TEXT})

    def __init__(
        self,
        arch: str,
        weights: ResolvedWeights,
        *,
        device: str,
        batch_size: int,
        runtime: onnx_runtime.RuntimeOptions | None = None,
    ):
        open_clip = _open_clip()
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights.pretrained, device=device
        )
        self.model.eval()
        # The batch preprocessing equal to self.preprocess, when the model's transform allows.
        self.batch_preprocess = ClipPreprocess.from_config(
            getattr(self.model.visual, "preprocess_cfg", {})
        )
        if self.batch_preprocess is not None:
            self.input_side = self.batch_preprocess.size
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = device
        self.batch_size = batch_size
        self.dim = int(open_clip.get_model_config(arch)["embed_dim"])
        self.semantic = weights.semantic
        self.model_id = f"open_clip:{arch}:{weights.identity}:{self.dim}"
        self.export_key = onnx_runtime.cache_key(
            f"{arch}-{weights.identity}", self.model.visual.image_size
        )
        self.runtime: onnx_runtime.OnnxTower | None = None
        self.agreement: onnx_runtime.Agreement | None = None  # the runtime's, to torch fp32
        if runtime is not None:  # the image tower runs in ONNX Runtime; text stays in torch
            self.runtime, self.agreement = onnx_runtime.load(
                self.model.visual, self.pixels, self.export_key, runtime
            )
            self.model.visual = torch.nn.Identity()  # frees the torch copy of the image tower
            self.model_id += f":{runtime.model_tag}"
        log.info("loaded encoder %s on %s", self.model_id, device)

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The image tower's input: ``(n, 3, h, w)`` float32, preprocessed."""
        return self.preprocess_images(images).numpy()

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> OpenClipEncoder:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        weights = resolve_weights(settings)
        return cls(
            settings.model_arch,
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
            with stage("preprocess", len(chunk)):
                batch = self.preprocess_images(chunk).to(self.device)
            with stage("forward", len(chunk)):
                out[start : start + len(chunk)] = self._forward(batch)
        return l2_normalise(out)

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input tensor for a batch of images."""
        if self.batch_preprocess is not None:
            return self.batch_preprocess(images)
        return torch.stack([self.preprocess(img) for img in images])

    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        if self.runtime is not None:
            return self.runtime(batch.numpy())
        return self.model.encode_image(batch).float().cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            tokens = self.tokenizer(chunk).to(self.device)
            out[start : start + len(chunk)] = self.model.encode_text(tokens).float().cpu().numpy()
        return l2_normalise(out)
