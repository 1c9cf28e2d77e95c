"""The backbone's input: an image resized and centre-cropped to 224 x 224, scaled to [-1, 1]."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.core.process import cpu_pool

INPUT_SIZE = 224
RESIZE_SIZE = 256  # shorter side before the centre crop (timm's crop_pct 0.875)


def preprocess(image: Image.Image) -> np.ndarray:
    """RGB image -> (3, 224, 224) float32 in [-1, 1]: resize the short side to 256 (bicubic), centre crop.

    Only the cropped region is resampled (Pillow's ``box``), in about half the time of resizing
    the whole image and then cropping: the same geometry and filter; Pillow's two 8-bit passes may
    round differently, by a few levels at most on portrait images.
    """
    width, height = image.size
    scale = RESIZE_SIZE / min(width, height)
    resized = (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale)))
    left, top = (resized[0] - INPUT_SIZE) // 2, (resized[1] - INPUT_SIZE) // 2
    x_scale, y_scale = width / resized[0], height / resized[1]
    box = (left * x_scale, top * y_scale, (left + INPUT_SIZE) * x_scale, (top + INPUT_SIZE) * y_scale)
    crop = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC, box=box)
    return ((np.asarray(crop, dtype=np.float32) / 127.5) - 1.0).transpose(2, 0, 1)


def preprocess_batch(images: list[Image.Image]) -> np.ndarray:
    """(N, 3, 224, 224) float32 for N images, resized on all cores."""
    if len(images) == 1:
        return preprocess(images[0])[None]
    return np.stack(list(cpu_pool().map(preprocess, images)))
