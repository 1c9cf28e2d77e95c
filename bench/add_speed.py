"""Throughput of ``POST /custom/add`` alone, the way ``bench.speed`` measures it, for quick comparisons.

Starts ``tagsmith serve`` on a free port with a temp data folder for each code tree given (the
current one by default), then measures them in turn, round after round, so that a noisy machine
hits each alike; prints img/s per round and the median. Optionally samples the server with py-spy.

    python -m bench.add_speed [--seconds 4] [--rounds 3] [--tree OTHER_CHECKOUT ...] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import httpx

from bench.photos import source
from bench.speed import ROOT, jpeg
from infra.embedded import free_port


class AddServer:
    """``tagsmith serve`` from the code tree ``root``, without loading any model."""

    def __init__(self, root: Path, folder: Path, pythonpath: str | None = None) -> None:
        self.root = root
        self.label = f"{root} with PYTHONPATH={pythonpath}" if pythonpath else str(root)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSMITH_")}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve", "--port", str(self.port), "--data-dir", str(folder)],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"tagsmith serve from {root} did not become ready")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the server and by each of its children (Redis, the worker)."""
        tick = os.sysconf("SC_CLK_TCK")

        def used(pid: int, part: slice = slice(11, 13)) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            return sum(int(x) for x in fields[part]) / tick

        out = {"server": used(self.process.pid), "(server kernel)": used(self.process.pid, slice(12, 13))}
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for child in children:
            name = Path(f"/proc/{child}/comm").read_text().strip()
            out[name] = out.get(name, 0.0) + used(int(child))
        return out

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def add_rate(base: str, payload: bytes, seconds: float, ids: count) -> tuple[float, int]:
    """What bench.speed does: one shared client, 8 threads, 64 requests a round, for ``seconds``."""
    errors = 0
    with httpx.Client(timeout=300) as http:

        def batch() -> int:
            nonlocal errors
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: http.post(f"{base}/custom/add?image_id=mp-{next(ids)}",
                                                          files={"data": payload}).status_code, range(64)))
            errors += sum(code >= 400 for code in codes)
            return len(codes)

        batch()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            done += batch()
        return done / (time.perf_counter() - started), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", type=Path, help="another code tree to measure beside this one")
    parser.add_argument("--with-path", help="also measure this tree with PYTHONPATH set to this (e.g. extra packages)")
    parser.add_argument("--py-spy", help="py-spy binary: record the (first) server during one extra round")
    args = parser.parse_args()
    trees = [ROOT, *(args.tree or [])]
    payload = jpeg(source("astronaut").resize((1155, 866)))
    ids = count()
    results: list[list[float]] = [[] for _ in trees]
    with tempfile.TemporaryDirectory() as folder:
        servers = [AddServer(tree.resolve(), Path(folder) / f"data{i}") for i, tree in enumerate(trees)]
        if args.with_path:
            servers.append(AddServer(ROOT, Path(folder) / "data-with-path", args.with_path))
            results.append([])
        try:
            for r in range(args.rounds):
                for i, server in enumerate(servers):
                    before, client_before, started = server.cpu_seconds(), os.times(), time.perf_counter()
                    value, errors = add_rate(server.base, payload, args.seconds, ids)
                    images = value * (time.perf_counter() - started)  # about: the warm-up batch is not in value
                    after, client_after = server.cpu_seconds(), os.times()
                    client = client_after.user + client_after.system - client_before.user - client_before.system
                    cpu = {name: (after[name] - before.get(name, 0.0)) * 1000 / images for name in after}
                    cpu["client"] = client * 1000 / images
                    results[i].append(value)
                    print(f"round {r + 1}: {server.label}: {value:.0f} img/s, {errors} errors; CPU ms per image: "
                          + ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items()), flush=True)
            if args.py_spy:
                out = Path(folder).parent / "add-profile.txt"
                spy = subprocess.Popen([args.py_spy, "record", "-p", str(servers[0].process.pid), "-f", "raw",
                                        "-o", str(out), "-r", "250", "--gil", "-d", str(int(args.seconds) + 1)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                add_rate(servers[0].base, payload, args.seconds, ids)
                spy.wait()
                print(f"py-spy profile (raw, collapsed stacks): {out}")
        finally:
            for server in servers:
                server.stop()
    for server, values in zip(servers, results):
        print(f"{server.label}: median {statistics.median(values):.0f} img/s over {len(values)} rounds "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
