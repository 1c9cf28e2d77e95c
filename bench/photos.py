"""Photos, style transforms and keyword groups for the quality evaluation (``bench/quality.py``).

Every photo is one a Python package ships (nothing is downloaded): scikit-image's colour photos,
scikit-learn's two sample images and matplotlib's sample portrait (the ``test`` extra installs
all three packages). ``bench.quality --wallpapers ROOT`` adds the colour photographs among the
wallpapers of three Debian packages (``WALLPAPERS``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from skimage import data

# Colour photos packages ship; style tags train on the first group only and are evaluated on the
# second only.
TRAIN_SOURCES = ("astronaut", "coffee", "rocket", "hubble_deep_field", "china")
TEST_SOURCES = ("chelsea", "retina", "immunohistochemistry", "motorcycle", "flower", "grace_hopper")


def source(name: str) -> Image.Image:
    """One of the photos above, as RGB."""
    if name in ("china", "flower"):  # scikit-learn's sample images
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    if name == "grace_hopper":  # matplotlib's sample portrait
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as file:
            return Image.open(file).convert("RGB")
    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()  # type: ignore[no-untyped-call]
    return Image.fromarray(array).convert("RGB")


# Colour photographs (landscapes, plants, animals, water, interiors, food; abstract and drawn
# wallpapers left out) from Debian 12's mate-backgrounds, lomiri-wallpapers-16.04,
# lomiri-wallpapers-20.04 and plasma-workspace-wallpapers, free licences. Paths are relative to
# where the packages are installed ("/") or unpacked (``apt-get download PACKAGE && dpkg-deb -x
# PACKAGE.deb ROOT``).
# Style tags train on the even-numbered ones and are evaluated on the odd-numbered ones.
_BACKGROUNDS, _PLASMA = "usr/share/backgrounds", "usr/share/wallpapers"
WALLPAPERS = (
    *(f"{_BACKGROUNDS}/mate/nature/{name}.jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    *(f"{_BACKGROUNDS}/{name}.jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus",
        "Picture_0B_by_freespace", "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede",
        "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi")),
    *(f"{_PLASMA}/{name}/contents/images/2560x1440.jpg" for name in (
        "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut", "Path",
        "summer_1am")),
    f"{_PLASMA}/ColorfulCups/contents/images/2560x1600.jpg",
    f"{_PLASMA}/Volna/contents/images/5120x2880.jpg",
)
WALLPAPER_PACKAGES = ("mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
                      "plasma-workspace-wallpapers")


def wallpaper(root: Path, name: str) -> Image.Image:
    """One of ``WALLPAPERS`` under ``root``, as RGB, decoded at no less than 1600 px a side."""
    path = root / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: install or unpack {', '.join(WALLPAPER_PACKAGES)} under {root}")
    with Image.open(path) as image:
        image.draft("RGB", (1600, 1600))
        return image.convert("RGB")


def random_crops(image: Image.Image, count: int, rng: np.random.Generator, size: int = 320) -> list[Image.Image]:
    """Crops of 40-100% of the short side, some mirrored, resized to ``size`` on the short side."""
    width, height = image.size
    out = []
    for _ in range(count):
        side = int(min(width, height) * rng.uniform(0.4, 1.0))
        aspect = rng.uniform(0.75, 1.33)
        w, h = min(width, int(side * aspect)), side
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = image.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        scale = size / min(crop.size)
        out.append(crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BICUBIC))
    return out


def sepia(im: Image.Image) -> Image.Image:
    grey = np.asarray(ImageOps.grayscale(im), dtype=np.float32)
    tone = np.stack([grey * 1.07, grey * 0.87, grey * 0.62], axis=-1) + np.array([20, 10, 0])
    return Image.fromarray(np.clip(tone, 0, 255).astype(np.uint8))


def vignette(im: Image.Image) -> Image.Image:
    w, h = im.size
    y, x = np.ogrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    mask = np.clip(1.25 - 0.85 * (x**2 + y**2), 0.15, 1.0)[..., None]
    return Image.fromarray((np.asarray(im, dtype=np.float32) * mask).astype(np.uint8))


def grain(im: Image.Image, seed: int = 0) -> Image.Image:
    noise = np.random.default_rng(seed).normal(0, 22, (im.height, im.width, 1))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def faded(im: Image.Image) -> Image.Image:
    washed = ImageEnhance.Color(ImageEnhance.Contrast(im).enhance(0.6)).enhance(0.6)
    return Image.fromarray((np.asarray(washed, dtype=np.float32) * 0.8 + 45).astype(np.uint8))


def teal_orange(im: Image.Image) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    luma = a.mean(axis=-1, keepdims=True) / 255
    tint = luma * np.array([40, 10, -30]) + (1 - luma) * np.array([-30, 10, 35])
    return Image.fromarray(np.clip(a + tint, 0, 255).astype(np.uint8))


def cross_processed(im: Image.Image) -> Image.Image:
    """Slide film developed as negative: steep red and green S-curves, a flat, lifted blue channel
    (yellow-green highlights, blue-tinted shadows)."""
    a = np.asarray(im, dtype=np.float32) / 255
    s_curve = lambda v, k: 1 / (1 + np.exp(-k * (v - 0.5)))  # noqa: E731
    red, green = s_curve(a[..., 0], 7), s_curve(a[..., 1], 5)
    blue = 0.25 + 0.5 * a[..., 2]
    return Image.fromarray(np.clip(np.stack([red, green, blue], axis=-1) * 255, 0, 255).astype(np.uint8))


def low_key(im: Image.Image) -> Image.Image:
    """Mostly shadow: a strong gamma and a lowered white point."""
    a = np.asarray(im, dtype=np.float32) / 255
    return Image.fromarray((np.clip(a**2.2 * 0.8, 0, 1) * 255).astype(np.uint8))


def high_key(im: Image.Image) -> Image.Image:
    """Mostly light: shadows lifted, the tones pushed towards white."""
    a = np.asarray(im, dtype=np.float32) / 255
    return Image.fromarray((np.clip(0.3 + 0.7 * a**0.5, 0, 1) * 255).astype(np.uint8))


def duotone(im: Image.Image) -> Image.Image:
    """Luminance mapped onto a gradient between two inks: deep violet shadows, warm yellow lights."""
    luma = np.asarray(ImageOps.grayscale(im), dtype=np.float32)[..., None] / 255
    dark, light = np.array([55, 25, 95]), np.array([250, 215, 120])
    return Image.fromarray((dark + luma * (light - dark)).astype(np.uint8))


def posterised(im: Image.Image) -> Image.Image:
    """Eight levels a channel (3 bits): flat bands of colour where there were gradients."""
    return ImageOps.posterize(im, 3)


# Colour-grading looks added after the first nine style tags; bench.quality reports them apart
# ("grade"), so that the style figures stay comparable with earlier runs.
GRADE_LOOKS = ("cross-processed", "low key", "high key", "duotone")

STYLE_TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "sepia": sepia,
    "black and white": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "vignette": vignette,
    "soft focus": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "grainy film": grain,
    "high contrast": lambda im: ImageEnhance.Contrast(im).enhance(2.2),
    "faded": faded,
    "teal and orange": teal_orange,
    "cross-processed": cross_processed,
    "low key": low_key,
    "high key": high_key,
    "duotone": duotone,
    "pixelated": lambda im: im.resize((im.width // 12, im.height // 12), Image.Resampling.NEAREST).resize(
        im.size, Image.Resampling.NEAREST
    ),
}


# Looks added after the tables of the looks above were measured: each is a style tag of its own,
# but never another tag's negative nor a keyword photo's random look, so that the earlier tags'
# draws (and figures) stay those of earlier runs.
ADDED_LOOKS: dict[str, Callable[[Image.Image], Image.Image]] = {"posterised": posterised}


# Keyword subjects: training crops come from the left part of each photo, evaluation crops
# from the right part, so no evaluated pixel region was seen in training.
KEYWORD_SUBJECTS = {"cat": "chelsea", "coffee": "coffee", "person": "astronaut", "rocket": "rocket",
                    "motorcycle": "motorcycle"}


def half_crops(name: str, side: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    image = source(name)
    width = image.width
    region = image.crop((0, 0, int(width * 0.55), image.height) if side == "left"
                        else (int(width * 0.45), 0, width, image.height))
    return random_crops(region, count, rng)


def faces(split: str) -> tuple[list[Image.Image], list[Image.Image]]:
    """LFW faces and non-faces (25x25 greyscale, 100 each), halves split into train and test."""
    images = [Image.fromarray((a * 255).astype(np.uint8)).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
              for a in data.lfw_subset()]  # type: ignore[no-untyped-call]  # floats in [0, 1]
    part = slice(0, 50) if split == "train" else slice(50, 100)
    return images[:100][part], images[100:][part]
