"""The RQ worker: keeps the backbone loaded across jobs and trains custom heads."""

import shared  # noqa: F401,E402 - first: it pins the BLAS kernels before numpy loads
