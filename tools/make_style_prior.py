"""Generate ``shared/models/style_priors/<backbone spec>.npz``: how the style embedding varies
between ordinary photos (see ``shared/models/style_prior.py``).

The photos are the colour photographs among the wallpapers of four Debian packages (free
licences; none of them is used by ``bench/quality.py``, whose photos come from Python packages):
abstract and drawn wallpapers are left out. Run by hand (offline) from the repository root
whenever the backbone spec or the list below changes::

    mkdir -p /tmp/wallpapers && cd /tmp/wallpapers
    apt-get download mate-backgrounds ukui-wallpapers plasma-workspace-wallpapers
    for deb in *.deb; do dpkg-deb -x "$deb" .; done
    cd - && .venv/bin/python tools/make_style_prior.py /tmp/wallpapers

Each photo gives ``CROPS`` random crops (40-100% of the short side, some mirrored, seeded), embedded
by the backbone the service opens (float32 on every runtime).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import random_crops
from shared.core.settings import Settings
from shared.models.backbone import LITE0, open_backbone
from shared.models.heads import normalise
from shared.models.style_prior import PRIORS, build, save

CROPS = 24
COMPONENTS = 128  # leading directions kept (of 1072)
SHRINKAGE = 0.3  # the variance floor, as a share of the mean variance

BACKGROUNDS = "usr/share/backgrounds"
PLASMA = "usr/share/wallpapers"
PHOTOS = (
    *(f"{BACKGROUNDS}/mate/nature/{name}.jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    *(f"{BACKGROUNDS}/{name}.jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus",
        "Picture_0B_by_freespace", "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede",
        "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi")),
    *(f"{PLASMA}/{name}/contents/images/2560x1440.jpg" for name in (
        "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut", "Path",
        "summer_1am")),
    f"{PLASMA}/ColorfulCups/contents/images/2560x1600.jpg",
    f"{PLASMA}/Volna/contents/images/5120x2880.jpg",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the folder the Debian packages were unpacked into")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    crops = []
    for name in PHOTOS:
        with Image.open(args.root / name) as image:
            image.draft("RGB", (1600, 1600))
            crops += random_crops(image.convert("RGB"), CROPS, rng)
    settings = Settings()
    backbone = open_backbone(settings.runtime, settings.device, settings.torch_threads, settings.model_cache_dir)
    style = np.concatenate([backbone.embed(crops[i : i + 32]).styles for i in range(0, len(crops), 32)])
    prior = build(LITE0.id, normalise(style), COMPONENTS, SHRINKAGE)
    PRIORS.mkdir(exist_ok=True)
    save(prior, PRIORS / f"{LITE0.id}.npz")
    print(f"{len(PHOTOS)} photos, {len(crops)} crops: {PRIORS / LITE0.id}.npz, scales "
          f"{prior.scales.min():.3f}-{prior.scales.max():.3f}")


if __name__ == "__main__":
    main()
