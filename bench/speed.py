"""Speed of tagsmith against the limits of this machine, measured side by side in one run.

It measures the raw backbone (torch eager, ONNX Runtime, OpenVINO) on preprocessed tensors,
then starts ``tagsmith serve`` on a free port and measures the service over HTTP, taking turns
with each figure's baseline, and prints each figure next to its baseline and the ratio, then the
CPU time of the image work /predict does besides the forward pass (decoding, resampling the crop,
the base styles). Exits 1 if one of its targets is missed: 1,000 tags against 1, adds, training,
peak memory. The throughput and latency targets of the service are ``bench.versus``'s (against a
plain server and the pipeline limit); here those figures are shown against the raw runtime.

    python -m bench.speed [--seconds 8] [--clients 16]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.load import Connection, keep_alive_clients, upload_request
from bench.photos import source
from infra.embedded import free_port
from shared.core.process import usable_cores
from shared.core.settings import Settings
from shared.data.keys import embedding_key
from shared.data.store import LocalStore
from shared.domain.embeddings import to_bytes
from shared.models.archive import ModelRecord, pack
from shared.models.backbone import LITE0, RUNTIMES, preprocess
from shared.models.backbone.exported import OnnxRuntimeBackbone, OpenVinoBackbone, export_onnx
from shared.models.backbone.lite0 import EfficientNetLite0
from shared.models.base_styles import style_scores
from shared.models.decoding import decode_image
from shared.models.heads import Head
from tests.support.servers import TagsmithServer

THREADS = usable_cores()
DEFAULTS = Settings()  # the model cache and limits the served process uses too


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def rate(work: Callable[[], int], seconds: float) -> float:
    """Items per second of ``work`` (which returns how many items it did), after one warm-up call."""
    work()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)


Step = Callable[[], int]


def raw_runtimes(seconds: float, batches: tuple[int, ...]) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, Step]]]:
    """Images per second of each runtime's forward pass alone, by batch size: ONNX Runtime with
    its default session options (memory arena, spinning threads), OpenVINO with the latency hint."""
    import onnxruntime as ort

    path = export_onnx(DEFAULTS.model_cache_dir)
    tensor = preprocess(source("astronaut"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    onnx_runtime = OnnxRuntimeBackbone(path, THREADS)
    onnx_runtime.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runtimes = {
        "torch eager": EfficientNetLite0("cpu", THREADS),
        "ONNX Runtime": onnx_runtime,
        "OpenVINO": OpenVinoBackbone(path, THREADS),
    }
    result: dict[str, dict[int, float]] = {}
    steps: dict[str, dict[int, Step]] = {}
    for name, backbone in runtimes.items():
        result[name], steps[name] = {}, {}
        for n in batches:
            batch = np.repeat(tensor[None], n, axis=0)
            if isinstance(backbone, EfficientNetLite0):
                import torch

                def step(b: np.ndarray = batch, m: EfficientNetLite0 = backbone) -> int:
                    with torch.inference_mode():
                        m.forward(torch.from_numpy(b))
                    return len(b)
            else:
                def step(b: np.ndarray = batch, m=backbone) -> int:  # type: ignore[no-untyped-def]
                    m._run(b)
                    return len(b)
            result[name][n] = rate(step, seconds)
            steps[name][n] = step
    return result, steps


class Server(TagsmithServer):
    """``tagsmith serve`` on a free port with its own data folder, backbone loaded, for the HTTP figures."""

    def __init__(self, folder: Path, runtime: str = "auto") -> None:
        cache = str(DEFAULTS.model_cache_dir)
        super().__init__(folder, free_port(), {"TAGSMITH_MODEL_CACHE_DIR": cache, "TAGSMITH_RUNTIME": runtime})
        self.start(timeout=180)
        httpx.post(self.base + "/predict", files={"data": jpeg(source("coffee"))}, timeout=120)  # load the backbone
        # The embedded worker loads its own backbone at start: measuring before it is idle would
        # share the cores with that.
        self.wait_for_worker()

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def interleaved_rates(measures: dict[str, Callable[[float], float]], seconds: float, slices: int = 4) -> dict[str, float]:
    """Each measure's mean rate over ``slices`` rounds in which every measure runs for
    ``seconds / slices`` in turn: on a noisy machine, all of them see the same moments."""
    totals = dict.fromkeys(measures, 0.0)
    for _ in range(slices):
        for name, measure in measures.items():
            totals[name] += measure(seconds / slices)
    return {name: total / slices for name, total in totals.items()}


def concurrent_rate(url: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[float, int]:
    """Requests per second from ``clients`` connections posting the payloads in turn; and the errors."""
    answers, errors, took = keep_alive_clients(url, [upload_request(url, p) for p in payloads], clients, seconds)
    return answers / took, errors


def _ok(reply: tuple[int, bytes]) -> None:
    status, body = reply
    if status >= 400:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")


def thread_cpu_ms(work: Callable[[], object], repeats: int = 15) -> float:
    """Median CPU time of one call of ``work`` on this thread, in ms: what it costs a core,
    however busy the machine is."""
    samples = []
    for _ in range(repeats):
        started = time.thread_time()
        work()
        samples.append((time.thread_time() - started) * 1000)
    return statistics.median(samples)


def image_work_ms(payloads: list[bytes]) -> dict[str, float]:
    """CPU ms per image, averaged over ``payloads``, of the work /predict does on an upload besides
    the forward pass: decoding, resampling the crop, measuring the base styles."""
    max_pixels = DEFAULTS.max_image_pixels
    images = [decode_image(payload, max_pixels).image for payload in payloads]
    stages: dict[str, list[Callable[[], object]]] = {
        "decode": [partial(decode_image, payload, max_pixels) for payload in payloads],
        "crop": [partial(preprocess, image) for image in images],
        "styles": [partial(style_scores, image) for image in images],
    }
    return {stage: statistics.mean(thread_cpu_ms(work) for work in works) for stage, works in stages.items()}


def timed_ms(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


def paired_latency_ms(url: str, payload: bytes, raw_step: Step, count: int) -> tuple[float, float]:
    """Medians of one request at a time and of the raw batch-1 forward pass, taken in turns so
    that both see the same moments of a noisy machine."""
    requests, forwards = [], []
    request = upload_request(url, payload)
    with Connection(url) as connection:

        def post() -> None:
            _ok(connection.send(request))

        post()
        raw_step()  # warm both up
        for _ in range(count):
            requests.append(timed_ms(post))
            forwards.append(timed_ms(raw_step))
    return statistics.median(requests), statistics.median(forwards)


def tags_latency_ms(base: str, payload: bytes, counts: tuple[int, int], rounds: int = 6, per_round: int = 8) -> list[float]:
    """Median latency of POST /predict/custom with each number of tags, the states taking turns."""
    archives = [many_heads(count) for count in counts]
    times: list[list[float]] = [[] for _ in counts]
    request = upload_request(base + "/predict/custom", payload)
    with httpx.Client(base_url=base, timeout=300) as http, Connection(base) as connection:

        def post() -> None:
            _ok(connection.send(request))

        for _ in range(rounds):
            for archive, samples in zip(archives, times, strict=True):
                http.post("/set_state", files={"data": archive}).raise_for_status()
                post()
                samples.extend(timed_ms(post) for _ in range(per_round))
    return [statistics.median(samples) for samples in times]


def many_heads(count: int) -> bytes:
    rng = np.random.default_rng(0)
    width = LITE0.embedding_size + LITE0.style_size
    records = [
        ModelRecord(f"tag {i:04d}", 1, 0.5, "2026-01-01T00:00:00Z",
                    Head(rng.normal(0, 0.01, width).astype(np.float32), 0.0), "both")
        for i in range(count)
    ]
    return pack(records, LITE0)


def cached_training(base: str, data_dir: Path, count: int = 1000, tag: str = "cached") -> tuple[float, float]:
    """A real training job over HTTP for a tag with ``count`` labelled images whose embeddings are
    already cached: (seconds from the train request to the finished status, enqueue to started ms)."""
    rng = np.random.default_rng(2)
    store = LocalStore(data_dir / "objects")
    width = LITE0.embedding_size + LITE0.style_size
    tiny = jpeg(Image.new("RGB", (32, 32), (90, 120, 150)))
    with httpx.Client(base_url=base, timeout=120) as http:
        for i in range(count):
            image_id = f"{tag}-{i}"
            http.post("/custom/add", params={"image_id": image_id}, files={"data": tiny}).raise_for_status()
            positive = i % 3 == 0
            vector = rng.normal(size=width).astype(np.float32) + (0.3 if positive else 0.0)
            store.put(embedding_key(LITE0.id, image_id), to_bytes(vector))
            http.post(f"/custom/assign/{image_id}/{'positive' if positive else 'negative'}/{tag}").raise_for_status()
        wait_for_idle_worker(http)
        started = time.perf_counter()
        task = http.post(f"/custom/train/{tag}").json()["task_id"]
        while (status := http.get(f"/status/{task}").json())["status"] not in ("finished", "failed"):
            time.sleep(0.005)
        wall = time.perf_counter() - started
    if status["status"] != "finished":
        raise SystemExit(f"the training failed: {status.get('error')}")
    return wall, queued_ms(status)


def wait_for_idle_worker(http: httpx.Client, timeout: float = 600) -> None:
    """Until the worker has embedded every added image and waits on its queues (the earlier
    figures' adds leave it a backlog), then one more second."""
    deadline = time.monotonic() + timeout
    while (library := http.get("/custom/library").json())["pending"] or library["tasks"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker is still busy after {timeout:.0f} s: {library['pending']} images pending")
        time.sleep(0.5)
    time.sleep(1.0)


def queued_ms(status: dict[str, Any]) -> float:
    """Milliseconds a task waited from enqueued to started, from its ``/status``."""
    waited = np.datetime64(status["started_at"].rstrip("Z")) - np.datetime64(status["enqueued_at"].rstrip("Z"))
    return float(waited / np.timedelta64(1, "us")) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES, help="the server's TAGSMITH_RUNTIME")
    args = parser.parse_args()
    batch = DEFAULTS.predict_batch_size
    rows: list[tuple[str, str, float, str, float, float | None, str]] = []  # figure, value, baseline, ratio, target

    def row(name: str, value: float, unit: str, baseline_name: str, baseline: float, target: float | None, better: str) -> None:
        rows.append((name, f"{value:.1f} {unit}", baseline, baseline_name, value / baseline, target, better))

    raw, steps = raw_runtimes(args.seconds / 2, tuple(sorted({1, 8, batch, 32})))
    print("raw backbone, images/s (forward pass only, preprocessed 224x224):")
    for name, by_batch in raw.items():
        print(f"  {name:13s} " + "  ".join(f"batch {n}: {v:6.1f}" for n, v in by_batch.items()))
    best_single = max(("ONNX Runtime", "OpenVINO"), key=lambda n: raw[n][1])

    phone = source("retina").resize((4000, 3000), Image.Resampling.BICUBIC)
    phone_jpeg = jpeg(phone, 92)
    started = time.perf_counter()
    Image.open(io.BytesIO(phone_jpeg)).convert("RGB")
    full_ms = (time.perf_counter() - started) * 1000
    draft_ms = 1000 / rate(lambda: (decode_image(phone_jpeg, 50_000_000), 1)[1], 2)
    print(f"12 MP JPEG decode: full {full_ms:.0f} ms, tagsmith (draft mode) {draft_ms:.0f} ms")

    photos = [jpeg(source(name)) for name in ("astronaut", "coffee", "rocket", "chelsea")]
    megapixel = [jpeg(source(n).resize((1155, 866))) for n in ("astronaut", "coffee", "rocket", "chelsea")]
    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder) / "data", args.runtime)
        try:
            errors = 0

            def service(payloads: list[bytes]) -> Callable[[float], float]:
                def measure(seconds: float) -> float:
                    nonlocal errors
                    images_per_second, failed = concurrent_rate(server.base + "/predict", payloads, args.clients, seconds)
                    errors += failed
                    return images_per_second

                return measure

            # The raw runtimes and the service take turns, so that all see the same moments of the machine.
            rates = interleaved_rates(
                {
                    **{name: partial(rate, steps[name][batch]) for name in ("ONNX Runtime", "OpenVINO")},
                    "photos": service(photos),
                    "phone": service([phone_jpeg]),
                },
                args.seconds,
            )
            best_name = max(("ONNX Runtime", "OpenVINO"), key=lambda name: rates[name])
            baseline_name = f"{best_name} batch {batch}, in turns"
            row("POST /predict, 0.3 MP photos", rates["photos"], "img/s", baseline_name, rates[best_name], None, "higher")
            row("POST /predict, 12 MP JPEGs", rates["phone"], "img/s", baseline_name, rates[best_name], None, "higher")
            p50, forward_ms = paired_latency_ms(server.base + "/predict", photos[0], steps[best_single][1], 40)
            rows.append(("POST /predict p50, one client", f"{p50:.1f} ms", forward_ms,
                         f"{best_single} batch-1 forward, in turns (ms)", p50 / forward_ms, None, "lower"))
            image_work = {"0.3 MP photos": image_work_ms(photos), "12 MP JPEGs": image_work_ms([phone_jpeg])}


            one_tag, thousand = tags_latency_ms(server.base, photos[0], (1, 1000))
            rows.append(("POST /predict/custom p50, 1000 tags", f"{thousand:.1f} ms", one_tag,
                         "same with 1 tag, in turns (ms)", thousand / one_tag, 1.05, "lower"))

            counter = iter(range(10**9))
            connections: list[Connection] = []
            local = threading.local()

            def add_one(_: int) -> int:
                if not hasattr(local, "connection"):
                    local.connection = Connection(server.base)
                    connections.append(local.connection)
                url = server.base + f"/custom/add?image_id=mp-{next(counter)}"
                return local.connection.send(upload_request(url, megapixel[0]))[0]

            try:
                with ThreadPoolExecutor(8) as pool:

                    def add_many_images() -> int:
                        nonlocal errors
                        results = list(pool.map(add_one, range(64)))
                        errors += sum(code >= 400 for code in results)
                        return len(results)

                    add_rate = rate(add_many_images, args.seconds / 2)
            finally:
                for connection in connections:
                    connection.close()
            rows.append(("POST /custom/add, 1 MP JPEGs", f"{add_rate:.0f} img/s", 200.0, "target (img/s)",
                         add_rate / 200.0, 1.0, "higher"))

            job_s, queued_ms = cached_training(server.base, Path(folder) / "data")
            rows.append(("training job, 1000 cached embeddings (train request to finished)", f"{job_s:.2f} s", 2.0,
                         "target (s)", job_s / 2.0, 1.0, "lower"))
            rows.append(("training job, enqueue to started on an idle worker", f"{queued_ms:.0f} ms", 100.0,
                         "target (ms)", queued_ms / 100.0, 1.0, "lower"))

            rss = server.peak_rss_mb()
            rows.append(("peak RSS of the predict process", f"{rss:.0f} MB", 600.0, "target (MB)", rss / 600, 1.0, "lower"))
        finally:
            server.stop()

    print(f"\nmachine: {THREADS} cores; clients: {args.clients}; server runtime: {args.runtime}; "
          f"server batch: {batch}; HTTP errors: {errors}")
    print("| figure | value | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    missed = []
    for name, value, baseline, baseline_name, ratio, target, better in rows:
        ok = target is None or (ratio >= target if better == "higher" else ratio <= target)
        goal = "(shown; see bench.versus)" if target is None else \
            f"{'≥' if better == 'higher' else '≤'} {target}{'' if ok else ' MISSED'}"
        print(f"| {name} | {value} | {baseline_name}: {baseline:.1f} | {ratio:.2f} | {goal} |")
        if not ok:
            missed.append(name)
    print("\nImage work /predict does besides the forward pass, CPU ms per image on one core: " + "; ".join(
        f"{size} {sum(work.values()):.1f} (" + " + ".join(f"{stage} {ms:.1f}" for stage, ms in work.items()) + ")"
        for size, work in image_work.items()))
    return 1 if missed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
