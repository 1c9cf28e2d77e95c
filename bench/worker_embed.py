"""The training worker on its device: embedding throughput against the raw backbone, and a real job.

Measured in one run, on whatever device ``TAGSMITH_DEVICE`` (default ``auto``) picks:

- the raw forward pass on preprocessed tensors already on the device: the limit;
- the worker's own path (``embed_images``: read each stored 1 MP JPEG, decode, resize,
  forward, cache the vector) over ``--images`` photos, and its ratio to the raw figure;
- parity of the device's features with the CPU's (max absolute difference; heads trained on a
  GPU worker must score the same on CPU predict functions);
- one real training job: its own Redis, a local object store and ``tagsmith worker`` on the
  device; enqueue to started on an idle worker, and the job's wall time.

    python -m bench.worker_embed [--images 512] [--batches 32,64,128]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import random_crops, source
from bench.speed import queued_ms, rate
from infra.embedded import data_folder_lock, start_redis
from shared.core.process import cpu_pool
from shared.data.keys import image_key
from shared.data.store import LocalStore
from shared.domain.embeddings import embed_images
from shared.domain.images import add_image
from shared.domain.services import Services
from shared.models.backbone import preprocess
from shared.models.backbone.lite0 import EfficientNetLite0
from shared.models.decoding import decode_image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def megapixel_jpegs(count: int) -> list[bytes]:
    """``count`` distinct 1155 x 866 JPEGs cut from real photos, taking the photos in turn."""
    rng = np.random.default_rng(0)
    crops = [random_crops(source(name), count // len(PHOTOS) + 1, rng, size=866) for name in PHOTOS]
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        crops[i % len(PHOTOS)][i // len(PHOTOS)].resize((1155, 866)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def raw_forward(backbone: EfficientNetLite0, batch: int, seconds: float) -> float:
    """Images per second of the forward pass alone, on tensors already on the device."""
    import torch

    pixels = torch.from_numpy(np.stack([preprocess(source("coffee"))] * batch)).to(backbone.device)

    def once() -> int:
        with torch.inference_mode():
            backbone.forward(pixels)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        return batch

    return rate(once, seconds)


def cpu_side(jpegs: list[bytes], seconds: float) -> float:
    """Images per second of decoding and resizing alone (nothing read or stored), on every core."""
    chunk = jpegs[:256]
    return rate(lambda: len(list(cpu_pool().map(decode, chunk))), seconds)


def decode(data: bytes) -> np.ndarray:
    """A stored photo to the backbone's input, as the worker decodes it."""
    return preprocess(decode_image(data, 50_000_000).image)


def worker_path(backbone: EfficientNetLite0, jpegs: list[bytes], batch: int, folder: Path) -> float:
    """Images per second of the worker's embedding path (``embed_images``) over freshly stored JPEGs
    (nothing cached)."""
    store = LocalStore(folder / f"objects-{batch}")
    ids = [f"photo-{i}" for i in range(len(jpegs))]
    for image_id, data in zip(ids, jpegs, strict=True):
        store.put(image_key(image_id), data)
    embed_images(store, backbone, ids[:batch], decode, batch)  # warm-up, then cached
    started = time.perf_counter()
    embed_images(store, backbone, ids[batch:], decode, batch)
    return (len(ids) - batch) / (time.perf_counter() - started)


def training_job(jpegs: list[bytes], folder: Path) -> dict[str, float | str]:
    """Enqueue one training on an idle ``tagsmith worker``; returns its timings and result."""
    import redis

    from shared.core.settings import Settings
    from shared.domain.services import build_services

    data = folder / "job"
    with data_folder_lock(data) as fd:
        redis_process, url = start_redis(data / "redis", fd)
        env = {**os.environ, "TAGSMITH_DATA_DIR": str(data), "TAGSMITH_REDIS_URL": url}
        worker = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            services = build_services(Settings(data_dir=data, redis_url=url))
            return _run_jobs(services, jpegs, worker)
        finally:
            worker.terminate()
            worker.wait(30)
            redis.Redis.from_url(url).shutdown(nosave=True)
            redis_process.wait(10)


def wait_until_listening(services: Services, timeout_s: float = 60.0) -> None:
    """Wait until the worker blocks on its queue (RQ's state "idle"): it logs "ready" before RQ's
    own start-up (registration, maintenance), which is not part of a job's time to start."""
    from rq import Worker

    deadline = time.monotonic() + timeout_s
    while not any(w.get_state() == "idle" for w in Worker.all(connection=services.redis)):
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not start listening on its queue")
        time.sleep(0.01)


def _run_jobs(services: Services, jpegs: list[bytes], worker: subprocess.Popen[str]) -> dict[str, float | str]:
    """Store and label the photos, wait for the idle worker, then train the tag twice."""
    tag = "astronaut"  # positives: crops of the astronaut photo; negatives: the other photos
    for i, payload in enumerate(jpegs):
        add_image(services, payload, f"photo-{i}")
        services.registry.assign(f"photo-{i}", tag, "positive" if PHOTOS[i % len(PHOTOS)] == tag else "negative")
    assert worker.stderr is not None
    added = time.perf_counter()
    for line in worker.stderr:  # wait until the worker is idle on its queue
        print("   worker:", line.rstrip(), file=sys.stderr)
        if " ready on queue " in line:
            break
    wait_until_listening(services)
    timings: dict[str, float | str] = {"worker start and library embedding after the adds (s)": time.perf_counter() - added}
    # Adding the photos queued their library embedding: the worker has embedded them all once it
    # listens again, so both trainings read cached embeddings.
    for run in ("first training", "second training (fine-tunes the first)"):
        time.sleep(1.0)
        started = time.perf_counter()
        task_id, _ = services.queue.submit(tag, services.registry.epoch(tag))
        while (status := services.queue.status(task_id))["status"] not in ("finished", "failed"):
            time.sleep(0.01)
        wall = time.perf_counter() - started
        if status["status"] == "failed":
            raise SystemExit(f"training failed: {status.get('error')}")
        result = status["result"]
        timings[f"{run}: enqueue to started (ms)"] = queued_ms(status)
        timings[f"{run}: wall (s)"] = wall
        timings[f"{run}: version, form, CV ROC AUC"] = (
            f"{result['version']}, {result['form']}, {result['metrics'].get('roc_auc', float('nan')):.3f}"
        )
    return timings

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="1 MP JPEGs for the worker path (default 512)")
    parser.add_argument("--batches", default="32,64,128", help="batch sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per raw measurement")
    parser.add_argument("--job-images", type=int, default=200, help="labelled images of the training job")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    started = time.perf_counter()
    backbone = EfficientNetLite0(os.environ.get("TAGSMITH_DEVICE", "auto"))
    load_s = time.perf_counter() - started
    name = torch.cuda.get_device_name() if backbone.device.type == "cuda" else f"cpu x{os.cpu_count()}"
    print(f"device {backbone.device} ({name}), {os.cpu_count()} CPU cores; backbone loaded in {load_s:.1f} s")

    jpegs = megapixel_jpegs(args.images)
    probe = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs[:16]]
    here, cpu = backbone.embed(probe), EfficientNetLite0("cpu").embed(probe)
    for group in ("embeddings", "styles", "logits"):
        diff = float(np.abs(getattr(here, group) - getattr(cpu, group)).max())
        print(f"parity with CPU, {group}: max abs difference {diff:.2e} {'ok' if diff <= 1e-4 else 'OVER 1e-4'}")

    print(f"decoding and resizing alone, {os.cpu_count()} threads: {cpu_side(jpegs, args.seconds):.0f} img/s")
    print(f"\n{'batch':>5} {'raw forward img/s':>18} {'worker path img/s':>18} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            raw = raw_forward(backbone, batch, args.seconds)
            path = worker_path(backbone, jpegs, batch, Path(tmp))
            print(f"{batch:>5} {raw:>18.0f} {path:>18.0f} {path / raw:>6.2f}")
        job = training_job(jpegs[: args.job_images], Path(tmp))
    print(f"\ntraining jobs on an idle `tagsmith worker`, {args.job_images} labelled 1 MP JPEGs:")
    for key, value in job.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
