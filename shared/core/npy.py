"""Reading numpy's ``.npy`` and ``.npz`` bytes from many threads at once.

numpy parses an array's header with ``ast.literal_eval``, and CPython 3.11 keeps the AST
constructor's recursion count in state that every thread shares: two threads parsing at once can
fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). A
training job reads its examples' cached embeddings on a pool of threads, and failed so. A vector
of the one form tagsmith writes (``np.save`` of a 1-D float32 array) is read without the parser;
anything else is parsed under one lock.
"""

from __future__ import annotations

import io
import re
import threading

import numpy as np

_PARSING = threading.Lock()
_MAGIC = b"\x93NUMPY\x01\x00"
_VECTOR_HEADER = re.compile(rb"\{'descr': '<f4', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")


def load_array(data: bytes) -> np.ndarray:
    """The array ``np.save`` wrote into ``data``; ValueError if it is not one."""
    if data.startswith(_MAGIC) and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        header = _VECTOR_HEADER.fullmatch(data[10:end])
        if header is not None:
            size = int(header.group(1))
            if len(data) - end != 4 * size:
                raise ValueError(f"the array holds {len(data) - end} bytes, not {4 * size}")
            return np.frombuffer(data, dtype="<f4", count=size, offset=end).astype(np.float32)
    with _PARSING:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


def load_arrays(data: bytes, *names: str) -> tuple[np.ndarray, ...]:
    """The named arrays of the ``.npz`` archive in ``data``."""
    with _PARSING, np.load(io.BytesIO(data), allow_pickle=False) as found:
        return tuple(found[name] for name in names)


def load_every_array(data: bytes) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive in ``data``, by name."""
    with _PARSING, np.load(io.BytesIO(data), allow_pickle=False) as found:
        return {name: found[name] for name in found.files}
