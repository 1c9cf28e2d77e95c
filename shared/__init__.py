"""What the functions and the worker share: settings, storage, Redis data model, queue, images, models."""

from shared.core.blas import pin_kernels

pin_kernels()  # before anything loads numpy: the same BLAS kernels on every x86-64 machine
