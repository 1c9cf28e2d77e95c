"""Real photos for tests, from the images scikit-image ships, as encoded bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage import data

CAT = "chelsea"
OTHERS = ("coffee", "rocket", "astronaut", "hubble_deep_field")


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def crops(name: str, count: int, seed: int) -> list[bytes]:
    """Random crops (60-100% of each side), some mirrored, of one photo, as JPEGs."""
    rng = np.random.default_rng(seed)
    image = photo(name)
    width, height = image.size
    out = []
    for _ in range(count):
        scale = rng.uniform(0.6, 1.0)
        w, h = int(width * scale), int(height * scale)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = image.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(encode(crop, quality=90))
    return out
