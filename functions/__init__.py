"""One small stateless Starlette app per endpoint group; each module exposes ``routes`` and ``app``."""

import shared  # noqa: F401,E402 - first: it pins the BLAS kernels before numpy loads
