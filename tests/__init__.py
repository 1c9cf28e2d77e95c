
import shared  # noqa: F401,E402 - first: it pins the BLAS kernels before numpy loads
