"""From a dataset to model-ready arrays: labels, a seeded split, fitted preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.datasets import Dataset
from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import Preprocessor, usable_rows


@dataclass
class Prepared:
    pre: Preprocessor
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_rows: np.ndarray
    """Row numbers of the held-out split in the original table."""
    train_rows: np.ndarray | None = None
    """Row numbers of the (usable) training rows in the original table."""


def labels(ds: Dataset) -> np.ndarray:
    col = ds.table.column(ds.schema.label)
    if col.null_count:
        raise InputError(f"label column {ds.schema.label!r} has {col.null_count} missing value(s)")
    s = _label_strings(ds)
    classes = sorted(pc.unique(s).to_pylist())
    if len(classes) < 2:
        raise InputError(
            f"label column {ds.schema.label!r} has a single class {classes}: there is nothing to "
            "explain"
        )
    # A label with more than two values: the positive class against the rest (label_classes).
    if ds.schema.positive_class not in classes:
        raise InputError(
            f"positive class {ds.schema.positive_class!r} does not occur in label column "
            f"{ds.schema.label!r} (classes: {classes})"
        )
    return np.asarray(
        pc.equal(s, ds.schema.positive_class).to_numpy(zero_copy_only=False), dtype=np.int64
    )


def _label_strings(ds: Dataset) -> pa.ChunkedArray:
    col = ds.table.column(ds.schema.label)
    if pa.types.is_floating(col.type):
        col = pc.cast(pc.cast(col, pa.int64()), pa.string())
    return pc.cast(col, pa.string())


def label_classes(ds: Dataset) -> dict[str, list[str]]:
    """The label's values as the training treats them: the positive class, and the rest."""
    s = _label_strings(ds)
    rest = sorted(
        c for c in pc.unique(s).to_pylist() if c is not None and c != ds.schema.positive_class
    )
    return {"positive": [ds.schema.positive_class], "negative": rest}


def prepare(ds: Dataset, test_size: float, seed: int) -> Prepared:
    """Split rows 80/20 (seeded) unless the dataset has its own held-out split (MNIST's test
    set), fit min-max and one-hot on the training part, encode both."""
    n = ds.table.num_rows
    if n < 10:
        raise InputError(f"training data has {n} row(s); at least 10 are needed")
    y = labels(ds)
    if ds.test_mask is not None:
        test_rows, train_rows = np.nonzero(ds.test_mask)[0], np.nonzero(~ds.test_mask)[0]
    else:
        perm = np.random.default_rng(seed).permutation(n)
        n_test = max(1, round(n * test_size))
        test_rows, train_rows = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    train_tab = ds.table.take(pa.array(train_rows))
    pre = Preprocessor.fit(
        train_tab, ds.schema.features, ds.schema.determined, ds.schema.detect_determined
    )
    x_all, reason = pre.transform(ds.table)
    bad = ~usable_rows(reason)
    # Rows the encoder cannot use (missing values, unseen categories in the held-out part) are
    # left out of training and evaluation; a test split keeps only fully usable rows.
    if bad[train_rows].all():
        raise InputError("no usable training rows: every row has a missing or invalid value")
    train_rows = train_rows[~bad[train_rows]]
    test_rows = test_rows[~bad[test_rows]]
    return Prepared(
        pre, x_all[train_rows], y[train_rows], x_all[test_rows], y[test_rows], test_rows, train_rows
    )
