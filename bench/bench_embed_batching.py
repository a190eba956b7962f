"""Encoder throughput: one image per forward pass (baseline) vs batched forward passes.

Why: the worker's batch task embeds several products in one pass; this says what that buys.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import harness
from pipeline.dev.samples import product_image
from pipeline.encoders.open_clip_encoder import (
    OpenClipEncoder,
    create_random_checkpoint,
    resolve_weights,
)
from pipeline.settings import VitrineSettings


def throughput(encoder: OpenClipEncoder, images: list, batch_size: int, repeats: int) -> float:
    encoder.batch_size = batch_size
    encoder.embed_images(images[:batch_size])  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.embed_images(images)
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = min(args.images, 16), 1

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = create_random_checkpoint(args.arch, Path(tmp) / "random.pt")
        settings = VitrineSettings(model_arch=args.arch, model_pretrained=str(checkpoint))
        encoder = OpenClipEncoder(args.arch, resolve_weights(settings), device="cpu", batch_size=1)
    images = [product_image("shoes", "red", seed) for seed in range(args.images)]
    print(f"{args.arch}, random weights, CPU fp32, torch threads={torch.get_num_threads()}, "
          f"{args.images} images, best of {args.repeats}")  # fmt: skip
    baseline = throughput(encoder, images, 1, args.repeats)
    print(f"  batch  1: {baseline:6.1f} img/s  (baseline)")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        rate = throughput(encoder, images, batch_size, args.repeats)
        print(f"  batch {batch_size:2d}: {rate:6.1f} img/s  x{rate / baseline:.2f} vs batch 1")


if __name__ == "__main__":
    main(sys.argv[1:])
