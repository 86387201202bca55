"""Preprocessing: fit on real rows, apply, and invert exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gmcf.datasets import load_dataset
from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import Feature, Preprocessor, usable_rows


def test_inverse_of_transform_gives_back_the_raw_rows() -> None:
    ds = load_dataset("lending-club")
    table = ds.table.take(pa.array(np.random.default_rng(0).choice(ds.table.num_rows, 500, replace=False)))
    pre = Preprocessor.fit(ds.table, ds.schema.features)
    x, reason = pre.transform(table)
    assert usable_rows(reason).all()
    assert x.shape == (500, pre.width) and x.dtype == np.float32
    back = pre.inverse(x)
    for f in pre.features:
        got = back[f.name]
        want = table.column(f.name).to_numpy(zero_copy_only=False)
        if f.kind == "categorical":
            assert got.cast(pa.string()).to_pylist() == list(want)
        elif f.kind == "integer":
            np.testing.assert_array_equal(got.to_numpy(), want)
        else:  # float32 in model space: exact to float32 precision of the range
            np.testing.assert_allclose(got.to_numpy(), want, rtol=0, atol=1e-6 * (f.hi - f.lo))


def test_an_integer_feature_with_fractions_is_refused() -> None:
    table = pa.table({"n": [1.0, 2.5, 3.0]})
    with pytest.raises(InputError, match="declared integer but holds non-integer values"):
        Preprocessor.fit(table, [Feature("n", "integer")])


def test_feature_kinds_say_what_they_are() -> None:
    """``is_numeric`` means a tabular number; an image is neither numeric nor categorical."""
    image = Feature.from_dict({"name": "pixels", "kind": "image", "shape": [28, 28]})
    kinds = {
        kind: Feature.from_dict({"name": "f", "kind": kind, "lo": 0, "hi": 1, "categories": ["a"]})
        for kind in ("continuous", "integer", "categorical")
    }
    assert kinds["continuous"].is_numeric and kinds["integer"].is_numeric
    assert not kinds["categorical"].is_numeric and kinds["categorical"].is_categorical
    assert not image.is_numeric and not image.is_categorical
    assert image.to_dict() == {"name": "pixels", "kind": "image", "shape": [28, 28], "lo": 0.0, "hi": 1.0}
