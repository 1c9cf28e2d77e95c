"""Process-wide settings for tagsmith's servers and workers, applied once at start-up.

- glibc malloc arenas are capped at one per core (at least 2): with a threadpool serving
  requests, each thread's own arena otherwise keeps freed image buffers, and memory creeps up.
- Blocks of 4 MiB and more are always mapped on their own, so freeing one gives it back to the
  system at once (glibc's threshold otherwise rises to 32 MiB after the first large free, and the
  16 MiB blocks Pillow holds decoded images in then stay in the heap: after a burst of large
  images a server kept gigabytes it no longer used).
- numpy's and scipy's BLAS run single-threaded. Every matrix tagsmith multiplies on the CPU is
  small (a thousand heads, a Gram matrix of 400 examples), and BLAS threads that spin while the
  cores are busy with decoding or the backbone made head training 10-30x slower on 2 cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` counts the host's cores, also inside a container limited to two of them
    (``docker run --cpus 2``, a Kubernetes CPU limit), where that many threads would only queue.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


@functools.cache
def tune_process() -> None:
    """Apply the settings above; later calls do nothing."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-8, max(2, usable_cores()))  # M_ARENA_MAX
            libc.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD, fixed
    import numpy  # noqa: F401  (both BLAS libraries must be loaded to be limited)
    import scipy.optimize  # noqa: F401
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1, user_api="blas")


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def cpu_pool() -> ThreadPoolExecutor:
    """The process's pool for decoding and resizing (Pillow releases the GIL): one thread per core."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="pixels")
        return _pool


class KeyedLocks:
    """One lock per key, existing only while someone holds or waits for it: work on one key (making
    one image's thumbnail) happens once at a time, work on others goes on."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
