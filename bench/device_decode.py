"""The GPU worker's JPEG decoding on the device (``shared.models.backbone.device_decode``): one
command for a machine with CUDA, printing

- the raw forward pass at the batch size, on tensors already on the GPU (the limit);
- the worker's path (``embed_images`` over stored 1 MP JPEGs, nothing cached) with nvJPEG, and
  with the CPU decoding it had before, each with its ratio to the raw figure (target >= 0.5 with
  nvJPEG);
- parity of the device path with the CPU path on real photos (the tolerance the tests assert).

    python -m bench.device_decode [--images 1024] [--batch 256]

Without CUDA it stops at once with exit status 2; ``--cpu`` runs it on torch's CPU decoder
instead (a check that the script works, not a measurement).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.photos import TEST_SOURCES, TRAIN_SOURCES, grain, random_crops, sepia, source
from bench.speed import rate
from bench.worker_embed import decode, megapixel_jpegs, raw_forward
from shared.data.keys import image_key
from shared.data.store import LocalStore
from shared.domain.embeddings import embed_images
from shared.models.backbone import preprocess
from shared.models.backbone.device_decode import DeviceDecoder, decode_jpegs
from shared.models.backbone.lite0 import EfficientNetLite0
from shared.models.backbone.spec import Features
from shared.models.decoding import decode_image
from shared.models.heads import normalise_groups, sigmoid, train_head

LIMIT = 50_000_000
# The tolerance of the device path against the CPU path, per image: cosine similarity of each
# feature group, and how far a trained head's score may move (tests/test_device_decode.py asserts
# it with torch's CPU decoder; README "GPU worker"). Nearly all of the difference is the CPU path's
# draft-mode decoding: Pillow's own full-size decode differs from it as much.
MIN_COSINE = {"embeddings": 0.975, "styles": 0.995, "logits": 0.975}
MAX_SCORE_SHIFT = 0.08
# Against Pillow's full-size decode and the same resize, only the resampler's rounding is left.
MIN_COSINE_FULL_DECODE = 0.998


def parity_photos(per_source: int = 3) -> tuple[list[bytes], list[str], list[bool]]:
    """Crops of every evaluation photo (short side 866) as JPEGs, one in three grained and one in
    three sepia-toned; with each crop's photo and whether it is grained."""
    rng = np.random.default_rng(0)
    jpegs, subjects, grained = [], [], []
    for name in TRAIN_SOURCES + TEST_SOURCES:
        for k, crop in enumerate(random_crops(source(name), per_source, rng, size=866)):
            look = grain(crop) if k % 3 == 1 else sepia(crop) if k % 3 == 2 else crop
            buffer = io.BytesIO()
            look.save(buffer, "JPEG", quality=90)
            jpegs.append(buffer.getvalue())
            subjects.append(name)
            grained.append(k % 3 == 1)
    return jpegs, subjects, grained


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity."""
    similarity: np.ndarray = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return similarity


def parity(backbone: EfficientNetLite0, device: DeviceDecoder) -> dict[str, float]:
    """The device path against the CPU path (and against Pillow's full-size decode) on
    ``parity_photos``: minimum cosines and maximum absolute differences per feature group, and the
    largest score shift of two trained heads (a subject, a look)."""
    jpegs, subjects, grained = parity_photos()
    cpu = backbone.embed_pixels(np.stack([decode(data) for data in jpegs]))
    full = backbone.embed_pixels(np.stack([preprocess(decode_image(d, LIMIT, draft_size=None).image) for d in jpegs]))
    new = device.embed([device.probe(data) or decode(data) for data in jpegs], decode)
    out: dict[str, float] = {}
    for group in MIN_COSINE:
        a, b, c = getattr(cpu, group), getattr(new, group), getattr(full, group)
        out[f"{group}: min cosine"] = float(cosines(a, b).min())
        out[f"{group}: max abs difference"] = float(np.abs(a - b).max())
        out[f"{group}: largest value"] = float(np.abs(a).max())
        out[f"{group}: min cosine with Pillow's full decode"] = float(cosines(c, b).min())
    out["top-1 class agreement"] = float((cpu.logits.argmax(1) == new.logits.argmax(1)).mean())
    for tag, labels in (("astronaut", np.array([s == "astronaut" for s in subjects])), ("grain", np.array(grained))):
        out[f"head '{tag}': max score shift"] = head_shift(cpu, new, labels)
    return out


def head_shift(cpu: Features, new: Features, labels: np.ndarray) -> float:
    """How far the scores of a head trained on the CPU path's features move on the device's."""
    sizes = (cpu.embeddings.shape[1], cpu.styles.shape[1])
    head = train_head(cpu.vectors, labels.astype(float), sizes).head
    scores = [sigmoid(normalise_groups(f.vectors, sizes) @ head.weight + head.bias) for f in (cpu, new)]
    return float(np.abs(scores[0] - scores[1]).max())


def within_tolerance(figures: dict[str, float]) -> bool:
    return (
        all(figures[f"{group}: min cosine"] >= least for group, least in MIN_COSINE.items())
        and all(figures[f"{group}: min cosine with Pillow's full decode"] >= MIN_COSINE_FULL_DECODE for group in MIN_COSINE)
        and all(value <= MAX_SCORE_SHIFT for key, value in figures.items() if key.endswith("score shift"))
    )


def worker_path(backbone: EfficientNetLite0, store: LocalStore, ids: list[str], batch: int,
                device: DeviceDecoder | None) -> float:
    """Images per second of ``embed_images`` over stored JPEGs not yet cached (a first batch warms up)."""
    embed_images(store, backbone, ids[:batch], decode, batch, on_device=device)
    started = time.perf_counter()
    embed_images(store, backbone, ids[batch:], decode, batch, on_device=device)
    return (len(ids) - batch) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="1 MP JPEGs for each worker path run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0, help="time for the raw measurement")
    parser.add_argument("--cpu", action="store_true", help="run on torch's CPU decoder: checks the script only")
    args = parser.parse_args()

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("bench.device_decode: torch sees no CUDA device here; it measures nvJPEG on a GPU "
              "(--cpu runs it on the CPU decoder, to check the script).", file=sys.stderr)
        return 2
    backbone = EfficientNetLite0("cpu" if args.cpu else "cuda")
    device = DeviceDecoder.for_backbone(backbone, LIMIT, ("cpu", "cuda"))
    assert device is not None
    name = torch.cuda.get_device_name() if backbone.device.type == "cuda" else "CPU decoder (script check)"
    print(f"device {backbone.device} ({name}); batch {args.batch}, {args.images} stored 1155 x 866 JPEGs per run")

    figures = parity(backbone, device)
    print("\nparity with the CPU path (Pillow draft decode + resize), same backbone:")
    for key, value in figures.items():
        print(f"  {key}: {value:.5g}")
    ok = within_tolerance(figures)
    print(f"  within the tolerance: {'yes' if ok else 'NO'}")

    jpegs = megapixel_jpegs(args.images + args.batch)
    taken = [jpeg for jpeg in map(device.probe, jpegs[: args.batch]) if jpeg]

    def decode_alone() -> int:
        decode_jpegs(taken, backbone.device)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        return len(taken)

    raw = raw_forward(backbone, args.batch, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for label, on_device in (("device decode", device), ("CPU decode", None)):
            store = LocalStore(Path(tmp) / label.replace(" ", "-"))
            ids = [f"photo-{i}" for i in range(len(jpegs))]
            for image_id, data in zip(ids, jpegs, strict=True):
                store.put(image_key(image_id), data)
            rows[label] = worker_path(backbone, store, ids, args.batch, on_device)
    alone = rate(decode_alone, args.seconds)
    print(f"\nraw forward pass, batch {args.batch}: {raw:.0f} img/s")
    print(f"decoding, resizing and cropping alone on the device, batch {args.batch}: {alone:.0f} img/s")
    for label, value in rows.items():
        print(f"worker path (read, decode, resize, forward, cache), {label}: {value:.0f} img/s, {value / raw:.2f} x raw")
    ratio = rows["device decode"] / raw
    print(f"target, device decode >= 0.5 x raw: {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
