"""Generate ``shared/models/style_priors/<backbone spec>.npz``: how the style embedding varies
between ordinary photos, and which of its directions tell edits apart (see
``shared/models/style_prior.py``).

The photos are every one of ``bench.photos.WALLPAPERS`` (37 colour photographs from Debian's
wallpaper packages, free licences): bench.quality's own photos (those Python packages ship) are
never among them, so its figures are of photos the prior has not seen; ``bench.quality
--wallpapers`` evaluates on half of these, so its figures are flattered. The training half alone
(19 photos) gave bench.quality 5+5 style 0.966 and grade looks 0.917, all 37 give 0.976 and 0.941:
how photos differ is learnt better from more of them. Run by hand (offline) from the repository root whenever the backbone
spec, ``photo_edits.EDITS`` or ``photo_edits.STATISTICS`` change::

    mkdir -p /tmp/wallpapers && cd /tmp/wallpapers
    apt-get download mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 plasma-workspace-wallpapers
    for deb in *.deb; do dpkg-deb -x "$deb" .; done
    cd - && .venv/bin/python -m tools.make_style_prior /tmp/wallpapers

Each photo gives ``CROPS`` random crops (40-100% of the short side, some mirrored, seeded), embedded
by the backbone the service opens (float32 on every runtime), as bench.quality embeds its photos;
each crop is then edited ``EDITS_PER_CROP`` times at random (``tools/photo_edits.py``: the kind
and its strength drawn from a seeded generator) and embedded again. What an edit did, for the
regression: which kind it was, and how it changed each of ``photo_edits.STATISTICS`` (standardised
over the edits). A few minutes on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import WALLPAPERS, random_crops, wallpaper
from bench.quality import embed
from shared.models.backbone import LITE0
from shared.models.heads import normalise
from shared.models.style_prior import PRIORS, StylePrior, edit_directions, photo_variation, save
from tools.photo_edits import EDITS, edited, statistics

CROPS = 24
COMPONENTS = 128  # leading directions of the photos' variation kept (of 1072)
SHRINKAGE = 0.3  # the variance floor, as a share of the mean variance
EDITS_PER_CROP = 16
RIDGE = 0.1  # the regression's penalty, as a share of the mean variance
STRETCH = 10.0  # how much cheaper the directions that tell edits apart are made
PHOTOS = WALLPAPERS


def style_of(images: list[Image.Image]) -> np.ndarray:
    """Normalised style features of the images."""
    return normalise(embed(images)[:, LITE0.embedding_size :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="where the Debian packages are installed (/) or unpacked")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    crops = [crop for name in PHOTOS for crop in random_crops(wallpaper(args.root, name), CROPS, rng)]
    plain = style_of(crops)
    photos = photo_variation(plain, COMPONENTS, SHRINKAGE)

    edit_rng = np.random.default_rng(11)
    kinds = edit_rng.integers(len(EDITS), size=(EDITS_PER_CROP, len(crops)))
    plain_statistics = statistics(crops)
    styles, effects = [photos(plain)], [np.zeros((len(crops), len(EDITS) + plain_statistics.shape[1]))]
    changes = []
    for round_kinds in kinds:
        images = [edited(crop, int(kind), edit_rng) for crop, kind in zip(crops, round_kinds, strict=True)]
        styles.append(photos(style_of(images)))
        changes.append(statistics(images) - plain_statistics)
    spread = np.concatenate(changes).std(axis=0)
    spread[spread == 0] = 1.0  # a statistic no edit changed stays 0
    for round_kinds, change in zip(kinds, changes, strict=True):
        effects.append(np.concatenate([np.eye(len(EDITS))[round_kinds], change / spread], axis=1))
    edits = edit_directions(np.concatenate(styles), np.concatenate(effects), RIDGE, STRETCH)

    PRIORS.mkdir(exist_ok=True)
    save(StylePrior(LITE0.id, photos, edits), PRIORS / f"{LITE0.id}.npz")
    print(f"{len(PHOTOS)} photos, {len(crops)} crops, {kinds.size} edits -> {LITE0.id}.npz; photo scales "
          f"{photos.scales.min():.3f}-{photos.scales.max():.3f}, edit scales {edits.scales.min():.2f}-{edits.scales.max():.2f}")


if __name__ == "__main__":
    main()
