"""How tagsmith runs: the gateway, the embedded default, the command line and deployment files."""

import shared  # noqa: F401,E402 - first: it pins the BLAS kernels before numpy loads
