"""Benchmarks and evaluations; each runs as ``python -m bench.<name>`` and prints its own table."""

import shared  # noqa: F401,E402 - first: it pins the BLAS kernels before numpy loads
