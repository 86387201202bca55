"""The output batch is assembled by name against the one schema (runtime/output.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from gmcf.datasets import load_dataset
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.output import RESULT_COLUMNS, output_batch


@pytest.fixture(scope="module")
def queries() -> pa.Table:
    ds = load_dataset("adult")
    return ds.table.slice(0, 300).drop_columns([ds.schema.label])


def test_result_columns_follow_the_schema_by_name(adult_bundle: Path, queries: pa.Table) -> None:
    ex = Explainer.from_bundle(adult_bundle)
    explained = ex.explain_batch(queries)
    names = list(explained.columns)
    assert names[-len(RESULT_COLUMNS) :] == [name for name, _, _ in RESULT_COLUMNS]
    assert names[: -len(RESULT_COLUMNS)] == [f"cf_{n}" for n in ex.bundle.preprocessor.names]
    schema = ex.output_schema(queries.schema)
    out = output_batch(schema, ex.bundle.preprocessor, queries, None, explained)
    assert out.schema.equals(schema) and out.num_rows == queries.num_rows
    for name, col in explained.columns.items():
        assert out.column(name).equals(col)


def test_a_result_column_out_of_place_is_refused(adult_bundle: Path, queries: pa.Table) -> None:
    ex = Explainer.from_bundle(adult_bundle)
    explained = ex.explain_batch(queries)
    cols = dict(explained.columns)
    cols["score"], cols["cf_score"] = cols.pop("cf_score"), cols.pop("score")
    schema = ex.output_schema(queries.schema)
    with pytest.raises(AssertionError, match="do not match the output schema"):
        output_batch(
            schema, ex.bundle.preprocessor, queries, None, replace(explained, columns=cols)
        )
