"""Style scores on real photos and on edited copies a user would recognise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from shared.models.base_styles import STYLES, matched_styles, style_scores
from tests.support.photos import photo

COLOUR_PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in (*COLOUR_PHOTOS, "rocket", "camera")}


def grey(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(image.convert("L"), "#2a1a0a", "#f5e6c8")


def shift(image: Image.Image, red: int, blue: int) -> Image.Image:
    """Add ``red`` to the red and ``blue`` to the blue channel (a colour cast)."""
    pixels = np.asarray(image, dtype=np.int16) + np.array([red, 0, blue], dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_every_documented_style_is_scored_in_unit_range(photos: dict[str, Image.Image]) -> None:
    edits = (lambda im: im, grey, sepia, lambda im: im.filter(ImageFilter.GaussianBlur(6)))
    for image in photos.values():
        for edit in edits:
            scores = style_scores(edit(image))
            assert scores.keys() == STYLES.keys()
            assert all(0.0 <= score <= 1.0 and round(score, 4) == score for score in scores.values())
    assert STYLES.keys() >= {"black_and_white", "sepia", "high_key", "low_key", "high_contrast"}
    assert STYLES.keys() >= {"low_contrast", "vivid", "muted", "warm", "cool", "sharp", "soft_focus"}
    assert all(isinstance(doc, str) and doc for doc in STYLES.values())


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_greyscale_photo_is_black_and_white_not_vivid(photos: dict[str, Image.Image], name: str) -> None:
    colour, bw = style_scores(photos[name]), style_scores(grey(photos[name]))
    assert colour["black_and_white"] < 0.05
    assert bw["black_and_white"] > 0.95 and bw["muted"] > 0.95
    assert bw["vivid"] < 0.05 and bw["sepia"] < 0.05 and bw["warm"] < 0.05 and bw["cool"] < 0.05


def test_native_greyscale_photo_is_black_and_white(photos: dict[str, Image.Image]) -> None:
    assert style_scores(photos["camera"])["black_and_white"] > 0.95  # an "L" photo, as RGB


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_sepia_toned_photo_is_sepia_not_black_and_white(photos: dict[str, Image.Image], name: str) -> None:
    toned = style_scores(sepia(photos[name]))
    assert toned["sepia"] > 0.9 and toned["black_and_white"] < 0.05 and toned["vivid"] < 0.05
    assert style_scores(photos[name])["sepia"] < 0.05


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_darkened_or_flattened_colour_photo_is_not_sepia(photos: dict[str, Image.Image], name: str) -> None:
    # Darkening scales every colour difference down; the photo keeps its colours all the same.
    darker = ImageEnhance.Brightness(photos[name]).enhance(0.3)
    flatter = ImageEnhance.Contrast(photos[name]).enhance(0.3)
    assert style_scores(darker)["sepia"] < 0.05 and style_scores(flatter)["sepia"] < 0.05


@pytest.mark.parametrize("name", (*COLOUR_PHOTOS, "camera"))
def test_blur_turns_sharp_into_soft_focus(photos: dict[str, Image.Image], name: str) -> None:
    original = style_scores(photos[name])
    assert original["sharp"] > 0.9 and original["soft_focus"] < 0.05
    blurred = [style_scores(photos[name].filter(ImageFilter.GaussianBlur(r))) for r in (1, 2, 4, 6)]
    soft = [scores["soft_focus"] for scores in blurred]
    assert soft == sorted(soft) and soft[-1] > 0.95 and blurred[-1]["sharp"] < 0.05


def test_sharpness_does_not_depend_on_brightness(photos: dict[str, Image.Image]) -> None:
    dark = ImageEnhance.Brightness(photos["chelsea"]).enhance(0.3)
    assert style_scores(dark)["sharp"] > 0.9 and style_scores(dark)["soft_focus"] < 0.05


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_brightness_moves_between_low_and_high_key(photos: dict[str, Image.Image], name: str) -> None:
    normal = style_scores(photos[name])
    bright = style_scores(ImageEnhance.Brightness(photos[name]).enhance(2.5))
    dark = style_scores(ImageEnhance.Brightness(photos[name]).enhance(0.3))
    assert normal["high_key"] < 0.1 and normal["low_key"] < 0.1
    assert bright["high_key"] > 0.8 and bright["low_key"] == 0.0
    assert dark["low_key"] > 0.6 and dark["high_key"] == 0.0


def test_near_white_image_is_high_key_and_flat() -> None:
    scores = style_scores(Image.new("RGB", (320, 200), (250, 250, 248)))
    assert scores["high_key"] == 1.0 and scores["low_contrast"] == 1.0 and scores["high_contrast"] == 0.0


@pytest.mark.parametrize("name", ("astronaut", "camera"))
def test_contrast_enhancement(photos: dict[str, Image.Image], name: str) -> None:
    strong = style_scores(ImageEnhance.Contrast(photos[name]).enhance(2.0))
    flat = style_scores(ImageEnhance.Contrast(photos[name]).enhance(0.3))
    assert strong["high_contrast"] > 0.9 and strong["low_contrast"] == 0.0
    assert flat["low_contrast"] > 0.6 and flat["high_contrast"] == 0.0
    assert strong["high_contrast"] > style_scores(photos[name])["high_contrast"]


@pytest.mark.parametrize("name", ("coffee", "astronaut"))
def test_saturation_moves_between_vivid_and_muted(photos: dict[str, Image.Image], name: str) -> None:
    normal = style_scores(photos[name])
    saturated = style_scores(ImageEnhance.Color(photos[name]).enhance(2.0))
    faded = style_scores(ImageEnhance.Color(photos[name]).enhance(0.2))
    assert normal["vivid"] > 0.5 and normal["muted"] == 0.0
    assert saturated["vivid"] > 0.9 and saturated["vivid"] > normal["vivid"]
    assert faded["muted"] > 0.8 and faded["vivid"] == 0.0


def test_colour_casts_make_photos_warm_or_cool(photos: dict[str, Image.Image]) -> None:
    for name in ("chelsea", "astronaut", "rocket"):
        warm, cool = style_scores(shift(photos[name], 50, -50)), style_scores(shift(photos[name], -60, 60))
        assert warm["warm"] > 0.9 and warm["cool"] == 0.0
        assert cool["cool"] > 0.9 and cool["warm"] == 0.0
    assert style_scores(photos["rocket"])["cool"] > 0.9  # a blue sky
    assert style_scores(photos["coffee"])["warm"] > 0.9  # red cup, brown coffee, orange light
    assert style_scores(shift(photos["coffee"], -60, 60))["warm"] == 0.0  # a blue cast cancels it


def test_scores_hardly_depend_on_resolution(photos: dict[str, Image.Image]) -> None:
    image = photos["astronaut"]
    large = image.resize((1536, 1536), Image.Resampling.LANCZOS)
    small_scores, large_scores = style_scores(image), style_scores(large)
    assert all(abs(small_scores[name] - large_scores[name]) < 0.1 for name in STYLES)
    assert large.size == (1536, 1536)  # the caller's image is left alone


def test_tiny_and_non_rgb_images_are_scored() -> None:
    images = (Image.new("L", (1, 1), 90), Image.new("RGBA", (2, 5), (200, 90, 40, 9)), Image.new("P", (9, 4)))
    for image in images:
        scores = style_scores(image)
        assert scores.keys() == STYLES.keys() and all(0.0 <= score <= 1.0 for score in scores.values())


def test_matched_styles_keeps_those_over_the_threshold_sorted(photos: dict[str, Image.Image]) -> None:
    scores = style_scores(grey(photos["chelsea"]))
    matches = matched_styles(scores)
    names = [match["name"] for match in matches]
    assert "black_and_white" in names and "muted" in names and "vivid" not in names
    expected = sorted((score for score in scores.values() if score >= 0.5), reverse=True)
    assert [match["score"] for match in matches] == expected
    assert matched_styles({"warm": 0.3, "sharp": 0.9, "vivid": 0.6}, threshold=0.6) == [
        {"name": "sharp", "score": 0.9},
        {"name": "vivid", "score": 0.6},
    ]
    assert matched_styles({"warm": 0.3}) == []
