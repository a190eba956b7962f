"""Near-duplicate matching: precision and recall of the default thresholds on a generated set.

Why: ``duplicate_group`` drives price comparison (offers) and catalogue clean-up; a wrong merge
shows another product as "the same item", a miss hides an offer. The set: distinct originals
(crops of scikit-image photos, sample-catalogue drawings with random prints, random textures),
each with five copies (resized, recompressed, slightly cropped, colour-shifted, re-backgrounded)
and one distinct look-alike (a neighbouring crop, the same drawing with another print, the same
texture generator with another seed). The images are ingested in shuffled batches through
``pipeline.ingest.duplicates.assign_groups`` (the ingest code), with exact brute-force nearest
neighbours standing in for Elasticsearch's kNN. Precision and recall are over pairs of images:
a pair is predicted when both land in one group, true when both come from one original.
Encoder: EfficientNet-Lite0 with its real ImageNet weights (offline-image extra), the default
thresholds' reference; random-weight CLIP would say little about real similarity.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from bench import harness
from pipeline.dev.samples import CATEGORIES, COLOURS, product_image
from pipeline.ingest.duplicates import MatchRule, NewImage, assign_groups
from pipeline.settings import VitrineSettings

SIZE = 320
COPIES = ("resized", "recompressed", "cropped", "colour_shifted", "rebackgrounded")


@dataclass
class Sample:
    item: int  # the original it shows (look-alikes are items of their own)
    kind: str  # original, a copy kind, or lookalike
    image: Image.Image


# --------------------------------------------------------------------------- originals


PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
    "immunohistochemistry", "coins", "moon", "clock", "grass", "gravel", "brick", "cell",
)  # fmt: skip


def _photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Intersection over the smaller of two square crops ``(x, y, side)``."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(0, w) * max(0, h) / min(a[2], b[2]) ** 2


def photo_crops(rng: random.Random, n: int) -> list[tuple[Image.Image, Image.Image]]:
    """``(original, look-alike)``: a crop and the neighbouring crop half a side away; crops of
    different originals overlap by at most a tenth."""
    photos = _photos()
    taken: dict[int, list[tuple[int, int, int]]] = {}
    pairs: list[tuple[Image.Image, Image.Image]] = []
    for _ in range(200 * n):
        if len(pairs) == n:
            break
        index = rng.randrange(len(photos))
        photo = photos[index]
        w, h = photo.size
        side = rng.randint(min(w, h) // 5, min(w, h) // 3)
        x, y = rng.randint(0, w - side), rng.randint(0, h - side)
        step = side // 2
        near = next(
            (
                (x + dx, y + dy, side)
                for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step))
                if 0 <= x + dx <= w - side and 0 <= y + dy <= h - side
            ),
            None,
        )
        crop = (x, y, side)
        if near is None or any(
            _overlap(c, old) > 0.1 for c in (crop, near) for old in taken.get(index, [])
        ):
            continue
        taken.setdefault(index, []).extend([crop, near])
        pairs.append(tuple(  # type: ignore[arg-type]
            photo.crop((cx, cy, cx + s, cy + s)).resize((SIZE, SIZE), Image.LANCZOS)
            for cx, cy, s in (crop, near)
        ))  # fmt: skip
    if len(pairs) < n:
        raise RuntimeError(f"only {len(pairs)} non-overlapping photo crops for {n}")
    return pairs


def _print(rng: random.Random, size: int) -> Image.Image:
    """A random print: stripes, dots or shapes in random colours."""
    tile = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(tile)
    for _ in range(rng.randint(4, 9)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randint(8, size // 2), y0 + rng.randint(8, size // 2)
        getattr(draw, rng.choice(["rectangle", "ellipse"]))([x0, y0, x1, y1], fill=colour)
    return tile


def drawings(rng: random.Random, n: int) -> list[tuple[Image.Image, Image.Image]]:
    """``(original, look-alike)``: a sample drawing with a print, and with another print."""
    pairs = []
    for index in range(n):
        category = list(CATEGORIES)[index % len(CATEGORIES)]
        colour = list(COLOURS)[(index // len(CATEGORIES)) % len(COLOURS)]
        base = product_image(category, colour, seed=index)
        variants = []
        for _ in range(2):
            image = base.copy()
            image.paste(_print(rng, 90), (115, 150))
            variants.append(image)
        pairs.append((variants[0], variants[1]))
    return pairs


def _texture(rng: np.random.Generator, palette: np.ndarray, smooth: float) -> Image.Image:
    noise = rng.random((SIZE // 8, SIZE // 8))
    small = Image.fromarray((noise * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    grey = np.asarray(small.filter(ImageFilter.GaussianBlur(smooth)), dtype=np.float32) / 255
    rgb = palette[0] * (1 - grey[..., None]) + palette[1] * grey[..., None]
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def textures(rng: random.Random, n: int) -> list[tuple[Image.Image, Image.Image]]:
    """``(original, look-alike)``: smoothed random noise in a random palette, twice."""
    pairs = []
    for _ in range(n):
        palette = np.array([[rng.randrange(256) for _ in range(3)] for _ in range(2)], np.float32)
        smooth = rng.uniform(1, 6)
        first, second = (np.random.default_rng(rng.randrange(2**32)) for _ in range(2))
        pairs.append((_texture(first, palette, smooth), _texture(second, palette, smooth)))
    return pairs


# --------------------------------------------------------------------------- copies


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def copy_of(image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    w, h = image.size
    if kind == "resized":
        scale = rng.choice([0.5, 0.75, 1.6])
        return image.resize((int(w * scale), int(h * scale)), Image.LANCZOS)
    if kind == "recompressed":
        return _jpeg(image, rng.randint(20, 40))
    if kind == "cropped":
        f = rng.uniform(0.04, 0.08)
        left, top = int(w * f * rng.random()), int(h * f * rng.random())
        return image.crop((left, top, left + int(w * (1 - f)), top + int(h * (1 - f))))
    if kind == "colour_shifted":
        shifted = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
        shifted = ImageEnhance.Brightness(shifted).enhance(rng.uniform(0.85, 1.15))
        tint = Image.new("RGB", image.size, tuple(rng.randrange(256) for _ in range(3)))
        return Image.blend(shifted, tint, 0.08)
    if kind == "rebackgrounded":
        margin = int(w * rng.uniform(0.08, 0.15))
        canvas = Image.new("RGB", (w + 2 * margin, h + 2 * margin), _background(rng))
        canvas.paste(image, (margin, margin))
        return canvas
    raise ValueError(kind)


def _background(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]


def build_set(n_originals: int, seed: int = 7) -> list[Sample]:
    rng = random.Random(seed)
    n_photos, n_drawings = n_originals * 3 // 10, n_originals * 3 // 10
    pairs = (
        photo_crops(rng, n_photos)
        + drawings(rng, n_drawings)
        + textures(rng, n_originals - n_photos - n_drawings)
    )
    samples = []
    for item, (original, lookalike) in enumerate(pairs):
        samples.append(Sample(item, "original", original))
        samples += [Sample(item, kind, copy_of(original, kind, rng)) for kind in COPIES]
        samples.append(Sample(len(pairs) + item, "lookalike", lookalike))
    return samples


# --------------------------------------------------------------------------- evaluation


def ingest_groups(
    vectors: np.ndarray, hashes: list[str], rule: MatchRule, *, k: int, batch: int, seed: int
) -> list[str]:
    """Groups as ingest assigns them: shuffled batches, the top-k indexed neighbours each."""
    order = list(range(len(vectors)))
    random.Random(seed).shuffle(order)
    groups: dict[str, str] = {}
    indexed: list[int] = []
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        images = [NewImage(str(i), vectors[i], hashes[i]) for i in chunk]
        candidates = []
        for i in chunk:
            if indexed:
                cosines = vectors[indexed] @ vectors[i]
                top = np.argsort(-cosines)[:k]
                candidates.append(
                    [_candidate(indexed[j], float(cosines[j]), hashes, groups) for j in top]
                )
            else:
                candidates.append([])
        groups.update(assign_groups(images, candidates, {}, rule).groups)
        indexed += chunk
    return [groups[str(i)] for i in range(len(vectors))]


def _candidate(index: int, cosine: float, hashes: list[str], groups: dict[str, str]):
    from pipeline.ingest.duplicates import Candidate

    return Candidate(str(index), groups[str(index)], hashes[index], cosine)


def pair_scores(items: list[int], groups: list[str]) -> tuple[float, float]:
    """Pairwise precision and recall of ``groups`` against the true ``items``."""
    true_pairs = predicted = correct = 0
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    for members in by_group.values():
        predicted += len(members) * (len(members) - 1) // 2
        counts: dict[int, int] = {}
        for m in members:
            counts[items[m]] = counts.get(items[m], 0) + 1
        correct += sum(c * (c - 1) // 2 for c in counts.values())
    sizes: dict[int, int] = {}
    for item in items:
        sizes[item] = sizes.get(item, 0) + 1
    true_pairs = sum(c * (c - 1) // 2 for c in sizes.values())
    return (correct / predicted if predicted else 1.0), (
        correct / true_pairs if true_pairs else 1.0
    )


def kind_recall(samples: list[Sample], groups: list[str]) -> dict[str, float]:
    """Share of each copy kind in its original's group; for look-alikes, share kept apart."""
    original_group = {s.item: groups[i] for i, s in enumerate(samples) if s.kind == "original"}
    n = len(original_group)
    result = {}
    for kind in COPIES:
        hits = sum(
            groups[i] == original_group[s.item] for i, s in enumerate(samples) if s.kind == kind
        )
        result[kind] = hits / n
    apart = sum(
        groups[i] != original_group[s.item - n]
        for i, s in enumerate(samples)
        if s.kind == "lookalike"
    )
    result["lookalike_kept_apart"] = apart / n
    return result


def embed(samples: list[Sample]) -> np.ndarray:
    from pipeline.encoders.efficientnet_encoder import EfficientNetLite0Encoder

    encoder = EfficientNetLite0Encoder.from_settings(VitrineSettings(batch_size=32))
    return encoder.embed_images([s.image for s in samples])


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--originals", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16, help="images per ingest batch")
    args = parser.parse_args(argv)
    if args.quick:
        args.originals = min(args.originals, 100)
    settings = VitrineSettings()
    default = MatchRule.from_settings(settings)
    started = time.perf_counter()
    samples = build_set(args.originals)
    hashes = [str(imagehash.phash(s.image)) for s in samples]
    vectors = embed(samples)
    took = time.perf_counter() - started
    items = [s.item for s in samples]
    rules: dict[str, MatchRule] = {
        "default (cosine and phash, or sure cosine)": default,
        f"phash only (<= {default.max_phash_distance} bits)": MatchRule(
            -1.0, default.max_phash_distance, 2.0
        ),
        f"cosine only (>= {default.sure_cosine})": MatchRule(2.0, 0, default.sure_cosine),
        f"cosine only (>= {default.min_cosine})": MatchRule(2.0, 0, default.min_cosine),
    }
    report = harness.Report(
        name="bench_duplicates",
        title=f"Near-duplicate groups, {args.originals} originals, {len(samples)} images",
        columns=["rule", "precision", "recall"],
    )
    per_kind: dict[str, dict[str, float]] = {}
    k = settings.duplicate_candidates
    for name, rule in rules.items():
        groups = ingest_groups(vectors, hashes, rule, k=k, batch=args.batch, seed=11)
        precision, recall = pair_scores(items, groups)
        report.add(name, round(precision, 4), round(recall, 4))
        per_kind[name] = kind_recall(samples, groups)
    default_kinds = per_kind[next(iter(rules))]
    report.note(
        f"defaults: min_cosine {default.min_cosine}, max_phash_distance "
        f"{default.max_phash_distance}, sure_cosine {default.sure_cosine}; k={k} neighbours, "
        f"ingest batches of {args.batch}; encoder EfficientNet-Lite0 (ImageNet weights)"
    )
    report.note(
        "default rule, share of copies grouped with their original: "
        + ", ".join(f"{kind} {value:.3f}" for kind, value in default_kinds.items())
    )
    report.note(f"set built, hashed and embedded in {took:.0f} s")
    report.data = {"per_kind": per_kind}

    def plot(ax: Callable) -> None:
        names = [row[0].split(" (")[0] + "\n(" + row[0].split(" (")[1] for row in report.rows]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [row[1] for row in report.rows], 0.4, label="precision")
        ax.bar(x + 0.2, [row[2] for row in report.rows], 0.4, label="recall")
        ax.axhline(0.95, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(x, names, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.legend()

    report.save(args.results_dir, plot)


if __name__ == "__main__":
    main()
