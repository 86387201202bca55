"""Step 4 of the data path: a batch's search results -> the output's result columns, by name.

The counterfactuals go back from model space to raw values (``Preprocessor.inverse_values``),
the status and search codes become their texts, and the quality measures are computed. Runs in
the worker that searched the batch, so only these columns cross a process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gmcf.runtime.arrow import dictionary, numeric, strings
from gmcf.runtime.metrics import change_norms, changed_features
from gmcf.runtime.output import RANK_COLUMN, RESULT_COLUMNS, cf_type
from gmcf.runtime.schema import IMAGE, Preprocessor, image_column
from gmcf.runtime.search import BatchResult
from gmcf.runtime.status import (
    FOUND,
    INVALID,
    NOT_FOUND,
    SEARCH_KINDS,
    STATUSES,
    never_crossed_reason,
    overshoot_reason,
)

_STATUS_TEXTS = strings(STATUSES)
_KIND_TEXTS = strings(SEARCH_KINDS)


@dataclass
class ExplainedBatch:
    """The decode step's output for one batch: what the writer puts after the query's columns."""

    columns: dict[str, pa.Array]
    """``cf_<feature>`` for every feature, ``cf_rank`` for K > 1 options, and RESULT_COLUMNS."""
    counted: np.ndarray
    """Status code of every query of the batch, each once (for the run's counts)."""
    source: np.ndarray | None = None
    """With K > 1 options: the query row each output row repeats (None: output rows are the
    query rows, in order)."""

    @property
    def num_rows(self) -> int:
        return len(self.columns[RESULT_COLUMNS[0][0]])


def decode(pre: Preprocessor, batch: BatchResult) -> ExplainedBatch:
    """The result columns of a searched batch."""
    res, x = batch.result, batch.x
    found = res.status == FOUND
    cols: dict[str, pa.Array] = {}
    inv = pre.inverse_values(res.cf)
    for f in pre.features:
        name = f"cf_{f.name}"
        if f.kind == IMAGE:
            cols[name] = image_column(inv[f.name], found)
        elif not f.is_categorical:
            cols[name] = numeric(inv[f.name], cf_type(f), found)
        else:
            cols[name] = dictionary(inv[f.name], pre.category_values(f.name), pa.int32(), found)
    if batch.rank is not None:
        cols[RANK_COLUMN[0]] = numeric(batch.rank, pa.int32(), batch.rank > 0)
    valid = res.status != INVALID
    l2, l1 = change_norms(x, res.cf)
    results = {
        "status": dictionary(res.status, _STATUS_TEXTS, pa.int8()),
        "reason": strings(reasons(batch)),
        "score": numeric(res.score, pa.float32(), valid),
        "cf_score": numeric(res.cf_score, pa.float32(), found),
        "alpha": numeric(res.alpha, pa.float32(), found),
        "search": dictionary(res.kind, _KIND_TEXTS, pa.int8(), found),
        "evaluations": numeric(res.evaluations, pa.int32()),
        "proximity_l2": numeric(l2, pa.float32(), found),
        "sparsity_l1": numeric(l1, pa.float32(), found),
        "sparsity_l0": numeric(changed_features(pre, x, res.cf), pa.int32(), found),
        "reconstruction_error": numeric(batch.recon, pa.float32(), found),
        "plausibility": numeric(
            np.full(len(found), np.nan, np.float32)
            if batch.plausibility is None
            else batch.plausibility,
            pa.float32(),
            found,
        ),
        "reverted": numeric(res.reverted, pa.int32(), found),
    }
    missing = [name for name, _, _ in RESULT_COLUMNS if name not in results]
    if missing or len(results) != len(RESULT_COLUMNS):
        raise AssertionError(f"result columns {sorted(results)} do not match RESULT_COLUMNS")
    for name, _, _ in RESULT_COLUMNS:
        cols[name] = results[name]
    return ExplainedBatch(cols, batch.counted, batch.source)


def reasons(batch: BatchResult) -> np.ndarray:
    """The ``reason`` of every output row: the encode step's (invalid rows) or the constraints'
    (unmeetable ones), else why a searched row is ``not_found``."""
    res = batch.result
    out: np.ndarray = batch.reason.copy()
    over = (res.status == NOT_FOUND) & ~np.isnan(res.overshoot)
    never = (res.status == NOT_FOUND) & np.isnan(res.overshoot) & (out == None)  # noqa: E711
    if over.any():
        out[over] = [overshoot_reason(s, batch.score_ceiling) for s in res.overshoot[over]]
    out[never] = never_crossed_reason(batch.constrained)
    return out
