"""Test data for integration tests: distinct product images and products written to disk."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.documents import Product


def pattern_image(seed: int, size: int = 96) -> Image.Image:
    """A blocky random colour pattern: far apart from other seeds even for a random model."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def write_image(directory: Path, seed: int, *, fmt: str = "JPEG", size: int = 96) -> Path:
    path = directory / f"img-{seed}-{uuid.uuid4().hex[:6]}.{fmt.lower()}"
    pattern_image(seed, size).save(path, format=fmt, quality=95)
    return path


def make_product(directory: Path, seed: int, *, prefix: str, **fields) -> Product:
    """A product with a distinct image; ``fields`` override the metadata."""
    data = {
        "product_id": f"{prefix}-{seed}",
        "merchant_id": "merchant-a",
        "title": f"Product {seed}",
        "description": f"Test product number {seed}",
        "category": "shoes",
        "tags": ["test"],
        "price": 10.0 + seed,
        "currency": "EUR",
        "in_stock": True,
        "images": [str(write_image(directory, seed))],
    }
    data.update(fields)
    return Product.model_validate(data)


def unique_prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}"
