"""The backbone's input: the centre 224 px of the image resized to 256 on its short side."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.models.backbone.preprocess import INPUT_SIZE, RESIZE_SIZE, preprocess
from tests.support.photos import CAT, OTHERS, photo

LEVEL = 1 / 127.5  # one 8-bit step in the [-1, 1] input scale


def resize_then_crop(image: Image.Image) -> np.ndarray:
    """The plain way: resize the whole image (bicubic), then take the centre crop."""
    scale = RESIZE_SIZE / min(image.size)
    width, height = (max(INPUT_SIZE, round(side * scale)) for side in image.size)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - INPUT_SIZE) // 2, (height - INPUT_SIZE) // 2
    crop = np.asarray(resized.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)), dtype=np.float32)
    return (crop / 127.5 - 1.0).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "size",
    [(600, 400), (451, 300), (1200, 500), (256, 256), (224, 224), (100, 60), (700, 3), (5000, 10)],
    ids=lambda size: f"{size[0]}x{size[1]}",
)
def test_landscape_and_square_images_match_resizing_the_whole_image(size: tuple[int, int]) -> None:
    image = photo(OTHERS[0]).resize(size, Image.Resampling.BILINEAR)
    pixels = preprocess(image)
    assert pixels.shape == (3, INPUT_SIZE, INPUT_SIZE) and pixels.dtype == np.float32
    assert np.abs(pixels - resize_then_crop(image)).max() <= LEVEL + 1e-6


@pytest.mark.parametrize("size", [(400, 600), (300, 451), (60, 100), (3, 700)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_portrait_images_differ_only_by_rounding(size: tuple[int, int]) -> None:
    image = photo(CAT).resize(size, Image.Resampling.BILINEAR)
    difference = np.abs(preprocess(image) - resize_then_crop(image))
    assert difference.max() <= 6 * LEVEL and difference.mean() <= 0.5 * LEVEL
