"""Only the changes that are needed: after the search, put back the query's value of every
changed feature that the decision does not need.

The latent walk moves every feature a little; many of those changes do not matter to f. For each
found counterfactual, greedily: try putting back each changed feature (a determined feature
together with its category) on its own, keep the one whose row f scores highest while still
T <= f < T + tol and within the constraints, and repeat until no change can be put back. All rows
of a batch advance together: one call of f per round scores every (row, feature) candidate.

The query's own value always lies in its band and keeps a direction or immutability constraint;
a range or an allowed set it breaks is checked against the row's bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gmcf.runtime import dependencies
from gmcf.runtime.schema import Preprocessor

#: Candidate rows scored per call of f.
CHUNK = 65536


def _within(rows: np.ndarray, lower: np.ndarray, upper: np.ndarray, n_num: int) -> np.ndarray:
    eps = 1e-6
    ok = (
        (rows[:, :n_num] >= lower[:, :n_num] - eps) & (rows[:, :n_num] <= upper[:, :n_num] + eps)
    ).all(axis=1)
    return np.asarray(ok & ~((rows[:, n_num:] > 0.5) & (upper[:, n_num:] < 0.5)).any(axis=1))


def revert_changes(
    pre: Preprocessor,
    score: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    cf: np.ndarray,
    cf_score: np.ndarray,
    threshold: float,
    upper: float,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    evaluations: np.ndarray | None = None,
    confirm: Callable[[np.ndarray], np.ndarray] | None = None,
    tries: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy revert for counterfactuals ``cf`` [n, F] of queries ``x`` [n, F] (model space,
    every row found: threshold <= cf_score < upper). ``score`` is f on model-space rows;
    ``bounds`` (lower, upper) [n, F] the constraints' per-row bounds, if any.

    Returns (new cf, their scores, features put back per row); every returned row is scored by
    ``score`` in ``[threshold, upper)`` and within ``bounds``. ``evaluations`` [n], if given,
    gains the candidates f scored for each row.

    ``confirm`` (f, with ``score`` a cheap stand-in g): g only ranks a round's candidates, and
    f scores g's best, then its next best, ``tries`` times per row and round; a row stops when
    f approves none. Every returned row is then scored by f in ``[threshold, upper)``."""
    n = len(x)
    cf = np.array(cf, dtype=np.float32, copy=True)
    cf_score = np.array(cf_score, dtype=np.float32, copy=True)
    reverted = np.zeros(n, np.int32)
    if n == 0:
        return cf, cf_score, reverted
    groups = [np.array(cols) for cols in dependencies.groups(pre)]
    member = np.zeros((len(groups), pre.width), np.float32)  # [G, F]: a group's columns
    for gi, cols in enumerate(groups):
        member[gi, cols] = 1.0
    n_num = pre.n_numeric
    active = np.arange(n)
    while active.size:
        cur, xq = cf[active], x[active]
        changed = ((cur != xq).astype(np.float32) @ member.T) > 0  # [a, G]
        # A row with one change left is the query once it is put back, which f rejects.
        changed &= changed.sum(axis=1, keepdims=True) > 1
        r_idx, g_idx = np.nonzero(changed)
        if r_idx.size == 0:
            break
        cand = cur[r_idx]
        for gi, cols in enumerate(groups):  # put back each candidate's group: few columns each
            sel = np.nonzero(g_idx == gi)[0]
            if sel.size:
                cand[sel[:, None], cols] = xq[r_idx[sel][:, None], cols]
        s = np.concatenate([score(cand[i : i + CHUNK]) for i in range(0, len(cand), CHUNK)])
        if evaluations is not None and confirm is None:
            np.add.at(evaluations, active[r_idx], 1)
        # with f to confirm, g's score only ranks the candidates
        ok = (s >= threshold) & (s < upper) if confirm is None else np.ones(s.size, bool)
        if bounds is not None:
            rows = active[r_idx]
            ok &= _within(cand, bounds[0][rows], bounds[1][rows], n_num)
        # per row, the admissible candidate with the highest score
        okc = np.nonzero(ok)[0]
        if okc.size == 0:
            break
        okc = okc[np.lexsort((-s[okc], r_idx[okc]))]
        if confirm is None:
            pick = okc[np.r_[True, r_idx[okc][1:] != r_idx[okc][:-1]]]
            score_of_pick = s[pick]
        else:
            pick, score_of_pick, asked = _confirmed(
                okc, r_idx, cand, confirm, tries, threshold, upper
            )
            if evaluations is not None:
                np.add.at(evaluations, active[r_idx[asked]], 1)
        rows = active[r_idx[pick]]
        cf[rows] = cand[pick]
        cf_score[rows] = score_of_pick
        reverted[rows] += 1
        active = rows
    return cf, cf_score, reverted


def _confirmed(
    order: np.ndarray,
    r_idx: np.ndarray,
    cand: np.ndarray,
    confirm: Callable[[np.ndarray], np.ndarray],
    tries: int,
    threshold: float,
    upper: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the first of its candidates (``order``: g's admissible ones, each row's best
    first) that f approves, asking f about at most ``tries`` of them. Returns the chosen
    candidates, f's scores of them and every candidate f was asked about."""
    picks, scores, asked = [], [], []
    left = order
    for _ in range(tries):
        if left.size == 0:
            break
        first = np.r_[True, r_idx[left][1:] != r_idx[left][:-1]]
        head = left[first]
        f = confirm(cand[head])
        asked.append(head)
        ok = (f >= threshold) & (f < upper)
        picks.append(head[ok])
        scores.append(f[ok])
        done_rows = r_idx[head[ok]]
        left = left[~first]
        left = left[~np.isin(r_idx[left], done_rows)]
    if not picks:
        return order[:0], np.zeros(0, np.float32), order[:0]
    return (
        np.concatenate(picks),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(asked),
    )
