"""Arrow arrays straight from numpy memory.

``pa.array`` goes through pyarrow's pandas-aware conversion, whose first call imports pandas: about
0.3 s of every run's start-up, for a library the runtime does not use. These builders make the
same arrays from buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_NUMPY = {
    pa.int8(): np.int8,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def validity_buffer(valid: np.ndarray | None, n: int) -> tuple[pa.Buffer | None, int]:
    """Arrow validity bitmap of ``valid`` (True = a value) for n entries, and the null count;
    (None, 0) when nothing is null."""
    if valid is None:
        return None, 0
    valid = np.asarray(valid, dtype=bool)
    nulls = n - int(np.count_nonzero(valid))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def numeric(values: np.ndarray, typ: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A fixed-width array of ``typ`` (int8/32/64, float32/64) holding ``values``; entries where
    ``valid`` is False are null."""
    data = np.ascontiguousarray(values, dtype=_NUMPY[typ])
    bitmap, nulls = validity_buffer(valid, len(data))
    return pa.Array.from_buffers(typ, len(data), [bitmap, pa.py_buffer(data)], null_count=nulls)


def strings(values: Sequence[str | None] | np.ndarray) -> pa.Array:
    """A string array from Python strings and None (null). Only the non-null entries are
    visited in Python, so a mostly-null column (the ``reason`` of a batch) costs little."""
    arr = values if isinstance(values, np.ndarray) else np.array(values, dtype=object)
    n = len(arr)
    valid = np.asarray(arr != None, dtype=bool)  # noqa: E711 - elementwise on an object array
    present = np.flatnonzero(valid)
    encoded = [str(arr[i]).encode() for i in present]
    lengths = np.zeros(n, np.int32)
    lengths[present] = [len(b) for b in encoded]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    bitmap, nulls = validity_buffer(valid, n)
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
        null_count=nulls,
    )


def boolean(mask: np.ndarray) -> pa.Array:
    """A boolean array (no nulls) from a numpy mask."""
    mask = np.asarray(mask, dtype=bool)
    return pa.Array.from_buffers(
        pa.bool_(), len(mask), [None, pa.py_buffer(np.packbits(mask, bitorder="little"))]
    )


_INT32 = pa.int32()


def dictionary(
    indices: np.ndarray,
    values: pa.Array,
    index_type: pa.DataType = _INT32,
    valid: np.ndarray | None = None,
) -> pa.DictionaryArray:
    """A dictionary-encoded array: ``indices`` into ``values``, null where ``valid`` is False."""
    return pa.DictionaryArray.from_arrays(numeric(indices, index_type, valid), values)


def _flat(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def valid_mask(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean [n]: True where ``col`` is not null."""
    arr = _flat(col)
    n = len(arr)
    if arr.null_count == 0:
        return np.ones(n, bool)
    if arr.null_count == n and arr.buffers()[0] is None:
        return np.zeros(n, bool)
    bits = np.frombuffer(arr.buffers()[0], np.uint8)
    return np.unpackbits(bits, bitorder="little", count=arr.offset + n)[arr.offset :].astype(bool)


def values(col: pa.Array | pa.ChunkedArray, typ: pa.DataType, fill: float | int = 0) -> np.ndarray:
    """``col`` cast to ``typ`` (int8/32/64, float32/64) as a new numpy array, nulls set to
    ``fill``."""
    arr = _flat(col.cast(typ))
    n = len(arr)
    dtype = np.dtype(_NUMPY[typ])
    data = arr.buffers()[1]
    out = (
        np.full(n, fill, dtype)
        if data is None
        else np.frombuffer(data, dtype)[arr.offset : arr.offset + n].copy()
    )
    if arr.null_count:
        out[~valid_mask(arr)] = fill
    return np.asarray(out)
