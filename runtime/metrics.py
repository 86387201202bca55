"""Quality measures of counterfactuals (paper appendix .1), per row, in the model's input space.

The input space is the one the networks see: numeric features min-max scaled to [0, 1] over the
training split, one one-hot block per categorical feature. ``x`` are the queries and ``cf`` their
counterfactuals, both [n, width] and hard (one-hot blocks, integers on their grid).
"""

from __future__ import annotations

import numpy as np

from gmcf.runtime.schema import Preprocessor


def proximity_l2(x: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """L2 norm of the change vector."""
    return np.asarray(np.sqrt(((cf - x) ** 2).sum(axis=1)))


def sparsity_l1(x: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """The paper's sparsity: L1 norm of the change vector."""
    return np.asarray(np.abs(cf - x).sum(axis=1))


def change_norms(x: np.ndarray, cf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``proximity_l2`` and ``sparsity_l1`` from one change vector (the output's hot path)."""
    d = cf - x
    return np.sqrt(np.einsum("ij,ij->i", d, d)), np.abs(d, out=d).sum(axis=1)


def changed_features(pre: Preprocessor, x: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """L0: the number of features (not vector entries) whose value differs."""
    n_num = pre.n_numeric
    lo, hi = pre.lo_hi()
    span = np.where(hi > lo, hi - lo, 1.0)
    raw_diff = np.abs(pre.raw_values(cf) - pre.raw_values(x))
    count = (raw_diff > 1e-6 * np.maximum(span, 1.0)).sum(axis=1)
    offset = n_num
    for k in pre.cat_sizes:
        blk = slice(offset, offset + k)
        count += np.argmax(cf[:, blk], axis=1) != np.argmax(x[:, blk], axis=1)
        offset += k
    return np.asarray(count, dtype=np.int32)


def reconstruction_mse(x: np.ndarray, x_rec: np.ndarray) -> np.ndarray:
    """An autoencoder's loss on a row: squared error averaged over the entries of the vector."""
    return np.asarray(((x_rec - x) ** 2).mean(axis=1))


def harden(pre: Preprocessor, x_soft: np.ndarray) -> np.ndarray:
    """The row a user receives for a soft decoding: numeric values clipped to the training range
    and integers rounded, each categorical block arg-maxed (through the preprocessing's own
    inverse and transform, so it matches what the runtime returns)."""
    import pyarrow as pa

    clipped = np.clip(np.asarray(x_soft, dtype=np.float32), 0.0, 1.0)
    hard, _ = pre.transform(pa.table(pre.inverse(clipped)))
    return np.asarray(hard, dtype=np.float32)


def outside_band(
    x_raw: np.ndarray, cf_raw: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Boolean [n, features]: the counterfactual's value lies outside the training band
    [lo, hi] (per feature, e.g. p0.5 and p99.5) although the query's lies inside it."""
    inside = (x_raw >= lo) & (x_raw <= hi)
    return np.asarray(inside & ((cf_raw < lo) | (cf_raw > hi)))


def ynn(
    cf: np.ndarray, train: np.ndarray, approved: np.ndarray, k: int = 5, chunk: int = 512
) -> np.ndarray:
    """yNN per counterfactual: the share of its ``k`` nearest training rows (L2, in the space of
    ``train``) that the model approves (``approved`` bool per training row). A counterfactual
    among approved rows scores 1; one alone in rejected territory 0."""
    train = np.asarray(train, np.float32)
    sq = np.einsum("ij,ij->i", train, train)
    out = np.empty(len(cf), np.float64)
    for start in range(0, len(cf), chunk):
        c = np.asarray(cf[start : start + chunk], np.float32)
        d = sq[None, :] - 2.0 * (c @ train.T)  # + |c|^2, the same for every training row
        near = np.argpartition(d, k - 1, axis=1)[:, :k]
        out[start : start + len(c)] = approved[near].mean(axis=1)
    return out


def option_diversity(
    pre: Preprocessor, query: np.ndarray, cf: np.ndarray
) -> tuple[float, float, int]:
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
    return (
        float((l2_sum[multi] / pairs).mean()),
        float((l0_sum[multi] / pairs).mean()),
        int(multi.sum()),
    )
