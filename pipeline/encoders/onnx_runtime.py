"""Image towers run by ONNX Runtime instead of torch: fp32, or int8 through AVX-512 VNNI.

Why: on these CPUs the torch fp32 forward pass is most of ingest's cost; see the embedding
benchmark in README.md for what each variant buys.

Invariants:

- A variant's vectors differ (a little) from torch fp32's, so the variant and its int8 recipe
  are part of the encoder's ``model_id``: vectors of different runtimes or recipes never share
  an index.
- Each variant is exported once per machine and cached under ``<home>/models/onnx/<key>/``,
  keyed by the checkpoint identity (its hash), input size, variant, ONNX Runtime version and
  the graph's form (``GRAPH_FORM``); a file lock lets only one process build it, the others
  wait and load the result.
- When it is built, the variant's agreement with torch fp32 (mean and minimum cosine of the
  vectors of a fixed held-out image set, ``calibration.agreement_images``) is measured and kept
  beside it; every load checks it against ``encoder_min_agreement`` and refuses a variant below
  it with ``AgreementTooLow``, so a quantisation that changes vectors too much never runs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.encoders import EncoderError, l2_normalise
from pipeline.encoders.calibration import agreement_images, calibration_images
from pipeline.encoders.vit_graph import export_form
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)
ORT_VERSION = version("onnxruntime")

TORCH, ONNX, ONNX_INT8 = "torch", "onnx", "onnx-int8"
RUNTIMES = (TORCH, ONNX, ONNX_INT8)
CALIBRATION_IMAGES = 32
AGREEMENT_IMAGES = 32
OPSET = 17
#: Part of the cache key: raised whenever the exported graph's form changes (2: ViT towers as
#: ``vit_graph.export_form``), so that an export of an older form is never quantised again.
GRAPH_FORM = 2

#: Turns PIL images into the tower's ``(n, 3, h, w)`` float32 input.
Preprocess = Callable[[Sequence[Image.Image]], np.ndarray]


class AgreementTooLow(EncoderError):
    """The variant's vectors are too far from torch fp32's (below ``encoder_min_agreement``)."""


@dataclass(frozen=True)
class Int8Recipe:
    """How an fp32 graph becomes int8 (ONNX Runtime's quantisation tool)."""

    static: bool = False  # activation ranges calibrated once (static) or measured per batch
    qdq: bool = True  # QuantizeLinear/DequantizeLinear pairs, else fused QOperator nodes
    per_channel: bool = True  # one weight scale per output channel, else per tensor
    convolutions: bool = True  # convolutions in int8 too, else they stay fp32

    @property
    def name(self) -> str:
        kind = ("static-qdq" if self.qdq else "static-qop") if self.static else "dynamic"
        fp32_conv = "" if self.convolutions else "-fp32conv"
        return f"int8-{kind}-{'pc' if self.per_channel else 'pt'}{fp32_conv}"


#: The recipe behind ``encoder_runtime=onnx-int8`` (chosen by bench/bench_embed.py). Dynamic
#: int8 convolutions run as ``ConvInteger``, slower here than the fp32 convolution: ViT-B-32's
#: patch embedding alone took 22% of the int8 forward pass (42 -> 32 ms an image without it).
DEFAULT_INT8 = Int8Recipe(static=False, per_channel=True, convolutions=False)


@dataclass(frozen=True)
class Agreement:
    """Cosine similarity of a variant's vectors to torch fp32's on the same images."""

    mean: float
    min: float
    images: int


def agreement(reference: np.ndarray, vectors: np.ndarray) -> Agreement:
    """Row-wise cosine of ``vectors`` to ``reference`` (neither needs to be normalised)."""
    cos = np.sum(l2_normalise(reference) * l2_normalise(vectors), axis=1)
    return Agreement(float(cos.mean()), float(cos.min()), len(cos))


@dataclass(frozen=True)
class RuntimeOptions:
    """What the settings say about the runtime; ``None`` from ``from_settings`` means torch."""

    variant: str
    cache_dir: Path
    threads: int | None
    min_agreement: float
    spin: bool = True
    recipe: Int8Recipe | None = None

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> RuntimeOptions | None:
        variant = settings.encoder_runtime
        if variant == TORCH:
            return None
        if settings.device != "cpu":
            raise EncoderError(f"encoder_runtime={variant} runs on the CPU, not {settings.device}")
        return cls(
            variant=variant,
            cache_dir=settings.models_dir / "onnx",
            threads=settings.torch_threads,
            min_agreement=settings.encoder_min_agreement,
            spin=settings.encoder_spin_wait is not False,
            recipe=DEFAULT_INT8 if variant == ONNX_INT8 else None,
        )

    @property
    def file_stem(self) -> str:
        return self.variant if self.recipe is None else self.recipe.name

    @property
    def model_tag(self) -> str:
        """The runtime's part of ``model_id``: the variant, with the int8 recipe that made it."""
        return self.variant if self.recipe is None else f"{ONNX}-{self.recipe.name}"


class OnnxTower:
    """An ONNX Runtime session that maps ``(n, 3, h, w)`` pixels to ``(n, dim)`` features."""

    def __init__(
        self, path: Path, *, threads: int | None = None, optimise: bool = True, spin: bool = True
    ):
        """``spin``: the forward pass's threads busy-wait between operators (see the setting
        ``encoder_spin_wait``)."""
        import onnxruntime as ort  # here: importing it writes a session file into $TMPDIR

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: one per physical core
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimise
            else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        )
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self._input: np.ascontiguousarray(pixels)})
        return np.asarray(features, dtype=np.float32)


def export(module: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
    """Write ``module`` (eval mode) as an fp32 ONNX graph with a dynamic batch dimension."""
    module.eval()
    # Grad mode on: under no_grad, nn.MultiheadAttention takes a fused fast path that has no
    # ONNX equivalent. The legacy (TorchScript) exporter needs no onnxscript and gives graphs
    # that ONNX Runtime's quantiser handles well.
    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


class _Batches:
    """Calibration batches for ``quantize_static`` (its ``CalibrationDataReader`` protocol)."""

    def __init__(self, name: str, pixels: np.ndarray, batch_size: int = 8):
        self._feeds = iter(
            [{name: pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantise(fp32: Path, out: Path, recipe: Int8Recipe, calibration: np.ndarray) -> None:
    """Write the int8 graph of ``fp32`` following ``recipe``."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ops = None if recipe.convolutions else ["MatMul", "Gemm"]  # None: every op it can quantise
    prepared = out.with_name(out.stem + ".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        if recipe.static:
            quantize_static(
                str(prepared),
                str(out),
                _Batches("pixels", calibration),
                quant_format=QuantFormat.QDQ if recipe.qdq else QuantFormat.QOperator,
                per_channel=recipe.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=ops,
            )
        else:
            quantize_dynamic(
                str(prepared),
                str(out),
                per_channel=recipe.per_channel,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=ops,
            )
    finally:
        prepared.unlink(missing_ok=True)


def _reference(module: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(pixels)).float().numpy()


def build(
    module: torch.nn.Module, preprocess: Preprocess, key: str, options: RuntimeOptions
) -> tuple[Path, Agreement]:
    """The cached graph of this variant, built first if missing, and its measured agreement."""
    folder = options.cache_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{options.file_stem}.onnx"
    meta_path = path.with_suffix(".json")
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait, then load
        if not meta_path.exists():
            _build(module, preprocess, folder, path, options)
    meta = json.loads(meta_path.read_text())
    return path, Agreement(**meta["agreement"])


def _build(
    module: torch.nn.Module,
    preprocess: Preprocess,
    folder: Path,
    path: Path,
    options: RuntimeOptions,
) -> None:
    log.info("building ONNX Runtime %s image tower in %s", options.file_stem, folder)
    fp32 = folder / f"{ONNX}.onnx"
    if not fp32.exists():
        sample = torch.from_numpy(preprocess(calibration_images(1)))
        tmp = fp32.with_suffix(f".{os.getpid()}.tmp")
        export(export_form(module), tmp, sample)
        tmp.replace(fp32)
    if options.recipe is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        quantise(fp32, tmp, options.recipe, preprocess(calibration_images(CALIBRATION_IMAGES)))
        tmp.replace(path)
    pixels = preprocess(agreement_images(AGREEMENT_IMAGES))
    measured = agreement(
        _reference(module, pixels), OnnxTower(path, threads=options.threads)(pixels)
    )
    meta: dict[str, Any] = {
        "variant": options.variant,
        "recipe": asdict(options.recipe) if options.recipe else None,
        "onnxruntime": ORT_VERSION,
        "torch": torch.__version__,
        "agreement": asdict(measured),
    }
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path.with_suffix(".json"))


def load(
    module: torch.nn.Module, preprocess: Preprocess, key: str, options: RuntimeOptions
) -> tuple[OnnxTower, Agreement]:
    """The variant's session, refused (``AgreementTooLow``) if it agrees too little with fp32."""
    path, measured = build(module, preprocess, key, options)
    if measured.mean < options.min_agreement:
        raise AgreementTooLow(
            f"encoder_runtime={options.variant} refused: its vectors agree with torch fp32 at "
            f"mean cosine {measured.mean:.4f} (min {measured.min:.4f}, {measured.images} fixed "
            f"images), below encoder_min_agreement={options.min_agreement}; use "
            f"encoder_runtime=onnx or torch"
        )
    log.info(
        "ONNX Runtime %s: mean cosine %.5f (min %.5f) to torch fp32",
        options.file_stem,
        measured.mean,
        measured.min,
    )
    return OnnxTower(path, threads=options.threads, spin=options.spin), measured


def cache_key(identity: str, pixels_shape: Sequence[int]) -> str:
    """Folder name of a checkpoint's exports: its identity, input size, ORT version and the
    graph's form."""
    h, w = pixels_shape[-2:]
    key = f"{identity}-{h}x{w}-ort{ORT_VERSION}-g{GRAPH_FORM}"
    return key.replace(os.sep, "_").replace(":", "_")
