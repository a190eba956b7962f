"""A synthetic sample catalogue: simple drawn product photos plus metadata, deterministic.

No product-photo data set ships in any package these machines can install, so the bundled
demo catalogue (``samples/catalogue``) is drawn with Pillow. ``vitrine samples`` regenerates it.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

COLOURS = {
    "red": (200, 30, 40),
    "blue": (30, 70, 190),
    "green": (40, 150, 60),
    "black": (25, 25, 25),
    "yellow": (235, 200, 30),
}
CATEGORIES = {  # category: (noun, base price)
    "shoes": ("sneaker", 79.0),
    "bags": ("tote bag", 49.0),
    "shirts": ("t-shirt", 24.0),
    "mugs": ("mug", 12.0),
    "hats": ("cap", 19.0),
}
MERCHANTS = ["acme-outfitters", "nordwind-store"]
SIZE = 320


def _draw_product(draw: ImageDraw.ImageDraw, category: str, colour: tuple[int, int, int]) -> None:
    s = SIZE
    if category == "shoes":
        draw.polygon([(40, 200), (120, 150), (200, 160), (280, 210), (280, 240), (40, 240)], colour)
        draw.rectangle([40, 240, 280, 255], fill=(240, 240, 240), outline=(60, 60, 60))
        for x in range(130, 200, 18):
            draw.line([(x, 165), (x + 10, 185)], fill=(250, 250, 250), width=3)
    elif category == "bags":
        draw.rectangle([70, 120, 250, 270], fill=colour)
        draw.arc([110, 50, 210, 170], 180, 360, fill=(60, 40, 20), width=8)
    elif category == "shirts":
        draw.polygon(
            [(100, 60), (140, 50), (180, 50), (220, 60), (280, 110), (250, 140), (225, 125),
             (225, 270), (95, 270), (95, 125), (70, 140), (40, 110)],
            colour,
        )  # fmt: skip
    elif category == "mugs":
        draw.rectangle([90, 100, 210, 250], fill=colour)
        draw.ellipse([195, 130, 260, 210], outline=colour, width=14)
    elif category == "hats":
        draw.pieslice([70, 90, 250, 270], 180, 360, fill=colour)
        draw.rectangle([150, 175, s - 40, 190], fill=colour)


def product_image(category: str, colour: str, seed: int) -> Image.Image:
    """A 320×320 product photo: a drawn item on a light, slightly noisy studio background."""
    rng = random.Random(seed)
    background = tuple(235 + rng.randint(-8, 8) for _ in range(3))
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    _draw_product(draw, category, COLOURS[colour])
    for _ in range(60):  # texture so that every product photo is distinct
        x, y = rng.randrange(SIZE), rng.randrange(SIZE)
        shade = tuple(max(0, c - rng.randint(5, 25)) for c in background)
        draw.point((x, y), fill=shade)
    return image.filter(ImageFilter.SMOOTH)


def write_sample_catalogue(directory: Path) -> Path:
    """Write ``images/*.jpg`` and ``catalogue.csv`` (25 products); returns the CSV path."""
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for c_index, (category, (noun, price)) in enumerate(CATEGORIES.items()):
        for k_index, colour in enumerate(COLOURS):
            seed = c_index * 10 + k_index
            product_id = f"{category[:-1]}-{colour}"
            filename = f"{product_id}.jpg"
            product_image(category, colour, seed).save(images / filename, quality=90)
            rows.append(
                {
                    "product_id": product_id,
                    "merchant_id": MERCHANTS[seed % len(MERCHANTS)],
                    "title": f"{colour.capitalize()} {noun}",
                    "description": f"A {colour} {noun} from the Vitrine sample catalogue.",
                    "category": category,
                    "tags": "|".join([colour, "sale" if seed % 3 == 0 else "new"]),
                    "price": round(price + 5 * k_index, 2),
                    "currency": "EUR",
                    "in_stock": "true" if seed % 4 else "false",
                    "image": f"images/{filename}",
                }
            )
    path = directory / "catalogue.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
