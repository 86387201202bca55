"""The output table: one documented schema, built batch by batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gmcf.runtime.metrics import changed_features, proximity_l2, sparsity_l1
from gmcf.runtime.schema import Feature, Preprocessor
from gmcf.runtime.search import FOUND, NOT_FOUND, SEARCH_KINDS, STATUSES, SearchResult

_STATUS_DICT = pa.array(list(STATUSES), pa.string())
_KIND_DICT = pa.array(list(SEARCH_KINDS), pa.string())
_DICT_STRING = pa.dictionary(pa.int8(), pa.string())

#: The result columns that follow the query's features and the ``cf_<feature>`` columns, in
#: order: (name, Arrow type, description). The README's output table is generated from this.
RESULT_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("status", _DICT_STRING, "`found`, `already_target` (f already gives the positive class), `not_found`, or `invalid`"),
    ("reason", pa.string(), "why a row is `not_found` or `invalid`; null otherwise"),
    ("score", pa.float32(), "f(x): the classifier's probability of the positive class for the query; null if invalid"),
    ("cf_score", pa.float32(), "f(x_cf) for the counterfactual exactly as returned; null unless found"),
    ("alpha", pa.float32(), "interpolation weight a of z_s = (1 - a) z + a mu_1 that gave the counterfactual (> 1 if extrapolated)"),
    ("search", _DICT_STRING, "how it was found: `grid`, `refined` (bisection of the crossing) or `extrapolated` (past mu_1)"),
    ("evaluations", pa.int32(), "decoder evaluations spent on the row (0 unless searched)"),
    ("proximity_l2", pa.float32(), "L2 distance between query and counterfactual in the model's input space"),
    ("sparsity_l1", pa.float32(), "L1 norm of the change in the model's input space (the paper's sparsity)"),
    ("sparsity_l0", pa.int32(), "number of features whose value changed"),
    ("reconstruction_error", pa.float32(), "the autoencoder's mean squared reconstruction error on the counterfactual"),
)


def query_type(f: Feature) -> pa.DataType:
    return pa.string() if not f.is_numeric else pa.float64()


def cf_type(f: Feature) -> pa.DataType:
    if f.kind == "integer":
        return pa.int64()
    if f.kind == "continuous":
        return pa.float64()
    return pa.dictionary(pa.int32(), pa.string())


RANK_COLUMN = (
    "cf_rank", pa.int32(),
    "only with `--num-cfs K > 1`: rank of this option among the query's counterfactuals (1 = nearest); null when the query has none",
)


def output_schema(pre: Preprocessor, id_field: pa.Field | None = None, ranked: bool = False) -> pa.Schema:
    """Schema of the explanation table for a bundle's features."""
    fields: list[pa.Field] = [] if id_field is None else [id_field]
    fields += [pa.field(f.name, query_type(f)) for f in pre.features]
    fields += [pa.field(f"cf_{f.name}", cf_type(f)) for f in pre.features]
    if ranked:
        fields.append(pa.field(RANK_COLUMN[0], RANK_COLUMN[1]))
    fields += [pa.field(name, typ) for name, typ, _ in RESULT_COLUMNS]
    return pa.schema(fields)


def _masked(values: np.ndarray, keep: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=typ, mask=~keep)


def build_batch(
    schema: pa.Schema,
    pre: Preprocessor,
    batch: pa.RecordBatch | pa.Table,
    x: np.ndarray,
    reason_invalid: np.ndarray,
    res: SearchResult,
    recon: np.ndarray,
    id_column: str | None,
    tol_upper: float,
    rank: np.ndarray | None = None,
    constrained: bool = False,
) -> pa.RecordBatch:
    """Assemble one output batch from the query batch and its search result."""
    n = len(res.status)
    found = res.status == FOUND
    cols: list[pa.Array] = []
    if id_column is not None:
        col = batch.column(id_column)
        cols.append(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    for f in pre.features:
        col = batch.column(f.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols.append(col.cast(query_type(f), safe=False))
    inv = pre.inverse(res.cf)
    for f in pre.features:
        arr = inv[f.name]
        if isinstance(arr, pa.DictionaryArray):
            idx = arr.indices.to_numpy(zero_copy_only=False)
            cols.append(pa.DictionaryArray.from_arrays(_masked(idx, found, pa.int32()), arr.dictionary))
        else:
            cols.append(_masked(arr.to_numpy(zero_copy_only=False), found, cf_type(f)))
    if rank is not None:
        cols.append(_masked(rank, rank > 0, pa.int32()))
    reasons = reason_invalid.copy()
    over = (res.status == NOT_FOUND) & ~np.isnan(res.overshoot)
    never = (res.status == NOT_FOUND) & np.isnan(res.overshoot) & (reasons == None)  # noqa: E711
    if over.any():
        reasons[over] = [f"crossed the threshold only with score {s:.3f} >= threshold + tol ({tol_upper:.3f})" for s in res.overshoot[over]]
    reasons[never] = "the path never crossed the threshold" + (" within the constraints" if constrained else "")
    valid = res.status != 3
    cols += [
        pa.DictionaryArray.from_arrays(pa.array(res.status, pa.int8()), _STATUS_DICT),
        pa.array(reasons, pa.string()),
        _masked(res.score, valid, pa.float32()),
        _masked(res.cf_score, found, pa.float32()),
        _masked(res.alpha, found, pa.float32()),
        pa.DictionaryArray.from_arrays(_masked(res.kind, found, pa.int8()), _KIND_DICT),
        pa.array(res.evaluations, pa.int32()),
        _masked(proximity_l2(x, res.cf), found, pa.float32()),
        _masked(sparsity_l1(x, res.cf), found, pa.float32()),
        _masked(changed_features(pre, x, res.cf), found, pa.int32()),
        _masked(recon, found, pa.float32()),
    ]
    assert all(len(c) == n for c in cols)
    return pa.RecordBatch.from_arrays(cols, schema=schema)
