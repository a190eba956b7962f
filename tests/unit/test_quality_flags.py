"""Each quality flag on images made for it, the text-box area, and the processors that feed
them: image_quality, ocr (the real RapidOCR models) and phash."""

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pipeline.dev.samples import product_image
from pipeline.documents import Product
from pipeline.images import load_image
from pipeline.ingest.enrich import quality
from pipeline.ingest.enrich.quality import QualityThresholds, measure, quality_flags, text_area
from pipeline.ingest.processors import (
    IngestItem,
    ProcessorChain,
    ProcessorContext,
    TextBox,
    load_processor,
)
from pipeline.settings import VitrineSettings

SETTINGS = VitrineSettings()
THRESHOLDS = QualityThresholds.from_settings(SETTINGS)


def scene(size=(400, 400), seed=0) -> Image.Image:
    """Sharp shapes and stripes on a light background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (235, 232, 228))
    draw = ImageDraw.Draw(image)
    w, h = size
    for i in range(4):
        colour = tuple(int(c) for c in rng.integers(20, 200, 3))
        box = [w * i // 5, h // 6 + 10 * i, w * i // 5 + w // 3, h // 6 + 10 * i + h // 2]
        draw.rectangle(box, fill=colour)
        for x in range(box[0], box[2], 9):
            draw.line([(x, box[1]), (x, box[3])], fill=tuple(c // 2 for c in colour), width=2)
    return image


def flags(image: Image.Image, boxes=()) -> list[str]:
    return quality_flags(measure(image, boxes), THRESHOLDS)


def tone(image: Image.Image, fn) -> Image.Image:
    values = np.asarray(image, dtype=np.float32) / 255
    return Image.fromarray((np.clip(fn(values), 0, 1) * 255).astype(np.uint8))


def test_a_sharp_well_exposed_image_and_the_demo_products_get_no_flags():
    assert flags(scene()) == []
    for category in ("shoes", "bags", "mugs"):
        for colour in ("black", "yellow"):  # dark or bright items on a light background
            assert flags(product_image(category, colour, 1)) == [], (category, colour)


def test_low_resolution_and_extreme_aspect_ratio():
    assert flags(scene((200, 200))) == ["low_resolution"]  # default min_image_side 256
    assert flags(scene((300, 256))) == []
    assert flags(scene((1200, 300))) == ["extreme_aspect_ratio"]  # 4:1
    assert flags(scene((300, 900))) == []  # 3:1 is allowed
    assert flags(scene((100, 400))) == ["low_resolution", "extreme_aspect_ratio"]


@pytest.mark.parametrize("grey", [0, 128, 255])
def test_blank_images_get_only_the_blank_flag(grey):
    rng = np.random.default_rng(grey)
    ramp = np.linspace(-8, 8, 500)[None, :, None]  # a gentle gradient is not content
    pixels = np.clip(grey + ramp + rng.normal(0, 2, (400, 500, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse([100, 100, 112, 112], fill=(90, 60, 40))  # a speck
    assert flags(image) == ["blank"]  # not also too dark, overexposed or blurry


@pytest.mark.parametrize(("radius", "blurry"), [(0, False), (1, False), (5, True), (12, True)])
def test_blur_is_judged_relative_to_the_image_size(radius, blurry):
    for side in (400, 1600):  # the same picture and relative blur at four times the size
        image = scene().resize((side, side), Image.Resampling.NEAREST)
        image = image.filter(ImageFilter.GaussianBlur(radius * side / 400))
        assert (quality.BLURRY in flags(image)) is blurry, (radius, side)


def test_blur_ratio_grows_with_the_radius():
    grey = np.asarray(scene().convert("L"), dtype=np.float32) / 255
    ratios = [
        quality.blur_ratio(
            np.asarray(scene().filter(ImageFilter.GaussianBlur(r)).convert("L"), np.float32) / 255
        )
        for r in (0, 2, 4, 8)
    ]
    assert ratios == sorted(ratios) and ratios[0] == quality.blur_ratio(grey)
    assert quality.blur_ratio(np.zeros((50, 50), np.float32)) == 1.0


def test_too_dark_and_overexposed():
    assert flags(tone(scene(), lambda v: v * 0.15)) == ["too_dark"]
    assert flags(tone(scene(), lambda v: 1 - (1 - v) * 0.2)) == ["overexposed"]
    assert flags(tone(scene(), lambda v: v * 0.6)) == []  # dim is not too dark


def test_text_area_and_text_overlay():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert text_area([square], 100, 100) == pytest.approx(0.01)
    assert text_area([square, [[0, 0], [10, 0], [0, 10]]], 100, 100) == pytest.approx(0.015)
    assert text_area([[[0, 0], [1000, 0], [1000, 1000], [0, 1000]]], 10, 10) == 1.0
    image = scene()  # 400 x 400: 0.3% is 480 px^2
    assert flags(image, [[[0, 0], [40, 0], [40, 12], [0, 12]]]) == ["text_overlay"]
    assert flags(image, [[[0, 0], [20, 0], [20, 12], [0, 12]]]) == []


def item_for(tmp_path, image: Image.Image, name="p") -> IngestItem:
    path = tmp_path / f"{name}.png"
    image.save(path)
    product = Product(product_id=name, merchant_id="m", title="t", images=[str(path)])
    return IngestItem(product, 0)


def run(names, items, **settings):
    context = ProcessorContext(VitrineSettings(**settings), lambda: None)  # type: ignore[arg-type,return-value]
    for name in names:
        load_processor(name)(context).process_batch(items)


def test_image_quality_processor_uses_the_ocr_boxes(tmp_path):
    plain, boxed = item_for(tmp_path, scene(), "a"), item_for(tmp_path, scene(), "b")
    run(["decode_image"], [plain, boxed])
    boxed.text_boxes = [TextBox("SALE", 0.9, [[0, 0], [100, 0], [100, 30], [0, 30]])]
    run(["image_quality"], [plain, boxed])
    assert plain.quality_flags == [] and boxed.quality_flags == ["text_overlay"]


def test_ocr_reads_rendered_text_into_image_text_and_flags_it(tmp_path):
    image = scene((640, 480))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 400, 640, 470], fill=(255, 255, 255))
    draw.text((20, 410), "SUMMER SALE 50% OFF", font=ImageFont.load_default(size=44), fill="black")
    texty, plain = item_for(tmp_path, image, "t"), item_for(tmp_path, scene((640, 480)), "p")
    run(["decode_image", "ocr", "image_quality"], [texty, plain])
    assert texty.image_text is not None  # Pillow's own font: word gaps are sometimes lost
    assert all(word in texty.image_text for word in ("SUMMER", "SALE", "OFF"))
    assert texty.quality_flags == ["text_overlay"]
    [line] = texty.text_boxes
    assert line.score > 0.8 and 390 <= min(y for _, y in line.points) <= 420
    assert plain.image_text is None and plain.text_boxes == [] and plain.quality_flags == []


def test_phash_is_hex_and_close_for_near_duplicates(tmp_path):
    original = scene((400, 400), seed=1)
    resized = original.resize((300, 300)).filter(ImageFilter.GaussianBlur(0.5))
    items = [item_for(tmp_path, img, n) for n, img in [("a", original), ("b", resized)]]
    items.append(item_for(tmp_path, scene((400, 400), seed=2).rotate(90), "c"))
    run(["decode_image", "phash"], items)
    hashes = [int(item.phash, 16) for item in items]
    assert all(len(item.phash) == 16 for item in items)
    assert bin(hashes[0] ^ hashes[1]).count("1") <= 4
    assert bin(hashes[0] ^ hashes[2]).count("1") > 10
    assert items[0].phash == str(imagehash.phash(load_image(items[0].source).image))


def test_default_chain_runs_quality_and_phash_but_not_ocr():
    assert SETTINGS.processors == [
        "decode_image",
        "image_quality",
        "phash",
        "embed_image",
        "auto_tag",
        "visual_cluster",
    ]
    context = ProcessorContext(SETTINGS, lambda: None)  # type: ignore[arg-type,return-value]
    names = [p.name for p in ProcessorChain(SETTINGS.processors, context).processors]
    assert "ocr" not in names
