"""Only the changes that are needed: after the search, put back the query's value of every
changed feature that the decision does not need.

The latent walk moves every feature a little; many of those changes do not matter to f. For each
found counterfactual, greedily: try putting back each changed feature (a determined feature
together with its category) on its own, keep the one whose row f scores highest while still
T <= f < T + tol and within the constraints, and repeat until no change can be put back. All rows
of a batch advance together: one call of f per round scores every (row, feature) candidate.
With a screen g (a cheap stand-in of f), g ranks the candidates and f is asked about few of them
(``_screened``).

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

    ``confirm`` (f, with ``score`` a cheap stand-in g): see ``_screened``; every returned row is
    then scored by f in ``[threshold, upper)``."""
    cf = np.array(cf, dtype=np.float32, copy=True)
    cf_score = np.array(cf_score, dtype=np.float32, copy=True)
    reverted = np.zeros(len(x), np.int32)
    if len(x) == 0:
        return cf, cf_score, reverted
    steps = _Steps(pre, x, bounds)
    if confirm is not None:
        _screened(
            steps, score, confirm, cf, cf_score, reverted, threshold, upper, tries, evaluations
        )
        return cf, cf_score, reverted
    active = np.arange(len(x))
    while active.size:
        r_idx, cand = steps.candidates(active, cf[active])
        if r_idx.size == 0:
            break
        s = _scored(score, cand)
        if evaluations is not None:
            np.add.at(evaluations, active[r_idx], 1)
        ok = (s >= threshold) & (s < upper) & steps.allowed(active, r_idx, cand)
        pick = _best_per_row(np.nonzero(ok)[0], s, r_idx)
        if pick.size == 0:
            break
        rows = active[r_idx[pick]]
        cf[rows], cf_score[rows] = cand[pick], s[pick]
        reverted[rows] += 1
        active = rows
    return cf, cf_score, reverted


#: With a screen g, f is asked about g's first choice of a round when g's estimate of f (f's score
#: of the row before the round, plus g's change) is at least threshold - FIRST_SLACK, and about a
#: later choice when it is at least threshold - NEXT_SLACK: below, f almost never approves. With
#: the leap, on a class-balanced raw-column HistGradientBoosting f (50,000 Adult benchmark rows):
#: 2.95 -> 1.92 calls of f per searched row in the step, L0 1.90 -> 1.95 (docs/design.md).
FIRST_SLACK = 0.2
NEXT_SLACK = 0.1


class _Steps:
    """The candidates of a round: each row with one of its changed feature groups put back."""

    def __init__(
        self, pre: Preprocessor, x: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        self.groups = [np.array(cols) for cols in dependencies.groups(pre)]
        # [G, F]: a group's columns
        self.member = np.zeros((len(self.groups), pre.width), np.float32)
        for gi, cols in enumerate(self.groups):
            self.member[gi, cols] = 1.0
        self.x, self.bounds, self.n_num = x, bounds, pre.n_numeric

    def candidates(self, active: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of ``active`` each candidate belongs to, the candidates), row by row."""
        xq = self.x[active]
        changed = ((cur != xq).astype(np.float32) @ self.member.T) > 0
        # A row with one change left is the query once it is put back, which f rejects.
        changed &= changed.sum(axis=1, keepdims=True) > 1
        r_idx, g_idx = np.nonzero(changed)
        cand = cur[r_idx]
        for gi, cols in enumerate(self.groups):  # a few columns per group: cheaper than a mask
            sel = np.nonzero(g_idx == gi)[0]
            if sel.size:
                cand[sel[:, None], cols] = xq[r_idx[sel][:, None], cols]
        return r_idx, cand

    def allowed(self, active: np.ndarray, r_idx: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Which candidates keep within the constraints' bounds."""
        if self.bounds is None:
            return np.ones(len(cand), bool)
        rows = active[r_idx]
        return _within(cand, self.bounds[0][rows], self.bounds[1][rows], self.n_num)


def _scored(score: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    return np.concatenate([score(rows[i : i + CHUNK]) for i in range(0, len(rows), CHUNK)])


def _by_row(idx: np.ndarray, key: np.ndarray, r_idx: np.ndarray) -> np.ndarray:
    """The candidates ``idx`` (ascending; ``r_idx``, each candidate's row, is non-decreasing)
    row by row, each row's highest ``key`` first (ties: the earlier candidate). The same order
    as ``idx[np.lexsort((-key[idx], r_idx[idx]))]``, several times faster: a row has at most
    one candidate per feature group, so each row's few are sorted in one small dense array."""
    if idx.size == 0:
        return idx
    r = r_idx[idx]
    new = np.r_[True, r[1:] != r[:-1]]
    start = np.nonzero(new)[0]
    run = np.cumsum(new) - 1
    pos = np.arange(idx.size) - start[run]
    dense = np.full((start.size, int(pos.max()) + 1), np.inf, np.float32)
    dense[run, pos] = -key[idx]
    order = np.argsort(dense, axis=1, kind="stable")
    keep = np.isfinite(np.take_along_axis(dense, order, axis=1))
    return np.asarray(idx[(start[:, None] + order)[keep]])


def _best_per_row(idx: np.ndarray, s: np.ndarray, r_idx: np.ndarray) -> np.ndarray:
    """Of the candidates ``idx`` (ascending), each row's highest-scoring one."""
    idx = _by_row(idx, s, r_idx)
    if idx.size == 0:
        return idx
    return idx[np.r_[True, r_idx[idx][1:] != r_idx[idx][:-1]]]


def _screened(
    steps: _Steps,
    g: Callable[[np.ndarray], np.ndarray],
    f: Callable[[np.ndarray], np.ndarray],
    cf: np.ndarray,
    cf_score: np.ndarray,
    reverted: np.ndarray,
    threshold: float,
    upper: float,
    tries: int,
    evaluations: np.ndarray | None,
) -> None:
    """The revert step with a screen g (in place).

    g estimates f's score of a candidate as f's score of a row f has scored plus g's change
    between the two (g's error near a row changes little with one feature group). First a leap:
    every change whose own revert g's estimate approves is put back at once (leaving one change
    at least), and where that is two or more changes and g's estimate approves the result, f is
    asked about it once; f's approval takes the row there. Then round by round from where each
    row stands: g ranks the candidates, and f is asked about g's best, then its next, ``tries``
    times, each only when g's estimate is within the slack of the threshold (``FIRST_SLACK``,
    ``NEXT_SLACK``); a row stops when f approves none."""

    def count(rows: np.ndarray) -> None:
        if evaluations is not None:
            np.add.at(evaluations, rows, 1)

    n = len(cf)
    g_cf = _scored(g, cf)
    # the leap, from round one's candidates (their g is kept for the first round below)
    all_rows = np.arange(n)
    r_idx, cand = steps.candidates(all_rows, cf)
    g_first = _scored(g, cand)
    est = cf_score[r_idx] + g_first - g_cf[r_idx]
    lets = np.nonzero((est >= threshold) & (est < upper) & steps.allowed(all_rows, r_idx, cand))[0]
    lets = _by_row(lets, est, r_idx)
    rank = np.arange(lets.size) - np.searchsorted(r_idx[lets], r_idx[lets])  # 0 = the row's best
    lets = lets[rank < np.bincount(r_idx, minlength=n)[r_idx[lets]] - 1]
    length = np.bincount(r_idx[lets], minlength=n)
    # a row's candidates put back disjoint columns: write each one's into the row
    put = cf.copy()
    ci, col = np.nonzero(cand[lets] != cf[r_idx[lets]])
    put[r_idx[lets][ci], col] = cand[lets][ci, col]
    leap = np.nonzero(length >= 2)[0]
    end = put[leap]
    g_end = _scored(g, end)
    est_end = cf_score[leap] + g_end - g_cf[leap]
    keep = (est_end >= threshold) & (est_end < upper)
    leap, end, g_end = leap[keep], end[keep], g_end[keep]
    took = leap[:0]
    if leap.size:
        s = _scored(f, end)
        count(leap)
        good = (s >= threshold) & (s < upper)
        took = leap[good]
        cf[took], cf_score[took], reverted[took] = end[good], s[good], length[took]
        g_cf[took] = g_end[good]
    moved = np.zeros(n, bool)  # rows the leap took: their round-one candidates are new
    moved[took] = True
    first_round: tuple[np.ndarray, np.ndarray] | None = (r_idx, g_first)
    # round by round from where each row stands
    active = np.arange(n)
    while active.size:
        r_idx, cand = steps.candidates(active, cf[active])
        if r_idx.size == 0:
            break
        rows = active[r_idx]
        if first_round is not None:  # the rows the leap left where they were: g known
            new = moved[rows]
            g_cand = np.empty(len(cand), np.float32)
            g_cand[~new] = first_round[1][~moved[first_round[0]]]
            g_cand[new] = _scored(g, cand[new])
            first_round = None
        else:
            g_cand = _scored(g, cand)
        est = cf_score[rows] + g_cand - g_cf[rows]
        left = np.nonzero(steps.allowed(active, r_idx, cand))[0]
        left = _by_row(left, est, r_idx)  # row by row, g's best first
        picks, scores = [], []
        for t in range(tries):
            if left.size == 0:
                break
            first = np.r_[True, r_idx[left][1:] != r_idx[left][:-1]]
            head = left[first]
            head = head[est[head] >= threshold - (FIRST_SLACK if t == 0 else NEXT_SLACK)]
            s = _scored(f, cand[head])
            count(rows[head])
            ok = (s >= threshold) & (s < upper)
            picks.append(head[ok])
            scores.append(s[ok])
            left = left[~first]
            left = left[~np.isin(r_idx[left], r_idx[head[ok]])]
        pick = np.concatenate(picks) if picks else r_idx[:0]
        if pick.size == 0:
            break
        active = rows[pick]
        cf[active], cf_score[active] = cand[pick], np.concatenate(scores)
        g_cf[active] = g_cand[pick]
        reverted[active] += 1
