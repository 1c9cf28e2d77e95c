"""The BLAS kernels custom heads are trained and scored with: the same on every x86-64 machine.

OpenBLAS (numpy's and scipy's each bundle one) picks its kernels by CPU, Haswell's on AVX2 and
SkylakeX's on AVX-512, and they round differently; cross-validation then moves held-out losses and
thresholds, and can pick another L2 strength (README "Same numbers on every machine"). Haswell's
kernels run on every x86-64 CPU with AVX2 and FMA, so they are pinned there, unless
``OPENBLAS_CORETYPE`` is set already. OpenBLAS reads the choice when it loads: ``pin_kernels``
runs when the ``shared`` package is first imported, and every entry point (the command line, the
functions, the worker, the benchmarks) imports it before numpy.

This module must not import numpy or scipy.
"""

from __future__ import annotations

import os
import platform
import sys

PINNED = "Haswell"
NEEDS = frozenset({"avx2", "fma"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def pinnable() -> bool:
    """Whether this CPU runs the pinned kernels."""
    return platform.machine().lower() in ("x86_64", "amd64") and cpu_flags() >= NEEDS


def pin_kernels() -> None:
    """Ask OpenBLAS for the pinned kernels where the CPU runs them and nobody chose others."""
    if "numpy" not in sys.modules and pinnable():
        os.environ.setdefault("OPENBLAS_CORETYPE", PINNED)


def expected() -> str | None:
    """The kernels this process should use: those ``OPENBLAS_CORETYPE`` names, else the pinned
    ones where the CPU runs them; None where OpenBLAS picks for itself."""
    return os.environ.get("OPENBLAS_CORETYPE") or (PINNED if pinnable() else None)


def kernels() -> str:
    """The kernels the loaded OpenBLAS libraries use, e.g. "Haswell" (several: comma-separated);
    call it once numpy and scipy are loaded."""
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    names = sorted({str(info.get("architecture")) for info in threadpool_info() if info.get("internal_api") == "openblas"})
    return ", ".join(names) or "no OpenBLAS"
