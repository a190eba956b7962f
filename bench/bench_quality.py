"""Quality flags and OCR on a generated image set, and what the enrichment processors cost.

1. Precision and recall of every quality flag on >= 300 generated images with known defects:
   sharp vs Gaussian-blurred at several radii, tiny, blank, dark, overexposed, extreme aspect,
   with and without rendered text or watermarks. Sources: real photos shipped in scikit-image
   (a dev dependency; skipped when absent) and drawn product scenes. The images go
   through the real processors (``decode_image``, ``ocr``, ``image_quality``) from files.
2. OCR character accuracy (1 - character error rate) on clean rendered text lines.
3. Ingest throughput of processor chains in the same run: embed only, the default chain, and
   the default chain with ``ocr``; random-initialised weights (FLOPs, not semantics).

Writes ``bench_quality.json`` in ``--results-dir`` (``bench/results/`` by default).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bench import harness
from pipeline.dev.samples import CATEGORIES, product_image
from pipeline.documents import Product
from pipeline.ingest.enrich import quality
from pipeline.ingest.processors import (
    IngestItem,
    ProcessorChain,
    ProcessorContext,
    load_processor,
)
from pipeline.settings import VitrineSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIDE = 640
FLAGS = [
    quality.LOW_RESOLUTION, quality.EXTREME_ASPECT, quality.BLANK, quality.BLURRY,
    quality.TOO_DARK, quality.OVEREXPOSED, quality.TEXT_OVERLAY,
]  # fmt: skip
PHOTOS = [  # scikit-image sample photos without text or intentional blur
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "camera",
    "brick",
    "grass",
    "gravel",
    "coins",
    "moon",
    "retina",
]  # fmt: skip (no night-sky photos: mostly black by nature, they are "too dark" by any measure)
WORDS = [
    "SALE", "NEW", "Free shipping", "50% OFF", "Limited", "Organic cotton", "Summer 2026",
    "Best price", "Nordwind Store", "ACME", "Only today", "Size XL", "Made in Portugal",
    "Premium quality", "Order now", "Gift idea", "Eco friendly", "Handmade", "Top seller",
]  # fmt: skip


@dataclass
class Case:
    name: str
    image: Image.Image
    truth: set[str]


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def photos() -> list[Image.Image]:
    try:
        import skimage.data
    except ImportError:
        print("scikit-image not installed: drawn scenes only (pip install -e .[dev])")
        return []
    out = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        if max(image.size) > SIDE:  # only ever downscale: upscaling would blur
            image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
        out.append(image)
    return out


def scene(seed: int, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    """A drawn product shot: light studio background, a few sharp-edged shapes and stripes."""
    rng = random.Random(seed)
    w, h = size
    background = tuple(rng.randint(215, 250) for _ in range(3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 4)):
        colour = tuple(rng.randint(20, 200) for _ in range(3))
        x0, y0 = rng.randint(0, w // 2), rng.randint(0, h // 2)
        box = [x0, y0, x0 + rng.randint(w // 5, w // 2), y0 + rng.randint(h // 5, h // 2)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        for x in range(box[0], box[2], rng.randint(8, 20)):  # stripes: fine detail
            draw.line([(x, box[1]), (x, box[3])], fill=tuple(c // 2 for c in colour), width=2)
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 2.0, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def blurred(image: Image.Image, radius_at_640: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius_at_640 * max(image.size) / SIDE))


def tone(image: Image.Image, fn: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    values = np.asarray(image, dtype=np.float32) / 255.0
    return Image.fromarray((np.clip(fn(values), 0, 1) * 255).round().astype(np.uint8))


def blank(rng: random.Random, seed: int) -> Image.Image:
    w, h = rng.choice([(640, 640), (800, 600), (500, 700)])
    colour = np.array([rng.choice([0, 30, 128, 200, 245, 255])] * 3, dtype=np.float32)
    colour += np.array([rng.randint(-10, 10) for _ in range(3)])
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(0, 12)  # gentle gradient
    noise = np.random.default_rng(seed).normal(0, rng.uniform(0, 3), (h, w, 3))
    image = Image.fromarray(np.clip(colour + ramp + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:  # a speck well under 1% of the image
        x, y = rng.randint(0, w - 30), rng.randint(0, h - 30)
        ImageDraw.Draw(image).ellipse([x, y, x + 20, y + 20], fill=(90, 60, 40))
    return image


def with_text(image: Image.Image, rng: random.Random, kind: str) -> Image.Image:
    """Overlay a caption band, a diagonal semi-transparent watermark or a corner mark."""
    image = image.convert("RGBA")
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = image.size
    text = rng.choice(WORDS)
    if kind == "caption":
        size = max(18, h // 14)
        top = rng.choice([int(h * 0.02), int(h * 0.85)])
        draw.rectangle([0, top, w, top + int(size * 1.5)], fill=(255, 255, 255, 220))
        draw.text((w // 20, top + size // 6), text, font=font(size), fill=(20, 20, 20, 255))
    elif kind == "watermark":
        size = max(24, w // 12)
        stamp = Image.new("RGBA", image.size, (0, 0, 0, 0))
        light = np.asarray(image.convert("L")).mean() < 128  # white on dark, dark on light
        ink = (255, 255, 255) if light else (40, 40, 40)
        ImageDraw.Draw(stamp).text((w // 2, h // 2), text, font=font(size), fill=(*ink, 150),
                                   anchor="mm")  # fmt: skip
        layer = stamp.rotate(rng.uniform(-20, 20), center=(w // 2, h // 2))
    else:  # corner
        size = max(16, h // 24)
        x = rng.choice([w // 40, w - int(size * 0.62 * (len(text) + 2)) - w // 40])
        y = rng.choice([h // 40, h - size - h // 30])
        draw.text((x, y), f"© {text}", font=font(size), fill=(250, 250, 250, 230),
                  stroke_width=1, stroke_fill=(30, 30, 30, 230))  # fmt: skip
    return Image.alpha_composite(image, layer).convert("RGB")


def build_cases(seed: int) -> list[Case]:
    rng = random.Random(seed)
    studio = [  # the demo catalogue's product shots: black and yellow items on light grey
        product_image(category, colour, seed)
        for category in CATEGORIES
        for colour in ("black", "yellow")
    ]
    sources = photos() + studio + [scene(seed * 100 + i) for i in range(24)]
    cases: list[Case] = []

    def add(name: str, image: Image.Image, *truth: str) -> None:
        flags = set(truth)
        if min(image.size) < 256:  # the default min_image_side: true by definition
            flags.add(quality.LOW_RESOLUTION)
        if max(image.size) / min(image.size) > 3.0:
            flags.add(quality.EXTREME_ASPECT)
        cases.append(Case(f"{len(cases):03d}-{name}", image, flags))

    for i, src in enumerate(sources):
        add("clean", src)
        add("slight-blur-r1", blurred(src, 1.0))
        add("blur", blurred(src, [4, 6, 9, 14][i % 4]), quality.BLURRY)
        add("blur", blurred(src, [14, 9, 6, 4][i % 4]), quality.BLURRY)
        small = src.copy()
        small.thumbnail((rng.randint(40, 200),) * 2, Image.Resampling.LANCZOS)
        add("tiny", small)
        add("dark", tone(src, lambda v: v * rng.uniform(0.12, 0.25)), quality.TOO_DARK)
        add("bright", tone(src, lambda v: 1 - (1 - v) * rng.uniform(0.15, 0.3)),
            quality.OVEREXPOSED)  # fmt: skip
        kind = ["caption", "watermark", "corner"][i % 3]
        add(f"text-{kind}", with_text(src, rng, kind), quality.TEXT_OVERLAY)
    for i in range(30):
        add("blank", blank(rng, seed + i), quality.BLANK)
    for i in range(30):
        wide = rng.random() < 0.5
        ratio = rng.uniform(3.5, 6)
        long_side, short_side = 1280, int(1280 / ratio)
        size = (long_side, short_side) if wide else (short_side, long_side)
        add("extreme-aspect", scene(seed * 1000 + i, size))
    return cases


def no_encoder():
    raise RuntimeError("the quality processors need no encoder")


def run_processors(names: list[str], items: list[IngestItem], settings: VitrineSettings) -> None:
    context = ProcessorContext(settings, no_encoder)
    for processor in [load_processor(name)(context) for name in names]:
        processor.process_batch(items)


def items_from(images: list[tuple[str, Image.Image]], directory: Path) -> list[IngestItem]:
    items = []
    for name, image in images:
        path = directory / f"{name}.png"
        image.save(path)
        product = Product(product_id=name, merchant_id="bench", title="t", images=[str(path)])
        items.append(IngestItem(product, 0))
    return items


def run_quality(cases: list[Case], settings: VitrineSettings, directory: Path) -> dict:
    items = items_from([(c.name, c.image) for c in cases], directory)
    run_processors(["decode_image", "ocr", "image_quality"], items, settings)
    pairs = [(c.truth, set(i.quality_flags)) for c, i in zip(cases, items, strict=True)]
    per_flag = {}
    for flag in FLAGS:
        tp = sum(1 for truth, got in pairs if flag in truth and flag in got)
        fp = sum(1 for truth, got in pairs if flag not in truth and flag in got)
        fn = sum(1 for truth, got in pairs if flag in truth and flag not in got)
        per_flag[flag] = {
            "positives": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0,
        }  # fmt: skip
    mismatches = [
        {"case": c.name, "truth": sorted(c.truth), "flags": sorted(got)}
        for c, (truth, got) in zip(cases, pairs, strict=True)
        if truth != got
    ]
    return {"images": len(cases), "flags": per_flag, "mismatches": mismatches}


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def run_ocr(settings: VitrineSettings, directory: Path, count: int, seed: int) -> dict:
    """Clean rendered lines: dark text on a light background, one or two lines per image."""
    rng = random.Random(seed)
    images, truths = [], []
    for i in range(count):
        lines = [" ".join(rng.sample(WORDS, 2)) for _ in range(rng.choice([1, 2]))]
        size = rng.randint(22, 44)
        image = Image.new("RGB", (SIDE, 360), tuple(rng.randint(225, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for n, line in enumerate(lines):
            draw.text((30, 60 + n * int(size * 1.8)), line, font=font(size), fill=(15, 15, 15))
        images.append((f"ocr-{i:03d}", image))
        truths.append(" ".join(lines))
    items = items_from(images, directory)
    run_processors(["decode_image", "ocr"], items, settings)
    read = [" ".join((item.image_text or "").split()) for item in items]
    chars = sum(len(t) for t in truths)
    errors = sum(levenshtein(t, r) for t, r in zip(truths, read, strict=True))
    squeeze = [(t.replace(" ", ""), r.replace(" ", "")) for t, r in zip(truths, read, strict=True)]
    errors_ns = sum(levenshtein(t, r) for t, r in squeeze)
    return {
        "images": count,
        "characters": chars,
        "char_accuracy": round(1 - errors / chars, 4),
        "char_accuracy_ignoring_spaces": round(1 - errors_ns / sum(len(t) for t, _ in squeeze), 4),
        "worst": sorted(zip(truths, read, strict=True), key=lambda p: -levenshtein(*p))[:5],
    }


def run_throughput(arch: str, count: int, rounds: int, directory: Path) -> dict:
    """Images per second of each chain over the same files (decode included), interleaved."""
    base = VitrineSettings(
        model_arch=arch, allow_random_weights=True, auto_tag_on_random_weights=True
    )
    from pipeline.encoders import get_encoder

    encoder = get_encoder(base)
    default = list(base.processors)
    chains = {
        "embed_only": ["decode_image", "embed_image"],
        "default": default,
        "default_plus_ocr": ["decode_image", "ocr", *default[1:]],
    }
    images = [(f"tp-{i:03d}", scene(5000 + i)) for i in range(count)]
    paths = items_from(images, directory)
    built = {
        name: ProcessorChain(names, ProcessorContext(base, lambda: encoder))
        for name, names in chains.items()
    }
    for chain in built.values():  # warm-up: models, label vectors, OCR sessions
        chain.run([IngestItem(paths[0].product, 0)])
    rates: dict[str, list[float]] = {name: [] for name in chains}
    cpu: dict[str, dict[str, float]] = {name: {} for name in chains}  # processor -> CPU s
    wall: dict[str, dict[str, float]] = {name: {} for name in chains}  # processor -> wall s
    for _ in range(rounds):
        for name, chain in built.items():
            items = [IngestItem(item.product, 0) for item in paths]
            start = time.perf_counter()
            for batch in range(0, len(items), base.batch_size):
                for processor in chain.processors:
                    before, before_wall = time.process_time(), time.perf_counter()
                    processor.process_batch(items[batch : batch + base.batch_size])
                    spent = time.process_time() - before
                    cpu[name][processor.name] = cpu[name].get(processor.name, 0.0) + spent
                    spent = time.perf_counter() - before_wall
                    wall[name][processor.name] = wall[name].get(processor.name, 0.0) + spent
            rates[name].append(len(items) / (time.perf_counter() - start))
            assert all(item.ok and item.vector is not None for item in items), name
    median = {name: statistics.median(r) for name, r in rates.items()}
    per_image = {  # CPU milliseconds per image: steadier than wall time on a shared machine
        name: {p: round(1000 * s / (count * rounds), 1) for p, s in spent.items()}
        for name, spent in cpu.items()
    }
    cpu_total = {name: sum(ms.values()) for name, ms in per_image.items()}
    wall_per_image = {
        name: {p: round(1000 * s / (count * rounds), 1) for p, s in spent.items()}
        for name, spent in wall.items()
    }
    return {
        "arch": arch,
        "model_id": encoder.model_id,
        "images": count,
        "rounds": rounds,
        "batch_size": base.batch_size,
        "torch_threads": torch_threads(),
        "chains": chains,
        "img_per_s_median": {k: round(v, 2) for k, v in median.items()},
        "img_per_s_all": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "wall_ratio_to_embed_only": {
            k: round(v / median["embed_only"], 3) for k, v in median.items()
        },
        "cpu_ms_per_image": per_image,
        "wall_ms_per_image": wall_per_image,
        "cpu_ms_per_image_total": {k: round(v, 1) for k, v in cpu_total.items()},
        "cpu_ratio_to_embed_only": {
            k: round(v / cpu_total["embed_only"], 3) for k, v in cpu_total.items()
        },
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ocr-images", type=int, default=40)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--throughput-images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.ocr_images, args.skip_throughput = min(args.ocr_images, 10), True
    settings = VitrineSettings()
    results: dict = {
        "command": harness.command(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "thresholds": {k: v for k, v in settings.model_dump().items() if k.startswith("quality_")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cases = build_cases(args.seed)
        results["quality"] = run_quality(cases, settings, Path(tmp))
        print(f"quality flags on {len(cases)} generated images (default thresholds)")
        print(f"  {'flag':<22} {'positives':>9} {'precision':>9} {'recall':>7}")
        for flag, r in results["quality"]["flags"].items():
            print(f"  {flag:<22} {r['positives']:>9} {r['precision']:>9.3f} {r['recall']:>7.3f}")
        results["ocr"] = run_ocr(settings, Path(tmp), args.ocr_images, args.seed)
        ocr = results["ocr"]
        print(f"OCR on {ocr['images']} clean rendered images ({ocr['characters']} characters): "
              f"character accuracy {ocr['char_accuracy']:.3f} "
              f"({ocr['char_accuracy_ignoring_spaces']:.3f} ignoring spaces)")  # fmt: skip
        if not args.skip_throughput:
            tp = run_throughput(args.arch, args.throughput_images, args.rounds, Path(tmp))
            results["throughput"] = tp
            print(
                f"ingest throughput, {tp['model_id']}, {tp['images']} images 640x640, "
                f"batch {tp['batch_size']}, median of {tp['rounds']} interleaved rounds"
            )
            for name, rate in tp["img_per_s_median"].items():
                print(
                    f"  {name:<18} {rate:6.2f} img/s (x{tp['wall_ratio_to_embed_only'][name]:.3f}"
                    f" wall), {tp['cpu_ms_per_image_total'][name]:7.1f} CPU ms/img "
                    f"(x{tp['cpu_ratio_to_embed_only'][name]:.3f} of embed-only)"
                )
            for name, stages in tp["cpu_ms_per_image"].items():
                print(f"  {name:<18} CPU ms/img by processor: {stages}")
            for name, stages in tp["wall_ms_per_image"].items():
                print(f"  {name:<18} wall ms/img by processor: {stages}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / "bench_quality.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
