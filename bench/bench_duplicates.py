"""Near-duplicate matching: precision and recall of the default thresholds on a generated set.

Why: ``duplicate_group`` drives price comparison (offers) and catalogue clean-up; a wrong merge
shows another product as "the same item", a miss hides an offer. The set: distinct originals
(crops of scikit-image photos, sample-catalogue drawings with random prints, random textures),
each with a copy (by default one; the kinds in turn: resized, recompressed, slightly cropped,
colour-shifted, re-backgrounded) and, for half of them, a distinct look-alike (a neighbouring
crop, the same drawing with another print, the same texture generator with another seed). The
images are ingested in shuffled batches through ``pipeline.ingest.duplicates.assign_groups``
(the ingest code), with exact brute-force nearest neighbours standing in for Elasticsearch's kNN.
Precision and recall are over pairs of images: a pair is predicted when both land in one group,
true when both come from one original.
Encoder: EfficientNet-Lite0 with its real ImageNet weights (offline-image extra), the default
thresholds' reference; random-weight CLIP would say little about real similarity.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from bench import harness
from pipeline.dev.samples import CATEGORIES, COLOURS, product_image
from pipeline.images import Fingerprint
from pipeline.ingest.duplicates import Candidate, MatchRule, NewImage, assign_groups, same_hash
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


def _cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    product = image.convert("RGBA")
    product.putalpha(mask)
    return product


def _centred(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized to ``side`` in the middle of a transparent product layer."""
    layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    offset = (SIZE - side) // 2
    layer.paste(image.convert("RGBA").resize((side, side), Image.LANCZOS), (offset, offset))
    return layer


def photo_crops(rng: random.Random, n: int) -> list[tuple[Image.Image, Image.Image]]:
    """``(original, look-alike)`` products: a photo crop and the neighbouring crop half a side
    away; crops of different originals overlap by at most a tenth."""
    photos = _photos()
    taken: dict[int, list[tuple[int, int, int]]] = {}
    pairs: list[tuple[Image.Image, Image.Image]] = []
    for _ in range(200 * n):
        if len(pairs) == n:
            break
        index = rng.randrange(len(photos))
        photo = photos[index]
        w, h = photo.size
        side = rng.randint(min(w, h) // 6, min(w, h) // 4)
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
        shown = rng.randint(200, 260)
        pairs.append(tuple(  # type: ignore[arg-type]
            _centred(photo.crop((cx, cy, cx + s, cy + s)), shown) for cx, cy, s in (crop, near)
        ))  # fmt: skip
    if len(pairs) < n:
        raise RuntimeError(f"only {len(pairs)} non-overlapping photo crops for {n}")
    return pairs


def _print(rng: random.Random, size: int) -> Image.Image:
    """A random print: rectangles and ellipses in random colours on a random ground."""
    tile = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(tile)
    for _ in range(rng.randint(5, 10)):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randint(10, size // 2), y0 + rng.randint(10, size // 2)
        getattr(draw, rng.choice(["rectangle", "ellipse"]))([x0, y0, x1, y1], fill=_colour(rng))
    return tile


def drawings(rng: random.Random, n: int) -> list[tuple[Image.Image, Image.Image]]:
    """``(original, look-alike)`` products: a sample-catalogue drawing with a large print, and
    the same drawing with another print."""
    pairs = []
    for index in range(n):
        category = list(CATEGORIES)[index % len(CATEGORIES)]
        colour = list(COLOURS)[(index // len(CATEGORIES)) % len(COLOURS)]
        base = product_image(category, colour, seed=index)
        ground = np.asarray(base, dtype=np.int16)[:4, :4].reshape(-1, 3).mean(0)
        differs = np.abs(np.asarray(base, dtype=np.int16) - ground).sum(-1) > 40
        variants = []
        for _ in range(2):
            image = base.copy()
            mask = Image.fromarray((differs * 255).astype(np.uint8))
            x, y = rng.randint(70, 110), rng.randint(90, 130)
            image.paste(_print(rng, 140), (x, y))
            mask.paste(255, (x, y, x + 140, y + 140))
            variants.append(_cutout(image, mask))
        pairs.append((variants[0], variants[1]))
    return pairs


def _texture(rng: np.random.Generator, palette: np.ndarray, smooth: float) -> Image.Image:
    noise = rng.random((SIZE // 8, SIZE // 8))
    small = Image.fromarray((noise * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    grey = np.asarray(small.filter(ImageFilter.GaussianBlur(smooth)), dtype=np.float32) / 255
    rgb = palette[0] * (1 - grey[..., None]) + palette[1] * grey[..., None]
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def textures(rng: random.Random, n: int) -> list[tuple[Image.Image, Image.Image]]:
    """``(original, look-alike)`` products: a shape (cushion, rug, swatch) in a random
    smoothed-noise fabric, and the same shape and palette with another noise."""
    pairs = []
    for _ in range(n):
        palette = np.array([_colour(rng), _colour(rng)], np.float32)
        smooth = rng.uniform(1, 6)
        mask = Image.new("L", (SIZE, SIZE), 0)
        w, h = rng.randint(160, 280), rng.randint(160, 280)
        box = ((SIZE - w) // 2, (SIZE - h) // 2, (SIZE + w) // 2, (SIZE + h) // 2)
        shape = rng.choice(["ellipse", "rounded_rectangle", "rectangle"])
        getattr(ImageDraw.Draw(mask), shape)(box, fill=255)
        fabrics = [_texture(np.random.default_rng(rng.randrange(2**32)), palette, smooth)
                   for _ in range(2)]  # fmt: skip
        pairs.append((_cutout(fabrics[0], mask), _cutout(fabrics[1], mask)))
    return pairs


# --------------------------------------------------------------------------- copies


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _studio(rng: random.Random) -> tuple[int, int, int]:
    """A plain photo background: light, sometimes tinted."""
    base = rng.randint(200, 250)
    return (base + rng.randint(-12, 5), base + rng.randint(-12, 5), base + rng.randint(-12, 5))


def on(product: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    canvas = Image.new("RGBA", product.size, (*background, 255))
    return Image.alpha_composite(canvas, product).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def copy_of(product: Image.Image, image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """A copy of ``image`` (``product`` on a background) as another shop might show it."""
    w, h = image.size
    if kind == "resized":
        scale = rng.choice([0.5, 0.75, 1.6])
        return image.resize((int(w * scale), int(h * scale)), Image.LANCZOS)
    if kind == "recompressed":
        return _jpeg(image, rng.randint(25, 45))
    if kind == "cropped":
        f = rng.uniform(0.04, 0.08)
        left, top = int(w * f * rng.random()), int(h * f * rng.random())
        return image.crop((left, top, left + int(w * (1 - f)), top + int(h * (1 - f))))
    if kind == "colour_shifted":
        shifted = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 1.25))
        shifted = ImageEnhance.Brightness(shifted).enhance(rng.uniform(0.88, 1.12))
        return Image.blend(shifted, Image.new("RGB", image.size, _colour(rng)), 0.06)
    if kind == "rebackgrounded":
        return on(product, _studio(rng))
    raise ValueError(kind)


def build_set(
    n_originals: int, *, copies: int = 1, lookalike_share: float = 0.5, seed: int = 7
) -> list[Sample]:
    """Originals, ``copies`` copies of each (kinds in turn) and look-alikes of a share."""
    rng = random.Random(seed)
    n_photos, n_drawings = n_originals * 3 // 10, n_originals * 3 // 10
    pairs = (
        photo_crops(rng, n_photos)
        + drawings(rng, n_drawings)
        + textures(rng, n_originals - n_photos - n_drawings)
    )
    rng.shuffle(pairs)
    samples = []
    for item, (product, lookalike) in enumerate(pairs):
        background = _studio(rng)
        original = on(product, background)
        samples.append(Sample(item, "original", original))
        for c in range(copies):
            kind = COPIES[(item + 2 * c) % len(COPIES)]
            samples.append(Sample(item, kind, copy_of(product, original, kind, rng)))
        if item < lookalike_share * len(pairs):
            samples.append(Sample(len(pairs) + item, "lookalike", on(lookalike, background)))
    return samples


# --------------------------------------------------------------------------- evaluation


def ingest_groups(
    vectors: np.ndarray,
    prints: list[Fingerprint],
    rule: MatchRule,
    *,
    fingerprints: bool,
    bands: bool,
    k: int,
    batch: int,
    seed: int,
) -> list[str]:
    """Groups as ingest assigns them: shuffled batches; for each image the top-k indexed
    neighbours and, with ``bands``, the top-k by cosine of the indexed images sharing a band of
    its whole-image hash, kept within ``max_phash_distance`` bits (``match_searches``).
    ``fingerprints`` False: compare as documents from before fingerprints (whole-image phash)."""
    hashes = [f"{p.whole:016x}" for p in prints]
    shown: list[Fingerprint | None] = list(prints) if fingerprints else [None] * len(prints)
    keys = [set(p.bands()) for p in prints]
    order = list(range(len(vectors)))
    random.Random(seed).shuffle(order)
    groups: dict[str, str] = {}
    indexed: list[int] = []
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        images = [NewImage(str(i), vectors[i], hashes[i], shown[i]) for i in chunk]
        candidates = []
        for image, i in zip(images, chunk, strict=True):
            cosines = vectors[indexed] @ vectors[i]
            found = [
                Candidate(str(d), groups[str(d)], hashes[d], float(c), shown[d])
                for d, c in zip(indexed, cosines, strict=True)
            ]
            by_cosine = [found[j] for j in np.argsort(-cosines)]
            banded = [c for c in by_cosine if keys[int(c.doc_id)] & keys[i]][:k] if bands else []
            candidates.append(
                by_cosine[:k] + [c for c in banded if same_hash(image, c, rule.max_phash_distance)]
            )
        groups.update(assign_groups(images, candidates, {}, rule).groups)
        indexed += chunk
    return [groups[str(i)] for i in range(len(vectors))]


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
    n = sum(s.kind == "original" for s in samples)
    original_group = {s.item: groups[i] for i, s in enumerate(samples) if s.kind == "original"}
    together: dict[str, list[bool]] = {}
    for i, s in enumerate(samples):
        if s.kind in COPIES:
            together.setdefault(s.kind, []).append(groups[i] == original_group[s.item])
        elif s.kind == "lookalike":
            together.setdefault("lookalike_kept_apart", []).append(
                groups[i] != original_group[s.item - n]
            )
    return {kind: sum(v) / len(v) for kind, v in together.items()}


def embed(samples: list[Sample]) -> np.ndarray:
    from pipeline.encoders.efficientnet_encoder import EfficientNetLite0Encoder

    encoder = EfficientNetLite0Encoder.from_settings(VitrineSettings(batch_size=32))
    return encoder.embed_images([s.image for s in samples])


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--originals", type=int, default=500)
    parser.add_argument("--copies", type=int, default=1, help="copies per original (kinds in turn)")
    parser.add_argument("--batch", type=int, default=16, help="images per ingest batch")
    parser.add_argument("--seed", type=int, default=11, help="seed of the ingest order")
    args = parser.parse_args(argv)
    if args.quick:
        args.originals = min(args.originals, 100)
    settings = VitrineSettings()
    default = MatchRule.from_settings(settings)
    started = time.perf_counter()
    samples = build_set(args.originals, copies=args.copies)
    prints = [Fingerprint.of(s.image) for s in samples]
    vectors = embed(samples)
    took = time.perf_counter() - started
    items = [s.item for s in samples]
    bits, colour = default.max_phash_distance, default.min_colour_correlation
    rules: dict[str, tuple[MatchRule, bool, bool]] = {  # rule, fingerprints, hash-band look-up
        "default (cosine and fingerprint, or sure cosine)": (default, True, True),
        "default without the hash-band look-up (kNN candidates only)": (default, True, False),
        "fingerprint only (no cosine)": (MatchRule(-1.0, bits, 2.0, colour), True, True),
        "before fingerprints (cosine >= 0.7 and whole phash <= 8, or cosine >= 0.99)": (
            MatchRule(0.7, 8, 0.99, colour),
            False,
            False,
        ),
        f"whole-image phash only (<= {bits} bits)": (
            MatchRule(-1.0, bits, 2.0, colour),
            False,
            False,
        ),
        "cosine only (>= 0.99)": (MatchRule(2.0, 0, 0.99, colour), False, False),
    }
    report = harness.Report(
        name="bench_duplicates",
        title=f"Near-duplicate groups, {args.originals} originals, {len(samples)} images",
        columns=["rule", "precision", "recall"],
    )
    per_kind: dict[str, dict[str, float]] = {}
    k = settings.duplicate_candidates
    for name, (rule, fingerprints, bands) in rules.items():
        groups = ingest_groups(
            vectors,
            prints,
            rule,
            fingerprints=fingerprints,
            bands=bands,
            k=k,
            batch=args.batch,
            seed=args.seed,
        )
        precision, recall = pair_scores(items, groups)
        report.add(name, round(precision, 4), round(recall, 4))
        per_kind[name] = kind_recall(samples, groups)
    orders = [
        pair_scores(
            items,
            ingest_groups(
                vectors, prints, default, fingerprints=True, bands=True, k=k, batch=args.batch,
                seed=args.seed + i,
            ),
        )
        for i in range(5)
    ]  # fmt: skip
    report.note(
        "default rule over 5 ingest orders (seeds "
        f"{args.seed}-{args.seed + 4}): precision mean {np.mean([p for p, _ in orders]):.3f} "
        f"(min {min(p for p, _ in orders):.3f}), recall mean {np.mean([r for _, r in orders]):.3f}"
        f" (min {min(r for _, r in orders):.3f})"
    )
    report.data["orders"] = orders
    default_kinds = per_kind[next(iter(rules))]
    report.note(
        f"defaults: min_cosine {default.min_cosine}, max_phash_distance {bits} (best-aligned "
        f"window), min_colour_correlation {colour}, sure_cosine {default.sure_cosine}; close "
        f"colours: {default.close_colour}; same picture: {default.same_picture}; an image joins "
        f"a group when it matches most members compared; k={k} neighbours (and k of the same "
        f"hash band), ingest batches of {args.batch} in shuffled order (seed {args.seed}); "
        "encoder EfficientNet-Lite0 (ImageNet weights)"
    )
    report.note(
        "default rule, share of copies grouped with their original: "
        + ", ".join(f"{kind} {value:.3f}" for kind, value in default_kinds.items())
    )
    report.note(f"set built, hashed and embedded in {took:.0f} s")
    report.data["per_kind"] = per_kind

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
