"""Photographic style attributes measured from the pixels.

The scores are hand-tuned heuristics, not learned: each is a clipped linear ramp of one measured
statistic (sepia: the product of two ramps), computed with numpy on a copy whose longest side is
256 px, so a call takes a few milliseconds. The ramp ends were calibrated on the photos shipped
with scikit-image and edited copies of them (grey, sepia-toned, blurred, brightened, darkened,
contrast- and saturation-changed, colour-shifted). ``STYLES`` documents every formula.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
from PIL import Image

SIZE = 256  # longest side of the measured copy
BANDS = 16  # luma bands for the tone spread
LUMA_BINS = 1024  # histogram bins of the median luma (a multiple of BANDS)

# Statistic -> how it is measured. Channels are in [0, 1]; Y is Rec. 709 luma and
# (R-G, (R+G)/2-B) the opponent chroma.
STATISTICS: dict[str, str] = {
    "chroma": "RMS opponent chroma",
    "tone spread": "RMS distance of each pixel's opponent chroma from the mean chroma of the pixels "
    f"in its 1/{BANDS} luma band, over the contrast (0 for any toned monochrome; brightness-invariant)",
    "warmth": "mean R-B",
    "median luma": "median Y",
    "contrast": "RMS contrast (standard deviation of Y)",
    "colourfulness": "Hasler-Süsstrunk colourfulness sqrt(var(rg) + var(yb)) + 0.3 sqrt(mean(rg)^2 + "
    "mean(yb)^2), rg = R-G, yb = (R+G)/2-B",
    "detail": "mean squared Laplacian / mean squared central-difference gradient of Y "
    "(falls about as 1/sigma^2 under a Gaussian blur)",
}

# Style -> (what it means, ramps). A ramp (statistic, at_0, at_1) scores 0 at ``at_0``, 1 at
# ``at_1``, linearly in between and clipped outside; a style's score is the product of its ramps.
RULES: dict[str, tuple[str, tuple[tuple[str, float, float], ...]]] = {
    "black_and_white": ("no colour", (("chroma", 0.05, 0.02),)),
    "sepia": ("monochrome with a warm tint", (("tone spread", 0.2, 0.1), ("warmth", 0.03, 0.08))),
    "high_key": ("mostly light tones", (("median luma", 0.6, 0.85),)),
    "low_key": ("mostly dark tones", (("median luma", 0.3, 0.1),)),
    "high_contrast": ("strong tonal contrast", (("contrast", 0.24, 0.34),)),
    "low_contrast": ("flat, hazy tones", (("contrast", 0.13, 0.07),)),
    "vivid": ("strong, varied colours", (("colourfulness", 0.15, 0.35),)),
    "muted": ("subdued colours, monochrome included", (("colourfulness", 0.13, 0.05),)),
    "warm": ("orange-red cast", (("warmth", 0.1, 0.25),)),
    "cool": ("blue cast", (("warmth", -0.02, -0.12),)),
    "sharp": ("crisp edges", (("detail", 0.2, 0.4),)),
    "soft_focus": ("blurred, soft edges", (("detail", 0.2, 0.08),)),
}

STYLES: dict[str, str] = {
    name: f"{meaning}: "
    + "; times ".join(f"{STATISTICS[stat]}, 0 at {at_0:g} to 1 at {at_1:g}" for stat, at_0, at_1 in ramps)
    for name, (meaning, ramps) in RULES.items()
}


class StyleMatch(TypedDict):
    name: str
    score: float


def fitted_size(width: int, height: int, side: int = SIZE) -> tuple[int, int]:
    """The size within ``side`` x ``side`` that keeps the aspect ratio, rounded as Pillow's
    ``thumbnail`` rounds it; the size itself if it fits already."""
    if width <= side and height <= side:
        return width, height
    aspect = width / height
    if aspect <= 1:
        return max(min(math.floor(side * aspect), math.ceil(side * aspect), key=lambda n: abs(aspect - n / side)), 1), side
    return side, max(min(math.floor(side / aspect), math.ceil(side / aspect),
                         key=lambda n: 0 if n == 0 else abs(aspect - side / n)), 1)


def measure(image: Image.Image) -> dict[str, float]:
    """Every statistic of ``STATISTICS`` on a copy of ``image`` downscaled to ``SIZE`` px: the
    pixels of Pillow's ``thumbnail`` (bilinear), resized straight from the image instead of from a
    copy of it (0.7 ms less for a 640 x 480 photo). One pass each gives the chroma sums and squares;
    the median luma is read from a 1024-bin histogram (within 1/2048 of the exact median), whose
    bins also give the tone spread's luma bands."""
    small = image if image.mode == "RGB" else image.convert("RGB")
    if (size := fitted_size(*small.size)) != small.size:
        small = small.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if min(small.size) < 3:  # the Laplacian needs a 3x3 neighbourhood
        small = small.resize((max(small.width, 3), max(small.height, 3)))
    r, g, b = np.asarray(small, dtype=np.float32).transpose(2, 0, 1).copy() / 255.0  # contiguous planes
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    rg, yb = (r - g).ravel(), ((r + g) / 2 - b).ravel()
    n = rg.size
    mean_rg, mean_yb = float(rg.sum()) / n, float(yb.sum()) / n
    squares_rg, squares_yb = float(rg @ rg) / n, float(yb @ yb) / n
    contrast = float(np.std(y))

    bins = np.minimum((y * LUMA_BINS).astype(np.intp), LUMA_BINS - 1).ravel()
    histogram = np.bincount(bins, minlength=LUMA_BINS)
    median = (int(np.searchsorted(np.cumsum(histogram), (n + 1) / 2)) + 0.5) / LUMA_BINS
    # Mean squared distance from the band's mean chroma = total minus between-band sum of squares.
    band = bins // (LUMA_BINS // BANDS)
    count = np.maximum(histogram.reshape(BANDS, -1).sum(axis=1), 1)
    rg_sums, yb_sums = np.bincount(band, rg, BANDS), np.bincount(band, yb, BANDS)
    chroma_squares = squares_rg + squares_yb
    spread = max(chroma_squares - float(np.sum((rg_sums**2 + yb_sums**2) / count)) / n, 0.0)

    laplacian = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    gradient = (y[1:-1, 2:] - y[1:-1, :-2]) ** 2 + (y[2:, 1:-1] - y[:-2, 1:-1]) ** 2
    spread_rg = math.sqrt(max(squares_rg - mean_rg**2, 0.0))
    spread_yb = math.sqrt(max(squares_yb - mean_yb**2, 0.0))
    return {
        "chroma": math.sqrt(chroma_squares),
        "tone spread": math.sqrt(spread) / max(contrast, 1e-6),
        "warmth": float(np.mean(r - b)),
        "median luma": median,
        "contrast": contrast,
        "colourfulness": math.hypot(spread_rg, spread_yb) + 0.3 * math.hypot(mean_rg, mean_yb),
        "detail": float(np.mean(laplacian**2) / max(float(np.mean(gradient)), 1e-12)),
    }


def _ramp(value: float, at_0: float, at_1: float) -> float:
    return min(max((value - at_0) / (at_1 - at_0), 0.0), 1.0)


def style_scores(image: Image.Image) -> dict[str, float]:
    """Every style of ``STYLES`` scored in [0, 1], rounded to 4 places."""
    stats = measure(image)
    return {
        name: round(math.prod(_ramp(stats[stat], at_0, at_1) for stat, at_0, at_1 in ramps), 4)
        for name, (_, ramps) in RULES.items()
    }


def matched_styles(scores: dict[str, float], threshold: float = 0.5) -> list[StyleMatch]:
    """The styles scoring at least ``threshold``, highest first."""
    matches: list[StyleMatch] = [
        {"name": name, "score": score} for name, score in scores.items() if score >= threshold
    ]
    return sorted(matches, key=lambda match: -match["score"])
