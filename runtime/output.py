"""The output table: one documented schema, built batch by batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gmcf.runtime.arrow import dictionary, numeric, strings
from gmcf.runtime.metrics import change_norms, changed_features
from gmcf.runtime.schema import (
    IMAGE,
    Feature,
    ImagePreprocessor,
    Preprocessor,
    image_column,
    image_type,
)
from gmcf.runtime.search import FOUND, NOT_FOUND, SEARCH_KINDS, STATUSES, SearchResult

_STATUS_DICT = strings(STATUSES)
_KIND_DICT = strings(SEARCH_KINDS)
_DICT_STRING = pa.dictionary(pa.int8(), pa.string())

#: The result columns that follow the query's features and the ``cf_<feature>`` columns, in
#: order: (name, Arrow type, description). The README's output table is generated from this.
RESULT_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("status", _DICT_STRING, "`found`, `already_target` (f already gives the positive class), `not_found`, or `invalid`"),
    ("reason", pa.string(), "why a row is `not_found` or `invalid`; null otherwise"),
    ("score", pa.float32(), "f(x): the classifier's probability of the positive class for the query; null if invalid"),
    ("cf_score", pa.float32(), "f(x_cf) for the counterfactual exactly as returned; null unless found"),
    ("alpha", pa.float32(), "interpolation weight a of z_s = (1 - a) z + a mu_1 that gave the counterfactual (> 1 if extrapolated; for `anchored`, the weight toward the approved training row's code)"),
    ("search", _DICT_STRING, "how it was found: `grid`, `refined` (bisection of the crossing), `extrapolated` (past mu_1) or `anchored` (the last resort: toward nearby approved training rows)"),
    ("evaluations", pa.int32(), "decoder evaluations spent on the row (0 unless searched)"),
    ("proximity_l2", pa.float32(), "L2 distance between query and counterfactual in the model's input space"),
    ("sparsity_l1", pa.float32(), "L1 norm of the change in the model's input space (the paper's sparsity)"),
    ("sparsity_l0", pa.int32(), "number of features whose value changed"),
    ("reconstruction_error", pa.float32(), "the autoencoder's mean squared reconstruction error on the counterfactual"),
)


def query_type(f: Feature) -> pa.DataType:
    if f.kind == IMAGE:
        return image_type(f)
    return pa.string() if not f.is_numeric else pa.float64()


def cf_type(f: Feature) -> pa.DataType:
    if f.kind == IMAGE:
        return image_type(f)
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
    return numeric(values, typ, keep)


def option_diversity(pre: Preprocessor, query: np.ndarray, cf: np.ndarray) -> tuple[float, float, int]:
    """Diversity among each query's options (``--num-cfs K``), as DiCE measures it: the mean
    pairwise L2 distance between a query's counterfactuals in model space, and the mean number of
    features in which two of them differ, averaged over the queries with at least two options.

    ``query`` [m] gives the query each counterfactual row ``cf`` [m, F] belongs to (its options
    contiguous). Returns (mean L2, mean features differing, queries with >= 2 options)."""
    if len(query) == 0:
        return float("nan"), float("nan"), 0
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    counts = np.diff(np.r_[starts, len(query)])
    k = int(counts.max())
    l2_sum = np.zeros(len(starts))
    l0_sum = np.zeros(len(starts))
    for i in range(k):
        for j in range(i + 1, k):
            has = counts > j
            a, b = cf[starts[has] + i], cf[starts[has] + j]
            l2_sum[has] += np.sqrt(((a - b) ** 2).sum(axis=1))
            l0_sum[has] += changed_features(pre, a, b)
    multi = counts >= 2
    if not multi.any():
        return float("nan"), float("nan"), 0
    pairs = counts[multi] * (counts[multi] - 1) / 2
    return float((l2_sum[multi] / pairs).mean()), float((l0_sum[multi] / pairs).mean()), int(multi.sum())


def query_columns(pre: Preprocessor, batch: pa.RecordBatch | pa.Table, id_column: str | None) -> list[pa.Array]:
    """The output's leading columns: the id (if any) and the query's features, as given."""
    cols: list[pa.Array] = []
    if id_column is not None:
        col = batch.column(id_column)
        cols.append(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    for f in pre.features:
        col = batch.column(f.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(pre, ImagePreprocessor):
            cols.append(pre.echo(col))
            continue
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols.append(col.cast(query_type(f), safe=False))
    return cols


def result_columns(
    pre: Preprocessor,
    x: np.ndarray,
    reason_invalid: np.ndarray,
    res: SearchResult,
    recon: np.ndarray,
    tol_upper: float,
    rank: np.ndarray | None = None,
    constrained: bool = False,
) -> list[pa.Array]:
    """The columns after the query's: ``cf_<feature>``, the rank if any, and RESULT_COLUMNS."""
    found = res.status == FOUND
    cols: list[pa.Array] = []
    inv = pre.inverse_values(res.cf)
    for f in pre.features:
        if f.kind == IMAGE:
            cols.append(image_column(inv[f.name], found))
        elif f.is_numeric:
            cols.append(_masked(inv[f.name], found, cf_type(f)))
        else:
            cols.append(dictionary(inv[f.name], pre.category_values(f.name), pa.int32(), found))
    if rank is not None:
        cols.append(_masked(rank, rank > 0, pa.int32()))
    reasons = reason_invalid.copy()
    over = (res.status == NOT_FOUND) & ~np.isnan(res.overshoot)
    never = (res.status == NOT_FOUND) & np.isnan(res.overshoot) & (reasons == None)  # noqa: E711
    if over.any():
        reasons[over] = [f"crossed the threshold only with score {s:.3f} >= threshold + tol ({tol_upper:.3f})" for s in res.overshoot[over]]
    reasons[never] = "the path never crossed the threshold" + (" within the constraints" if constrained else "")
    valid = res.status != 3
    l2, l1 = change_norms(x, res.cf)
    cols += [
        dictionary(res.status, _STATUS_DICT, pa.int8()),
        strings(reasons),
        _masked(res.score, valid, pa.float32()),
        _masked(res.cf_score, found, pa.float32()),
        _masked(res.alpha, found, pa.float32()),
        dictionary(res.kind, _KIND_DICT, pa.int8(), found),
        numeric(res.evaluations, pa.int32()),
        _masked(l2, found, pa.float32()),
        _masked(l1, found, pa.float32()),
        _masked(changed_features(pre, x, res.cf), found, pa.int32()),
        _masked(recon, found, pa.float32()),
    ]
    return cols


def output_batch(
    schema: pa.Schema, pre: Preprocessor, batch: pa.RecordBatch | pa.Table, id_column: str | None,
    src: np.ndarray | None, results: list[pa.Array],
) -> pa.RecordBatch:
    """One output batch from the query batch and its result columns; for K > 1 options ``src``
    gives the query row each output row repeats (None: the output rows are the query rows)."""
    if src is not None:
        batch = batch.take(numeric(src, pa.int64()))
    return assemble(schema, query_columns(pre, batch, id_column), results)


def assemble(schema: pa.Schema, query: list[pa.Array], results: list[pa.Array]) -> pa.RecordBatch:
    """One output batch: the query's columns, then its results (equal lengths)."""
    cols = [*query, *results]
    n = len(results[0])
    assert all(len(c) == n for c in cols)
    return pa.RecordBatch.from_arrays(cols, schema=schema)
