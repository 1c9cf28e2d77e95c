"""Random edits of the kinds photo editors offer, and numbers that say what an edit did: what the
style prior (``tools/make_style_prior.py``) learns the directions that tell edits apart from.

Every kind draws its strength, and where it has one its hue, centre or curve, at random. The kinds
are the ordinary ones, so bench.quality's looks are among what they can draw (its soft focus is a
blur of radius 3, within the blur's 1-5; its low key an exposure within the exposure's range): its
figures are those of looks of kinds the prior has seen (docs/quality.md says what a kind left out
gives). ``statistics`` measures simple properties of the
backbone's input; the change an edit makes to them (edited minus plain, same crop) is what the
edit did, in numbers, whatever the photo.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from shared.models.backbone.preprocess import INPUT_SIZE, preprocess_batch

Pixels = np.ndarray  # (H, W, 3) float32 in [0, 1], values outside are clipped afterwards
Edit = Callable[[Pixels, np.random.Generator], Pixels | Image.Image]

# Two chroma axes orthogonal to grey: red against blue, green against magenta.
RED_BLUE = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
GREEN_MAGENTA = np.array([1.0, 1.0, -2.0]) / np.sqrt(6)


def luma(a: Pixels) -> Pixels:
    return (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2])[..., None]


def hue(rng: np.random.Generator, size: float) -> np.ndarray:
    """An RGB offset of length ``size`` towards a random hue (grey unchanged)."""
    angle = rng.uniform(0, 2 * np.pi)
    offset: np.ndarray = (np.cos(angle) * RED_BLUE + np.sin(angle) * GREEN_MAGENTA) * size
    return offset


def tone_curves(a: Pixels, rng: np.random.Generator) -> Pixels:
    """A gamma, black point and white point per channel: a colour cast with a curve."""
    gamma, black, white = np.exp(rng.normal(0, 0.35, 3)), rng.uniform(-0.05, 0.2, 3), rng.uniform(0.75, 1.1, 3)
    return black + (white - black) * np.clip(a, 0, 1) ** gamma


def split_toning(a: Pixels, rng: np.random.Generator) -> Pixels:
    """One hue added to the shadows, another to the highlights."""
    y = luma(a)
    return a + y * hue(rng, rng.uniform(0.04, 0.25)) + (1 - y) * hue(rng, rng.uniform(0.04, 0.25))


def saturation(a: Pixels, rng: np.random.Generator) -> Pixels:
    factor = rng.uniform(0, 0.7) if rng.random() < 0.5 else rng.uniform(1.3, 2.3)
    y = luma(a)
    return y + factor * (a - y)


def toned_grey(a: Pixels, rng: np.random.Generator) -> Pixels:
    """Grey scale tinted: one hue multiplied in, another added."""
    return luma(a) * (1 + hue(rng, rng.uniform(0.05, 0.35))) + hue(rng, rng.uniform(0, 0.08)) + rng.uniform(0, 0.1)


def gradient_map(a: Pixels, rng: np.random.Generator) -> Pixels:
    """Brightness mapped onto a gradient between a random dark and a random light colour, mixed in."""
    dark, light, mix = rng.uniform(0, 0.45, 3), rng.uniform(0.55, 1, 3), rng.uniform(0.6, 1.0)
    return mix * (dark + luma(a) * (light - dark)) + (1 - mix) * a


def contrast(a: Pixels, rng: np.random.Generator) -> Pixels:
    factor = rng.uniform(0.4, 0.8) if rng.random() < 0.5 else rng.uniform(1.3, 2.6)
    mean = float(luma(a).mean())
    return mean + factor * (a - mean)


def exposure(a: Pixels, rng: np.random.Generator) -> Pixels:
    """A gamma (darker or lighter), a lowered white point, and lifted shadows when lighter."""
    gamma = np.exp(rng.uniform(-1.1, 1.1))
    return np.clip(a, 0, 1) ** gamma * rng.uniform(0.75, 1.0) + rng.uniform(0, 0.25) * (gamma < 1)


def fade(a: Pixels, rng: np.random.Generator) -> Pixels:
    keep = rng.uniform(0.55, 0.9)
    return a * keep + rng.uniform(0.05, 1 - keep)


def channel_curves(a: Pixels, rng: np.random.Generator) -> Pixels:
    """Per channel, a steep S-curve or a flattened, lifted line (as cross-processing does)."""
    out = np.empty_like(a)
    for c in range(3):
        if rng.random() < 0.6:
            out[..., c] = 1 / (1 + np.exp(-rng.uniform(3, 9) * (a[..., c] - rng.uniform(0.4, 0.6))))
        else:
            black = rng.uniform(0, 0.35)
            out[..., c] = black + rng.uniform(0.4, 1 - black) * a[..., c]
    return out


def vignette(a: Pixels, rng: np.random.Generator) -> Pixels:
    """Edges darkened (or, one time in five, lightened) around a centre near the middle."""
    h, w = a.shape[:2]
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    y, x = np.ogrid[-1 - cy : 1 - cy : h * 1j, -1 - cx : 1 - cx : w * 1j]
    radius = np.sqrt(x**2 + y**2) ** rng.uniform(1.5, 3)
    mask = np.clip(1 + rng.uniform(0, 0.4) - rng.uniform(0.3, 1.0) * radius, rng.uniform(0, 0.4), 1)[..., None]
    return a * mask if rng.random() < 0.8 else a * mask + (1 - mask)


def blur(a: Pixels, rng: np.random.Generator) -> Image.Image:
    return to_image(a).filter(ImageFilter.GaussianBlur(rng.uniform(1, 5)))


def noise(a: Pixels, rng: np.random.Generator) -> Pixels:
    """Gaussian noise, grey (three times in five) or in colour."""
    channels = 1 if rng.random() < 0.6 else 3
    return a + rng.normal(0, rng.uniform(0.02, 0.14), (*a.shape[:2], channels))


def posterise(a: Pixels, rng: np.random.Generator) -> Pixels:
    levels = int(rng.integers(3, 17))
    return np.round(np.clip(a, 0, 1) * (levels - 1)) / (levels - 1)


def pixelate(a: Pixels, rng: np.random.Generator) -> Image.Image:
    image, factor = to_image(a), int(rng.integers(4, 20))
    small = image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.Resampling.NEAREST)
    return small.resize(image.size, Image.Resampling.NEAREST)


def jpeg(a: Pixels, rng: np.random.Generator) -> Image.Image:
    out = io.BytesIO()
    to_image(a).save(out, "JPEG", quality=int(rng.integers(3, 15)))
    return Image.open(out).convert("RGB")


def sharpen(a: Pixels, rng: np.random.Generator) -> Image.Image:
    return to_image(a).filter(ImageFilter.UnsharpMask(rng.uniform(1, 4), int(rng.integers(100, 300)), 2))


EDITS: tuple[Edit, ...] = (tone_curves, split_toning, saturation, toned_grey, gradient_map, contrast, exposure, fade,
                           channel_curves, vignette, blur, noise, posterise, pixelate, jpeg, sharpen)


def to_image(a: Pixels) -> Image.Image:
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))


def edited(image: Image.Image, kind: int, rng: np.random.Generator) -> Image.Image:
    """``image`` (any mode) with edit ``EDITS[kind]`` at a strength drawn from ``rng``, as RGB."""
    out = EDITS[kind](np.asarray(image.convert("RGB"), dtype=np.float32) / 255, rng)
    return out if isinstance(out, Image.Image) else to_image(out)


_axis = np.linspace(-1, 1, INPUT_SIZE)
_radius = np.sqrt(_axis[None, :] ** 2 + _axis[:, None] ** 2)
CENTRE, BORDER = _radius < 0.5, _radius > 0.9
STATISTICS = ("mean luma", "log luma spread", "mean red-blue", "red-blue along luma", "mean green-magenta",
              "green-magenta along luma", "log saturation", "border against centre (log luma)",
              "log fine detail", "flat neighbours", "red-blue along luma, locally",
              "green-magenta along luma, locally", "red-blue share along luma, locally",
              "green-magenta share along luma, locally", "red-blue along luma in shadows, locally",
              "red-blue along luma in highlights, locally")


def statistics(images: list[Image.Image]) -> np.ndarray:
    """(N, len(STATISTICS)) for N images, measured on the backbone's 224 x 224 input."""
    return np.concatenate([_statistics(preprocess_batch(images[i : i + 32])) for i in range(0, len(images), 32)])


def _statistics(pixels: np.ndarray) -> np.ndarray:
    rgb = (pixels.astype(np.float64) + 1) / 2  # (N, 3, H, W) in [0, 1]
    n = len(rgb)
    y = luma(np.moveaxis(rgb, 1, -1))[..., 0]
    flat = y.reshape(n, -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    variance = np.maximum((centred**2).mean(axis=1), 1e-4)
    out = [flat.mean(axis=1), np.log(np.sqrt(variance) + 0.01)]
    chroma = [np.einsum("nchw,c->nhw", rgb, axis).reshape(n, -1) for axis in (RED_BLUE, GREEN_MAGENTA)]
    for c in chroma:
        out += [c.mean(axis=1), (centred * (c - c.mean(axis=1, keepdims=True))).mean(axis=1) / variance]
    out.append(np.log(np.sqrt(chroma[0].var(axis=1) + chroma[1].var(axis=1)) + 0.01))
    out.append(np.log((y * BORDER).sum((1, 2)) / BORDER.sum() + 0.02) - np.log((y * CENTRE).sum((1, 2)) / CENTRE.sum() + 0.02))
    detail = np.abs(4 * y[:, 1:-1, 1:-1] - y[:, :-2, 1:-1] - y[:, 2:, 1:-1] - y[:, 1:-1, :-2] - y[:, 1:-1, 2:])
    out.append(np.log(detail.mean(axis=(1, 2)) + 1e-3))
    levels = np.round(rgb * 255)
    same_across = (np.abs(np.diff(levels, axis=3)).max(axis=1) < 0.5).mean(axis=(1, 2))
    same_down = (np.abs(np.diff(levels, axis=2)).max(axis=1) < 0.5).mean(axis=(1, 2))
    out.append((same_across + same_down) / 2)
    out += _local_slopes(rgb)
    return np.stack(out, axis=1)


def _local_slopes(rgb: np.ndarray) -> list[np.ndarray]:
    """How chroma changes with brightness from one pixel to the next (2 x 2 means, so that noise
    counts less): the regression slope of chroma's steps on luma's. Shading a surface of one
    colour changes its luma and keeps its share of chroma, whatever that colour is; a grade that
    tints shadows and highlights apart changes both together, on every surface of the photo."""
    n = len(rgb)
    small = rgb.reshape(n, 3, rgb.shape[2] // 2, 2, rgb.shape[3] // 2, 2).mean(axis=(3, 5))
    y = luma(np.moveaxis(small, 1, -1))[..., 0]
    total = small.sum(axis=1) + 0.06
    chroma = [np.einsum("nchw,c->nhw", small, axis) for axis in (RED_BLUE, GREEN_MAGENTA)]

    def steps(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.diff(a, axis=1)[:, :, :-1].reshape(n, -1), np.diff(a, axis=2)[:, :-1, :].reshape(n, -1)], axis=1)

    dy = steps(y)
    level = np.concatenate([y[:, :-1, :-1].reshape(n, -1)] * 2, axis=1)

    def slope(change: np.ndarray, where: np.ndarray | float = 1.0) -> np.ndarray:
        return (dy * change * where).sum(axis=1) / ((dy * dy * where).sum(axis=1) + 1e-3)

    raw = [steps(c) for c in chroma]
    share = [steps(c / total) for c in chroma]
    return [slope(raw[0]), slope(raw[1]), slope(share[0]), slope(share[1]),
            slope(raw[0], level < 0.35), slope(raw[0], level > 0.65)]
