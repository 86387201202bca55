"""The last-resort search: a query whose walk toward mu_1 never crossed the threshold walks toward
nearby approved training rows instead (search kind ``anchored``).

A bundle may carry ``anchors.npy``: a seeded sample of the training rows that f approves, in
the model's input space (``TrainConfig.anchors`` rows at most; 0 ships none). For a missed
query x_q with codes (z_q, z_u,q) the runtime takes the ``fallback_neighbours`` anchors nearest
to it (L2 in the model's input space, among those f scores in [T, T + tol)) and, for each
anchor x_a with codes (z_a, z_u,a) = (E(x_a), E_u(x_a)), decodes

    D((1 - a) z_q + a z_a, (1 - a) z_u,q + a z_u,a)

on ``fallback_steps`` points a in (0, 1], hard-decoded (and bounded by the constraints) exactly
like the main search, scored by f. Both latents move: where z_u carries label information the
walk in z alone cannot flip f, but a walk to an approved row's full code ends near that row.
The anchor row itself (bounded by the constraints) is a candidate too, at a = 1. Of all
candidates with T <= f < T + tol the one nearest to the query is returned (a path may wander
off before it reaches its end, so the first crossing is not always the nearest); when the grid
point before it was no counterfactual, that interval is subdivided once (``refine_points``).
Encoding, decoding and scoring use the bundle's own ``encoder``, ``encoder_u``, ``decoder`` and
``classifier`` graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmcf.runtime import dependencies, transforms
from gmcf.runtime.errors import BundleError

if TYPE_CHECKING:
    from gmcf.runtime.engine import Engine
    from gmcf.runtime.schema import Preprocessor
    from gmcf.runtime.settings import RunSettings

#: Candidates decoded per call (queries x anchors x alphas).
CALL_ROWS = 16384
#: Queries whose distances to the anchors are computed at once (128 x 4,096 anchors: 2 MiB).
NEAREST_BLOCK = 128


@dataclass
class Anchors:
    """Approved training rows, their latent codes and f's scores of them."""

    z: np.ndarray  # [n, d]
    zu: np.ndarray  # [n, d_u]
    rows: np.ndarray  # [n, F] model space
    score: np.ndarray  # [n] f(rows)


@dataclass
class Rescued:
    """Outcome for the rows handed to ``rescue`` (arrays of their length)."""

    found: np.ndarray  # bool
    cf: np.ndarray  # [m, F]
    cf_score: np.ndarray
    alpha: np.ndarray
    evaluations: np.ndarray


def load_anchors(engine: Engine) -> Anchors | None:
    """The bundle's anchors with their codes and f's scores, or None when it carries none."""
    spec = engine.bundle.manifest.anchors
    if not spec:
        return None
    path = engine.bundle.path / str(spec["file"])
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"bundle {engine.bundle.path}: cannot read {spec['file']} ({exc})"
        ) from exc
    if rows.ndim != 2 or rows.shape[1] != engine.pre.width:
        raise BundleError(
            f"bundle {engine.bundle.path}: {spec['file']} has shape {list(rows.shape)}, "
            f"expected [rows, {engine.pre.width}]"
        )
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if len(rows) == 0:
        return None
    z = engine.run("encoder", {"x": rows})
    zu = engine.run("encoder_u", {"x": rows})
    return Anchors(z, zu, rows, engine.score(rows))


def hard_decode(
    pre: Preprocessor,
    soft: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    x: np.ndarray | None = None,
) -> np.ndarray:
    """The search graphs' hard decoding (``gmcf.trainer.hard_numeric``) in numpy: numeric values
    kept in the training band (widened to the query's own value ``x`` [n, F], when given) and in
    the bounds, integers rounded in raw units under their transform, each categorical block
    arg-maxed over its allowed categories, and determined features set from their category."""
    n = pre.n_numeric
    out = np.zeros_like(soft, dtype=np.float32)
    cont = np.asarray(soft[:, :n], np.float32)
    if x is not None:
        band_lo, band_hi = (b.astype(np.float32) for b in pre.bands())
        xn = x[:, :n]
        cont = np.minimum(np.maximum(cont, np.minimum(xn, band_lo)), np.maximum(xn, band_hi))
    lo_b = np.zeros_like(cont) if lower is None else lower[:, :n]
    up_b = np.ones_like(cont) if upper is None else upper[:, :n]
    cont = np.minimum(np.maximum(cont, lo_b), up_b)
    lo, hi = pre.lo_hi()
    span = np.where(hi > lo, hi - lo, 1.0)
    is_int = pre.integer_mask()
    feats = pre.numeric if len(pre.numeric) == n else []
    if any(is_int[j] and f.transform == "log" for j, f in enumerate(feats)):
        # every integer feature rounded in raw units, with the graphs' float32 arithmetic
        for j, f in enumerate(feats):
            if not is_int[j]:
                continue
            t_lo, t_span = (np.float32(v) for v in transforms.t_range(f))
            t = t_lo + cont[:, j] * t_span
            if f.transform != "log":
                cont[:, j] = (np.round(t) - t_lo) / t_span
                continue
            a = np.float32(transforms.log_offset(f.lo or 0.0))
            d = np.round(a + np.sign(t) * (np.exp(np.abs(t)) - np.float32(1.0))) - a
            cont[:, j] = (np.sign(d) * np.log(np.float32(1.0) + np.abs(d)) - t_lo) / t_span
    else:
        scale = np.where(is_int, span, 2.0**24).astype(np.float32)
        cont = np.round(cont * scale) * (np.float32(1.0) / scale)
    cont = np.minimum(np.maximum(cont, lo_b), up_b)
    out[:, :n] = cont
    offset = n
    rows = np.arange(len(soft))
    allowed = None if upper is None else upper > 0.5
    if upper is not None:
        # a determined feature's bounds allow only the categories whose value lies within them
        allowed = np.array(upper > 0.5, copy=True)
        for j, off, values in dependencies.determined(pre):
            ok = (values[None, :] >= lower[:, j : j + 1] - 1e-6) if lower is not None else True
            ok = ok & (values[None, :] <= upper[:, j : j + 1] + 1e-6)
            allowed[:, off : off + values.size] &= ok
    for k in pre.cat_sizes:
        blk = soft[:, offset : offset + k]
        if allowed is not None:
            blk = blk - 1e9 * (~allowed[:, offset : offset + k])
        out[rows, offset + np.argmax(blk, axis=1)] = 1.0
        offset += k
    return dependencies.apply_lookup(pre, out)


def compact(pre: Preprocessor, rows: np.ndarray) -> np.ndarray:
    """Model-space rows -> compact code (the inverse of ``Preprocessor.expand_code``)."""
    n = pre.n_numeric
    parts = [rows[:, :n]]
    offset = n
    for k in pre.cat_sizes:
        parts.append(np.argmax(rows[:, offset : offset + k], axis=1)[:, None].astype(np.float32))
        offset += k
    return np.concatenate(parts, axis=1).astype(np.float32)


def _decode_score(
    engine: Engine,
    z: np.ndarray,
    zu: np.ndarray,
    lower: np.ndarray | None,
    upper: np.ndarray | None,
    x: np.ndarray,
    score_of: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Decode, hard-decode (``x``: each candidate's query) and score the candidates."""
    rows = np.empty((len(z), engine.pre.width), np.float32)
    score = np.empty(len(z), np.float32)
    for i in range(0, len(z), CALL_ROWS):
        s = slice(i, i + CALL_ROWS)
        soft = engine.run("decoder", {"z": z[s], "z_u": zu[s]})
        rows[s] = hard_decode(
            engine.pre,
            soft,
            None if lower is None else lower[s],
            None if upper is None else upper[s],
            x[s],
        )
        score[s] = score_of(rows[s])
    return rows, score


def nearest(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Indices [m, k] of the ``k`` rows nearest to each row of ``x`` (L2), nearest first (ties:
    the lower index). k arg-mins over the distances: several times faster than a partition
    for the few neighbours the last resort takes; NEAREST_BLOCK queries at a time, so that their
    distances stay in cache."""
    # |x|^2 is the same for every candidate of a row: it does not change the order
    minus_2t = np.ascontiguousarray(-2.0 * rows.T, dtype=np.float32)
    sq = (rows**2).sum(1, dtype=np.float32)
    out = np.empty((len(x), k), np.int64)
    for start in range(0, len(x), NEAREST_BLOCK):
        d2 = np.matmul(x[start : start + NEAREST_BLOCK], minus_2t)
        d2 += sq[None, :]
        r = np.arange(len(d2))
        for i in range(k):
            j = d2.argmin(axis=1)
            out[start : start + len(d2), i] = j
            d2[r, j] = np.inf
    return out


def rescue(
    engine: Engine,
    x: np.ndarray,
    cfg: RunSettings,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    score: Callable[[np.ndarray], np.ndarray] | None = None,
    rounds: int = 2,
) -> Rescued | None:
    """Walk each row of ``x`` (model space, rows the main search missed) toward its nearest
    anchors; None when the bundle has no anchors. ``score``: what scores the path's candidates,
    f by default. Another function (the screen g) ranks them instead: f confirms the nearest
    one g approves, then the next, ``rounds`` times, and an approved anchor (f's own score) nearer
    than the candidate ends the row's search; ``evaluations`` counts the calls of f."""
    screen = score is not None
    score_of = engine.score if score is None else score  # the path's candidates
    anchors = engine.anchors
    if anchors is None or len(x) == 0:
        return None
    m, width = x.shape
    t, top = cfg.threshold, cfg.threshold + cfg.tol
    usable = np.nonzero((anchors.score >= t) & (anchors.score < top))[0]
    if usable.size == 0:
        return None
    k = min(cfg.fallback_neighbours, usable.size)
    near = usable[nearest(x, anchors.rows[usable], k)]  # [m, k], nearest first
    zq = engine.run("encoder", {"x": x})
    zuq = engine.run("encoder_u", {"x": x})
    pair_q = np.repeat(np.arange(m), k)  # query of each (query, anchor) pair
    za, zua = anchors.z[near.reshape(-1)], anchors.zu[near.reshape(-1)]

    def candidates(
        pairs: np.ndarray, alphas: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [P, S, F], scores [P, S] and squared distances to the query [P, S] (inf where
        the score is outside [T, T + tol)) of the pairs ``pairs`` at ``alphas`` [P, S]."""
        s = alphas.shape[1]
        a = alphas.reshape(-1, 1)
        rep = np.repeat(pairs, s)
        q = pair_q[rep]
        rows, score = _decode_score(
            engine,
            (1 - a) * zq[q] + a * za[rep],
            (1 - a) * zuq[q] + a * zua[rep],
            None if bounds is None else bounds[0][q],
            None if bounds is None else bounds[1][q],
            x[q],
            score_of,
        )
        d2 = ((rows - x[q]) ** 2).sum(1)
        d2 = np.where((score >= t) & (score < top), d2, np.inf)
        return (
            rows.reshape(len(pairs), s, width),
            score.reshape(len(pairs), s),
            d2.reshape(len(pairs), s),
        )

    grid = np.linspace(1.0 / cfg.fallback_steps, 1.0, cfg.fallback_steps, dtype=np.float32)
    steps = grid.size
    rows, cand_score, d2 = candidates(
        np.arange(m * k), np.broadcast_to(grid, (m * k, steps)).copy()
    )
    if screen:
        return _confirm_nearest(engine, x, cfg, bounds, near, pair_q, grid, rows, d2, rounds)
    evals = np.full(m, k * steps, np.int32)
    # The nearest approved candidate over every anchor's path (not the first crossing: a path
    # may wander off before it reaches the anchor's own decoding, its last point).
    flat = d2.reshape(m, k * steps)
    pick = flat.argmin(1)
    found = np.isfinite(flat[np.arange(m), pick])
    pair = np.arange(m) * k + pick // steps
    step = pick % steps
    best_row = rows[pair, step]
    best_score = cand_score[pair, step]
    best_alpha = grid[step]
    best_d2 = flat[np.arange(m), pick]
    # One round of refinement between the chosen point and the grid point before it, when that
    # one was not a counterfactual: the candidates there are closer to the query.
    redo = np.nonzero(found & (step > 0))[0]
    redo = redo[~np.isfinite(d2[pair[redo], step[redo] - 1])]
    if cfg.refine and redo.size:
        frac = np.arange(1, cfg.refine_points + 1, dtype=np.float32) / (cfg.refine_points + 1)
        lo = grid[step[redo] - 1]
        alphas = (lo[:, None] + (grid[step[redo]] - lo)[:, None] * frac[None, :]).astype(np.float32)
        r_rows, r_score, r_d2 = candidates(pair[redo], alphas)
        j = r_d2.argmin(1)
        i = np.arange(redo.size)
        better = r_d2[i, j] < best_d2[redo]
        w = redo[better]
        best_row[w] = r_rows[i[better], j[better]]
        best_score[w] = r_score[i[better], j[better]]
        best_alpha[w] = alphas[i[better], j[better]]
        best_d2[w] = r_d2[i[better], j[better]]
        evals[redo] += cfg.refine_points
    # The anchors themselves (within the constraints), at a = 1.
    pair_rows = anchors.rows[near.reshape(-1)]
    if bounds is not None:
        pair_rows = hard_decode(
            engine.pre, pair_rows, bounds[0][pair_q], bounds[1][pair_q], x[pair_q]
        )
        pair_score = score_of(pair_rows)
        evals += k
    else:
        pair_score = anchors.score[near.reshape(-1)]
    a_d2 = np.where(
        (pair_score >= t) & (pair_score < top), ((pair_rows - x[pair_q]) ** 2).sum(1), np.inf
    ).reshape(m, k)
    j = a_d2.argmin(1)
    nearer = a_d2[np.arange(m), j] < np.where(found, best_d2, np.inf)
    w = np.nonzero(nearer)[0]
    best_row[w] = pair_rows[w * k + j[w]]
    best_score[w] = pair_score[w * k + j[w]]
    best_alpha[w] = 1.0
    found = found | nearer
    return Rescued(
        found=found,
        cf=np.where(found[:, None], best_row, 0.0).astype(np.float32),
        cf_score=np.where(found, best_score, np.nan).astype(np.float32),
        alpha=np.where(found, best_alpha, np.nan).astype(np.float32),
        evaluations=evals,
    )


def _confirm_nearest(
    engine: Engine,
    x: np.ndarray,
    cfg: RunSettings,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    near: np.ndarray,
    pair_q: np.ndarray,
    grid: np.ndarray,
    rows: np.ndarray,
    d2: np.ndarray,
    rounds: int,
) -> Rescued:
    """The screened last resort's choice: over the path candidates g approves (``d2``, inf
    where it does not) and the anchors, nearest first, f confirms path candidates until one is
    approved (``rounds`` calls per row at most); an anchor f approves needs no call."""
    anchors = engine.anchors
    assert anchors is not None
    m, k = near.shape
    steps = grid.size
    t, top = cfg.threshold, cfg.threshold + cfg.tol
    width = x.shape[1]
    a_rows = anchors.rows[near.reshape(-1)]
    a_score = anchors.score[near.reshape(-1)]
    evals = np.zeros(m, np.int32)
    if bounds is not None:  # anchors moved into the bounds must be scored again, by f
        a_rows = hard_decode(engine.pre, a_rows, bounds[0][pair_q], bounds[1][pair_q], x[pair_q])
        a_score = engine.score(a_rows)
        evals += k
    a_d2 = np.where(
        (a_score >= t) & (a_score < top), ((a_rows - x[pair_q]) ** 2).sum(1), np.inf
    ).reshape(m, k)
    flat = d2.reshape(m, k * steps).copy()
    path_rows = rows.reshape(m, k * steps, width)
    best_a = a_d2.argmin(1)
    best_a_d2 = a_d2[np.arange(m), best_a]
    found = np.zeros(m, bool)
    cf = np.zeros((m, width), np.float32)
    cf_score = np.full(m, np.nan, np.float32)
    alpha = np.full(m, np.nan, np.float32)
    pending = np.arange(m)
    for _ in range(rounds):
        j = flat[pending].argmin(1)
        dj = flat[pending, j]
        ask = np.isfinite(dj) & (dj < best_a_d2[pending])
        pending = pending[ask]
        if pending.size == 0:
            break
        j = j[ask]
        sc = engine.score(path_rows[pending, j])
        evals[pending] += 1
        ok = (sc >= t) & (sc < top)
        r = pending[ok]
        found[r], cf[r], cf_score[r], alpha[r] = (
            True,
            path_rows[r, j[ok]],
            sc[ok],
            grid[j[ok] % steps],
        )
        flat[pending[~ok], j[~ok]] = np.inf
        pending = pending[~ok]
    # the nearest approved anchor where no nearer path candidate was confirmed
    use = np.nonzero(~found & np.isfinite(best_a_d2))[0]
    pick = use * k + best_a[use]
    found[use], cf[use], cf_score[use], alpha[use] = True, a_rows[pick], a_score[pick], 1.0
    return Rescued(found=found, cf=cf, cf_score=cf_score, alpha=alpha, evaluations=evals)
