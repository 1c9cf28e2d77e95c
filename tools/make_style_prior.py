"""Generate ``shared/models/style_priors/<backbone spec>.npz``: how the style embedding varies
between ordinary photos (see ``shared/models/style_prior.py``).

The photos are the training half of ``bench.photos.WALLPAPERS`` (colour photographs from Debian's
wallpaper packages, free licences): bench.quality never evaluates on them, nor on any photo of
its own that the prior saw. Run by hand (offline) from the repository root whenever the backbone
spec changes::

    mkdir -p /tmp/wallpapers && cd /tmp/wallpapers
    apt-get download mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 plasma-workspace-wallpapers
    for deb in *.deb; do dpkg-deb -x "$deb" .; done
    cd - && .venv/bin/python -m tools.make_style_prior /tmp/wallpapers

Each photo gives ``CROPS`` random crops (40-100% of the short side, some mirrored, seeded), embedded
by the backbone the service opens (float32 on every runtime), as bench.quality embeds its photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.photos import WALLPAPERS, random_crops, wallpaper
from bench.quality import embed
from shared.models.backbone import LITE0
from shared.models.heads import normalise
from shared.models.style_prior import PRIORS, build, save

CROPS = 24
COMPONENTS = 128  # leading directions kept (of 1072)
SHRINKAGE = 0.3  # the variance floor, as a share of the mean variance
PHOTOS = WALLPAPERS[::2]  # the half bench.quality --wallpapers trains on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="where the Debian packages are installed (/) or unpacked")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    crops = [crop for name in PHOTOS for crop in random_crops(wallpaper(args.root, name), CROPS, rng)]
    style = embed(crops)[:, LITE0.embedding_size :]
    prior = build(LITE0.id, normalise(style), COMPONENTS, SHRINKAGE)
    PRIORS.mkdir(exist_ok=True)
    save(prior, PRIORS / f"{LITE0.id}.npz")
    print(f"{len(PHOTOS)} photos, {len(crops)} crops -> {LITE0.id}.npz; scales {prior.scales.min():.3f}-{prior.scales.max():.3f}")


if __name__ == "__main__":
    main()
