"""The buffer-built Arrow arrays equal what pyarrow's own conversion makes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gmcf.runtime import arrow


@pytest.mark.parametrize("typ", [pa.int8(), pa.int32(), pa.int64(), pa.float32(), pa.float64()])
def test_numeric_with_and_without_nulls(typ: pa.DataType) -> None:
    v = np.array([3, -1, 7, 0, 5, 9, 2, 4, 8, 1], dtype=np.float64)
    valid = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    assert arrow.numeric(v, typ).equals(pa.array(v, typ))
    got = arrow.numeric(v, typ, valid)
    assert got.equals(pa.array(v, typ, mask=~valid))
    assert got.null_count == 3
    assert arrow.numeric(v, typ, np.ones(10, bool)).null_count == 0


@pytest.mark.parametrize(
    "values",
    [
        ["a", None, "héllo", None, ""],
        [None, None],
        [],
        ["the path never crossed the threshold"] * 3,
    ],
)
def test_strings(values: list[str | None]) -> None:
    assert arrow.strings(values).equals(pa.array(values, pa.string()))
    assert arrow.strings(np.array(values, dtype=object)).equals(pa.array(values, pa.string()))


def test_dictionary_with_nulls() -> None:
    cats = arrow.strings(["x", "y", "z"])
    got = arrow.dictionary(np.array([2, 0, 1, 1]), cats, pa.int8(), np.array([1, 1, 0, 1], bool))
    assert got.to_pylist() == ["z", "x", None, "y"]
    assert got.type == pa.dictionary(pa.int8(), pa.string())


def test_values_and_valid_mask_on_chunked_sliced_input() -> None:
    col = pa.chunked_array([pa.array([1, None, 3]), pa.array([4, 5, None, 7]).slice(1)])
    np.testing.assert_array_equal(arrow.valid_mask(col), [True, False, True, True, False, True])
    np.testing.assert_array_equal(
        arrow.values(col, pa.float64(), np.nan), [1, np.nan, 3, 5, np.nan, 7]
    )
    np.testing.assert_array_equal(arrow.values(col, pa.int64(), -1), [1, -1, 3, 5, -1, 7])
    empty = pa.chunked_array([], pa.int64())
    assert arrow.values(empty, pa.float64()).shape == (0,)
    nulls = pa.array([None, None], pa.null())
    np.testing.assert_array_equal(arrow.values(nulls, pa.float64(), np.nan), [np.nan, np.nan])
