"""Soak test: concurrent clients mix add, assign, train, status and predict against one tagsmith
server on loopback for a bounded time, then every acknowledged image and every finished version is
checked, and the server's memory (RSS) is compared with its level after warm-up.

    python -m bench.soak --seconds 180 [--clients 4]

starts its own ``tagsmith serve`` (own Redis, worker and data folder in a temporary folder) on a
free port and prints the figures. ``tests/test_soak.py`` runs a short one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
from PIL import Image
from skimage import data

TAGS = ("soak-a", "soak-b")
SOURCES = ("chelsea", "coffee", "rocket", "astronaut")
EXPECTED = {"add": 201, "assign": 200, "train": 202, "status": 200, "predict": 200, "predict_upload": 200}
# The soak checks that every finished training's version is still there: the server under test
# keeps every version (by default only the newest ten of a tag are kept).
SERVER_ENV = {"TAGSMITH_KEEP_VERSIONS": "1000000"}


def photo_pool(count: int, seed: int = 0) -> list[bytes]:
    """Small JPEG crops of the photos scikit-image ships."""
    rng = random.Random(seed)
    images = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in SOURCES]
    out = []
    for i in range(count):
        image = images[i % len(images)]
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        x, y = rng.randrange(0, w - side + 1), rng.randrange(0, h - side + 1)
        buffer = io.BytesIO()
        image.crop((x, y, x + side, y + side)).resize((224, 224)).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


@dataclass
class Ledger:
    """What the server acknowledged, shared by the client threads."""

    images: dict[str, str] = field(default_factory=dict)  # image id -> sha256 of the bytes sent
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> tag
    calls: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(base: str, ledger: Ledger, photos: list[bytes], deadline: float, number: int, ids: Any) -> None:
    rng = random.Random(number)
    http = requests.Session()
    while time.monotonic() < deadline:
        op = rng.choices(["add", "assign", "train", "status", "predict", "predict_upload"], [4, 4, 1, 2, 2, 1])[0]
        try:
            response = _call(base, http, ledger, photos, rng, op, ids)
        except requests.RequestException as exc:
            with ledger.lock:
                ledger.errors.append(f"{op}: {exc}")
            continue
        if response is None:
            continue
        with ledger.lock:
            ledger.calls[op] += 1
            if response.status_code != EXPECTED[op]:
                ledger.errors.append(f"{op}: {response.status_code} {response.text[:200]}")


def _call(base: str, http: requests.Session, ledger: Ledger, photos: list[bytes], rng: random.Random, op: str,
          ids: Any) -> requests.Response | None:
    with ledger.lock:
        known = list(ledger.images)
        tasks = list(ledger.tasks)
    if op == "add":
        image_id, image = f"soak-{next(ids)}", rng.choice(photos)
        response = http.post(f"{base}/custom/add?image_id={image_id}", files={"data": ("s.jpg", image)}, timeout=120)
        if response.status_code == 201:
            with ledger.lock:
                ledger.images[image_id] = hashlib.sha256(image).hexdigest()
        return response
    if op == "assign" and known:
        kind = rng.choice(["positive", "negative"])
        return http.get(f"{base}/custom/assign/{rng.choice(known)}/{kind}/{rng.choice(TAGS)}", timeout=120)
    if op == "train":
        tag = rng.choice(TAGS)
        response = http.post(f"{base}/custom/train/{tag}", timeout=120)
        if response.status_code == 202:
            with ledger.lock:
                ledger.tasks[response.json()["task_id"]] = tag
        return response
    if op == "status" and tasks:
        return http.get(f"{base}/status/{rng.choice(tasks)}", timeout=120)
    if op == "predict" and known:
        return http.get(f"{base}/custom/predict/{rng.choice(known)}", timeout=120)
    if op == "predict_upload":
        return http.post(f"{base}/predict/custom", files={"data": ("p.jpg", rng.choice(photos))}, timeout=120)
    return None


def warm_up(base: str, ledger: Ledger, photos: list[bytes], ids: Any, clients: int) -> None:
    """Every operation once, a first model of each tag, and the backbone loaded in the API process
    and run at the batch sizes ``clients`` concurrent requests make (its buffers reach full size)."""
    http = requests.Session()
    for i, tag in enumerate(TAGS):
        for kind, image in (("positive", photos[2 * i]), ("negative", photos[2 * i + 1])):
            image_id = f"soak-{next(ids)}"
            assert http.post(f"{base}/custom/add?image_id={image_id}", files={"data": ("s.jpg", image)}).status_code == 201
            ledger.images[image_id] = hashlib.sha256(image).hexdigest()
            assert http.get(f"{base}/custom/assign/{image_id}/{kind}/{tag}").ok
        ledger.tasks[http.post(f"{base}/custom/train/{tag}").json()["task_id"]] = tag
    wait_for_tasks(base, ledger, 300)
    assert http.post(f"{base}/predict", files={"data": ("p.jpg", photos[0])}).ok

    def predict(photo: bytes) -> bool:
        return requests.post(f"{base}/predict", files={"data": ("p.jpg", photo)}, timeout=120).ok

    with ThreadPoolExecutor(clients) as pool:
        assert all(pool.map(predict, photos[: 4 * clients]))


def wait_for_tasks(base: str, ledger: Ledger, timeout: float) -> dict[str, str]:
    """The final status of every task, waiting at most ``timeout`` seconds for them to end."""
    deadline = time.monotonic() + timeout
    while True:
        states = {task: requests.get(f"{base}/status/{task}").json()["status"] for task in ledger.tasks}
        if all(s in ("finished", "failed") for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


WARM_UP_SECONDS = 10.0


def run_clients(
    base: str, ledger: Ledger, photos: list[bytes], ids: Any, clients: int, seconds: float,
    sample: Any = None,
) -> None:
    """``clients`` threads running the mixed load for ``seconds``; ``sample()`` every half second."""
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(base, ledger, photos, deadline, n, ids)) for n in range(clients)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if sample is not None:
            sample()
    for thread in threads:
        thread.join()


def soak(base: str, pid: int, seconds: float, clients: int = 4) -> dict[str, Any]:
    """Run the soak against a server at ``base`` whose API process is ``pid``; returns the figures."""
    process = psutil.Process(pid)
    ledger, photos, ids = Ledger(), photo_pool(48), itertools.count()
    warm_up(base, ledger, photos, ids, clients)
    run_clients(base, ledger, photos, ids, clients, WARM_UP_SECONDS)  # the same mix, not measured
    rss_start = process.memory_info().rss
    warm_up_calls = Counter(ledger.calls)
    samples = [rss_start]
    run_clients(base, ledger, photos, ids, clients, seconds, lambda: samples.append(process.memory_info().rss))
    rss_end = process.memory_info().rss
    states = wait_for_tasks(base, ledger, max(120.0, seconds))
    missing_images = [i for i, digest in ledger.images.items()
                      if hashlib.sha256(requests.get(f"{base}/custom/images/{i}/original").content).hexdigest() != digest]
    versions = {tag: {v["version"] for v in requests.get(f"{base}/custom/versions/{tag}").json()["versions"]}
                for tag in TAGS}
    finished = [t for t, s in states.items() if s == "finished"]
    missing_versions = [t for t in finished
                        if requests.get(f"{base}/status/{t}").json()["result"]["version"] not in versions[ledger.tasks[t]]]
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": sum((ledger.calls - warm_up_calls).values()),  # errors count the warm-up too
        "by_operation": dict(sorted((ledger.calls - warm_up_calls).items())),
        "errors": len(ledger.errors),
        "first_errors": ledger.errors[:5],
        "images_acknowledged": len(ledger.images),
        "images_missing": len(missing_images),
        "tasks": len(ledger.tasks),
        "tasks_finished": len(finished),
        "tasks_failed": sum(s == "failed" for s in states.values()),
        "tasks_unfinished": sum(s not in ("finished", "failed") for s in states.values()),
        "versions_missing": len(missing_versions),
        "rss_after_warm_up_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_max_mb": round(max(samples) / 2**20, 1),
        # Flatness: the level over the last third of the run against the level after warm-up
        # (the max includes the transient buffers of whichever batch was running).
        "rss_growth": round(statistics.median(samples[-max(1, len(samples) // 3):]) / rss_start - 1, 4),
        "rss_peak_growth": round(max(samples) / rss_start - 1, 4),
    }


def report(figures: dict[str, Any]) -> str:
    f = figures
    return (
        f"soak {f['seconds']:g} s, {f['clients']} clients: {f['requests']} requests "
        f"({f['requests'] / f['seconds']:.1f}/s) {f['by_operation']}, {f['errors']} errors; "
        f"{f['images_acknowledged']} images acknowledged, {f['images_missing']} missing; "
        f"{f['tasks']} trainings: {f['tasks_finished']} finished, {f['tasks_failed']} failed, "
        f"{f['tasks_unfinished']} unfinished, {f['versions_missing']} versions missing; "
        f"API RSS {f['rss_after_warm_up_mb']} MB after warm-up, max {f['rss_max_mb']} MB "
        f"({f['rss_peak_growth']:+.1%}), last third {f['rss_growth']:+.1%}, end {f['rss_end_mb']} MB"
    )


def main() -> int:
    from infra.embedded import free_port
    from tests.support.servers import TagsmithServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagsmith-soak-") as folder:
        server = TagsmithServer(Path(folder) / "data", free_port(), SERVER_ENV)
        server.start()
        try:
            assert server.process is not None
            figures = soak(server.base, server.process.pid, args.seconds, args.clients)
        finally:
            server.stop()
    print(report(figures))
    ok = not (figures["errors"] or figures["images_missing"] or figures["versions_missing"])
    return 0 if ok and figures["rss_growth"] <= 0.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
