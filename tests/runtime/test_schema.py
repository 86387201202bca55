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
    table = ds.table.take(
        pa.array(np.random.default_rng(0).choice(ds.table.num_rows, 500, replace=False))
    )
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
    assert image.to_dict() == {
        "name": "pixels",
        "kind": "image",
        "shape": [28, 28],
        "lo": 0.0,
        "hi": 1.0,
    }


# -- declared domains and category types ----------------------------------------------------------
def test_a_declared_domain_is_kept_from_schema_to_manifest_and_applied() -> None:
    from gmcf.runtime.schema import DataSchema

    schema = DataSchema.from_dict(
        {
            "features": {"integer": ["gain", "age"], "categorical": ["job"]},
            "label": "y",
            "positive_class": "1",
            "domain": {"gain": [0, None], "age": [0, 130]},
        }
    )
    assert [f.domain for f in schema.features] == [(0.0, None), (0.0, 130.0), (None, None)]
    table = pa.table({"gain": [0, 10, 400], "age": [20, 50, 70], "job": ["a", "b", "a"]})
    pre = Preprocessor.fit(table, schema.features)
    again = Preprocessor.from_dict(pre.to_dict())  # as the manifest stores it
    assert [f.domain for f in again.features] == [(0.0, None), (0.0, 130.0), (None, None)]
    queries = pa.table({"gain": [-1, 0, 500], "age": [30, 131, 19], "job": ["a", "a", "b"]})
    _, reason = again.transform(queries)
    assert list(reason) == [
        "gain: value outside the declared domain [0, inf]",
        "age: value outside the declared domain [0, 130]",
        None,
    ]


def test_training_data_outside_a_declared_domain_is_refused() -> None:
    with pytest.raises(
        InputError,
        match=r"'gain': training values -3..10 lie outside the declared domain \[0, inf\]",
    ):
        Preprocessor.fit(
            pa.table({"gain": [-3, 10]}), [Feature("gain", "integer", domain=(0.0, None))]
        )


@pytest.mark.parametrize(
    ("domain", "words"),
    [
        ({"nope": [0, None]}, "unknown feature"),
        ({"job": [0, 1]}, "numeric features only"),
        ({"gain": [5, 1]}, "lo > hi"),
        ({"gain": [0]}, "must be [lo, hi]"),
        ({"gain": ["0", None]}, "must be [lo, hi]"),
        ([0, 1], "must map feature names"),
    ],
)
def test_a_bad_domain_declaration_is_one_line(domain: object, words: str) -> None:
    from gmcf.runtime.errors import SchemaError
    from gmcf.runtime.schema import DataSchema

    with pytest.raises(SchemaError) as info:
        DataSchema.from_dict(
            {
                "features": {"integer": ["gain"], "categorical": ["job"]},
                "label": "y",
                "positive_class": "1",
                "domain": domain,
            }
        )
    assert words in str(info.value) and "\n" not in str(info.value)


def test_integer_columns_name_categories_only_when_the_categories_are_integers() -> None:
    grades = Preprocessor((Feature("grade", "categorical", categories=("1", "2", "10")),))
    grades.check_columns(pa.schema([("grade", pa.int64())]))
    x, reason = grades.transform(pa.table({"grade": pa.array([2, 10, 7], pa.int64())}))
    assert list(reason) == [None, None, "grade: unknown category"]
    assert x[0].tolist() == [0.0, 1.0, 0.0] and x[1].tolist() == [
        0.0,
        0.0,
        1.0,
    ]  # categories '1', '2', '10'
    jobs = Preprocessor((Feature("job", "categorical", categories=("clerk", "nurse")),))
    with pytest.raises(
        InputError, match=r"column 'job': expected a string category such as 'clerk', got int32"
    ):
        jobs.check_columns(pa.schema([("job", pa.int32())]))
    with pytest.raises(InputError, match="duplicate column names: 'job'"):
        jobs.check_columns(pa.schema([("job", pa.string()), ("job", pa.string())]))
