"""The output table: one documented schema (``RESULT_COLUMNS``), each batch assembled by name
against it: the id and the query's columns, then the decode step's result columns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from gmcf.runtime import arrow
from gmcf.runtime.arrow import numeric
from gmcf.runtime.metrics import option_diversity as option_diversity
from gmcf.runtime.schema import IMAGE, Feature, ImagePreprocessor, Preprocessor, image_type

if TYPE_CHECKING:
    from gmcf.runtime.decode import ExplainedBatch

_DICT_STRING = pa.dictionary(pa.int8(), pa.string())

#: The result columns that follow the query's features and the ``cf_<feature>`` columns, in
#: order: (name, Arrow type, description). The README's output table is generated from this.
RESULT_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    (
        "status",
        _DICT_STRING,
        "`found`, `already_target` (f already gives the positive class), `not_found`, or `invalid`",
    ),
    ("reason", pa.string(), "why a row is `not_found` or `invalid`; null otherwise"),
    (
        "score",
        pa.float32(),
        "f(x): the classifier's probability of the positive class for the query; null if invalid",
    ),
    (
        "cf_score",
        pa.float32(),
        "f(x_cf) for the counterfactual exactly as returned; null unless found",
    ),
    (
        "alpha",
        pa.float32(),
        "interpolation weight a of z_s = (1 - a) z + a mu_1 that gave the counterfactual (> 1 if "
        "extrapolated; for `anchored`, the weight toward the approved training row's code)",
    ),
    (
        "search",
        _DICT_STRING,
        "how it was found: `grid`, `refined` (bisection of the crossing), `extrapolated` (past "
        "mu_1) or `anchored` (the last resort: toward nearby approved training rows)",
    ),
    ("evaluations", pa.int32(), "candidates f scored for the row (0 unless searched)"),
    (
        "proximity_l2",
        pa.float32(),
        "L2 distance between query and counterfactual in the model's input space",
    ),
    (
        "sparsity_l1",
        pa.float32(),
        "L1 norm of the change in the model's input space (the paper's sparsity)",
    ),
    ("sparsity_l0", pa.int32(), "number of features whose value changed"),
    (
        "reconstruction_error",
        pa.float32(),
        "the autoencoder's mean squared reconstruction error on the counterfactual",
    ),
    (
        "plausibility",
        pa.float32(),
        "log-density of the counterfactual's latent code E(x_cf) under the target class's Gaussian "
        "(higher: more typical of rows f approves)",
    ),
    (
        "reverted",
        pa.int32(),
        "changes of the latent answer put back because f did not need them (0 with `--no-revert`)",
    ),
)


def query_type(f: Feature) -> pa.DataType:
    if f.kind == IMAGE:
        return image_type(f)
    return pa.string() if f.is_categorical else pa.float64()


def cf_type(f: Feature) -> pa.DataType:
    if f.kind == IMAGE:
        return image_type(f)
    if f.kind == "integer":
        return pa.int64()
    if f.kind == "continuous":
        return pa.float64()
    return pa.dictionary(pa.int32(), pa.string())


RANK_COLUMN = (
    "cf_rank",
    pa.int32(),
    "only with `--num-cfs K > 1`: rank of this option among the query's counterfactuals (1 = "
    "nearest); null when the query has none",
)


def output_schema(
    pre: Preprocessor, id_field: pa.Field | None = None, ranked: bool = False
) -> pa.Schema:
    """Schema of the explanation table for a bundle's features."""
    fields: list[pa.Field] = [] if id_field is None else [id_field]
    fields += [pa.field(f.name, query_type(f)) for f in pre.features]
    fields += [pa.field(f"cf_{f.name}", cf_type(f)) for f in pre.features]
    if ranked:
        fields.append(pa.field(RANK_COLUMN[0], RANK_COLUMN[1]))
    fields += [pa.field(name, typ) for name, typ, _ in RESULT_COLUMNS]
    return pa.schema(fields)


def query_columns(
    pre: Preprocessor, batch: pa.RecordBatch | pa.Table, id_column: str | None
) -> list[tuple[str, pa.Array]]:
    """The output's leading columns, by name: the id (if any) and the query's features, as given."""
    cols: list[tuple[str, pa.Array]] = []
    if id_column is not None:
        col = batch.column(id_column)
        cols.append((id_column, col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col))
    for f in pre.features:
        col = batch.column(f.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(pre, ImagePreprocessor):
            cols.append((f.name, pre.echo(col)))
            continue
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols.append((f.name, col.cast(query_type(f), safe=False)))
    return cols


def output_batch(
    schema: pa.Schema,
    pre: Preprocessor,
    batch: pa.RecordBatch | pa.Table,
    id_column: str | None,
    explained: ExplainedBatch,
) -> pa.RecordBatch:
    """One output batch: the query's columns (repeated per option when ``explained.source`` is
    given), then its result columns, each matched by name to a field of ``schema``."""
    if explained.source is not None:
        batch = batch.take(numeric(explained.source, pa.int64()))
    query = query_columns(pre, batch, id_column)
    named = [*query, *as_given(pre, dict(query), explained.columns).items()]
    names = [name for name, _ in named]
    if names != schema.names:
        raise AssertionError(
            f"output columns {names} do not match the output schema {schema.names}"
        )
    n = explained.num_rows
    cols = [col for _, col in named]
    assert all(len(c) == n for c in cols)
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def as_given(
    pre: Preprocessor, query: dict[str, pa.Array], columns: dict[str, pa.Array]
) -> dict[str, pa.Array]:
    """``columns`` with every continuous ``cf_<feature>`` that equals the query's value to the
    model's float32 precision (a change the revert step put back, a feature the walk left)
    replaced by the query's value exactly, so that an unchanged value reads unchanged."""
    out = dict(columns)
    for f in pre.numeric:
        if f.kind != "continuous":
            continue
        name = f"cf_{f.name}"
        q = np.asarray(arrow.values(query[f.name], pa.float64(), np.nan), np.float64)
        c = np.asarray(arrow.values(columns[name], pa.float64(), np.nan), np.float64)
        span = max(float(f.hi or 0.0) - float(f.lo or 0.0), 1.0)
        same = np.abs(c - q) <= 1e-6 * span
        if same.any():
            out[name] = numeric(np.where(same, q, c), pa.float64(), arrow.valid_mask(columns[name]))
    return out
