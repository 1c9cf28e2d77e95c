"""Reading numpy arrays on many threads: the embeddings tagsmith caches are read without numpy's
header parser, which CPython 3.11 cannot run on two threads at once."""

from __future__ import annotations

import ast
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared.core.npy import load_array, load_arrays, load_every_array
from shared.domain.embeddings import to_bytes, vector_from_bytes


def saved(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def test_a_cached_embedding_is_read_without_the_header_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training's embeddings read on a pool of threads failed with "SystemError: AST constructor
    recursion depth mismatch": numpy parses each header with ast.literal_eval."""
    vector = np.random.default_rng(0).standard_normal(2352).astype(np.float32)
    data = to_bytes(vector)

    def no_parser(*args: object) -> object:
        raise AssertionError("numpy's header parser was used")

    monkeypatch.setattr(ast, "literal_eval", no_parser)
    with ThreadPoolExecutor(8) as pool:
        read = list(pool.map(lambda _: vector_from_bytes(data, 2352), range(64)))
    assert all(r is not None and r.dtype == np.float32 and np.array_equal(r, vector) for r in read)
    assert read[0] is not None and read[0].flags.writeable
    assert vector_from_bytes(data, 2351) is None  # another width: not this backbone's
    with pytest.raises(ValueError):
        load_array(data[:-4])  # cut short


def test_other_arrays_and_archives_are_still_read() -> None:
    for array in (np.arange(6, dtype=np.int64).reshape(2, 3), np.ones(3, dtype=">f4"), np.zeros(0, np.float32)):
        assert np.array_equal(load_array(saved(array)), array)
    assert vector_from_bytes(b"not an array", 3) is None
    out = io.BytesIO()
    np.savez(out, rows=np.arange(3), vectors=np.ones((3, 2), np.float16))
    rows, vectors = load_arrays(out.getvalue(), "rows", "vectors")
    assert rows.tolist() == [0, 1, 2] and vectors.shape == (3, 2)
    assert set(load_every_array(out.getvalue())) == {"rows", "vectors"}
