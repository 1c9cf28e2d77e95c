"""Write the photos the README's examples name into a folder (by default the current one): random
crops of the sample photos scikit-image ships (a cat, a rocket, a coffee cup, an astronaut).

Needs the test tools (``./scripts/setup --test`` installs scikit-image)::

    .venv/bin/python -m tools.example_photos [FOLDER]

The README's own test (``tests/test_readme.py``) runs its blocks on these same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.support.photos import CAT, crops


def example_photos() -> dict[str, bytes]:
    """File name (relative, with folders) -> JPEG bytes, the same on every run."""
    cats = crops(CAT, 5, seed=3)
    return {
        "cat-1.jpg": cats[0], "cat-2.jpg": cats[1], "photo.jpg": cats[2],
        "car.jpg": crops("rocket", 1, seed=3)[0], "tree.jpg": crops("coffee", 1, seed=3)[0],
        "photos/cats/tabby.jpg": cats[3], "photos/cats/sleepy.jpg": cats[4],
        "photos/other/launch.jpg": crops("rocket", 1, seed=4)[0], "photos/other/mug.jpg": crops("coffee", 1, seed=4)[0],
        "holiday/astronaut.jpg": crops("astronaut", 1, seed=5)[0], "holiday/cat.jpg": crops(CAT, 1, seed=5)[0],
    }


def write_example_photos(folder: Path) -> list[Path]:
    """Write ``example_photos`` under ``folder``; the paths written."""
    written = []
    for name, data in example_photos().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("."), help="where to write them (default: here)")
    args = parser.parse_args()
    written = write_example_photos(args.folder)
    print(f"wrote {len(written)} photos: " + ", ".join(str(p.relative_to(args.folder)) for p in written))


if __name__ == "__main__":
    main()
