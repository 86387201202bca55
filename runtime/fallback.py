"""The last-resort search: a query whose walk toward mu_1 never crossed the threshold walks toward
nearby approved training rows instead (search kind ``anchored``).

A bundle may carry ``anchors.npy``: the latent codes (z, z_u) of a seeded sample of training rows
that f approves and whose own hard-decoded reconstruction f approves too. For a missed query
(z_q, z_u,q) the runtime takes the ``fallback_neighbours`` anchors whose decoded rows are nearest
to the query in the model's input space and, for each, decodes

    D((1 - a) z_q + a z_a, (1 - a) z_u,q + a z_u,a)

on ``fallback_steps`` points a in (0, 1], hard-decoded (and bounded by the constraints) exactly
like the main search, scored by f. Both latents move: where z_u carries label information the
walk in z alone cannot flip f, but a walk to an approved row's full code ends at that row's
decoding, which f approves. Of all candidates with T <= f < T + tol on these paths the one
nearest to the query is returned (a path may wander off before it reaches the anchor's own
decoding, so the first crossing is not always the nearest); when the grid point before it was
no counterfactual, that interval is subdivided once (``refine_points``) for a nearer one. Decoding and scoring use the bundle's own ``encoder``, ``encoder_u``,
``decoder`` and ``classifier`` graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmcf.runtime.errors import BundleError

if TYPE_CHECKING:
    from gmcf.runtime.engine import Engine
    from gmcf.runtime.schema import Preprocessor
    from gmcf.runtime.settings import RunSettings

#: Candidates decoded per call (queries x anchors x alphas).
CALL_ROWS = 16384


@dataclass
class Anchors:
    """Latent codes of approved training rows, their hard decodings and f's scores of them."""

    z: np.ndarray  # [n, d]
    zu: np.ndarray  # [n, d_u]
    rows: np.ndarray  # [n, F] hard-decoded D(z, z_u), model space
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
    """The bundle's anchors with their decodings, or None when it carries none."""
    spec = engine.bundle.manifest.anchors
    if not spec:
        return None
    path = engine.bundle.path / str(spec["file"])
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {engine.bundle.path}: cannot read {spec['file']} ({exc})") from exc
    latent = engine.bundle.manifest.latent
    d = latent.dim
    if codes.ndim != 2 or codes.shape[1] != d + latent.u_dim:
        raise BundleError(f"bundle {engine.bundle.path}: {spec['file']} has shape {list(codes.shape)}")
    codes = np.ascontiguousarray(codes, dtype=np.float32)
    z, zu = codes[:, :d], codes[:, d:]
    rows = hard_decode(engine.pre, engine.run("decoder", {"z": z, "z_u": zu}))
    return Anchors(z, zu, rows, engine.score(rows))


def hard_decode(
    pre: Preprocessor, soft: np.ndarray, lower: np.ndarray | None = None, upper: np.ndarray | None = None
) -> np.ndarray:
    """The search graphs' hard decoding in numpy: numeric values clamped to the bounds and
    integers rounded to their grid, each categorical block arg-maxed over its allowed categories."""
    n = pre.n_numeric
    out = np.zeros_like(soft, dtype=np.float32)
    cont = soft[:, :n]
    lo_b = np.zeros_like(cont) if lower is None else lower[:, :n]
    up_b = np.ones_like(cont) if upper is None else upper[:, :n]
    cont = np.minimum(np.maximum(cont, lo_b), up_b)
    lo, hi = pre.lo_hi()
    span = np.where(hi > lo, hi - lo, 1.0)
    scale = np.where(pre.integer_mask(), span, 2.0**24).astype(np.float32)
    cont = np.round(cont * scale) * (np.float32(1.0) / scale)
    out[:, :n] = np.minimum(np.maximum(cont, lo_b), up_b)
    offset = n
    rows = np.arange(len(soft))
    for k in pre.cat_sizes:
        blk = soft[:, offset: offset + k]
        if upper is not None:
            blk = blk - 1e9 * (1.0 - upper[:, offset: offset + k])
        out[rows, offset + np.argmax(blk, axis=1)] = 1.0
        offset += k
    return out


def compact(pre: Preprocessor, rows: np.ndarray) -> np.ndarray:
    """Model-space rows -> compact code (the inverse of ``Preprocessor.expand_code``)."""
    n = pre.n_numeric
    parts = [rows[:, :n]]
    offset = n
    for k in pre.cat_sizes:
        parts.append(np.argmax(rows[:, offset: offset + k], axis=1)[:, None].astype(np.float32))
        offset += k
    return np.concatenate(parts, axis=1).astype(np.float32)


def _decode_score(
    engine: Engine, z: np.ndarray, zu: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.empty((len(z), engine.pre.width), np.float32)
    score = np.empty(len(z), np.float32)
    for i in range(0, len(z), CALL_ROWS):
        s = slice(i, i + CALL_ROWS)
        soft = engine.run("decoder", {"z": z[s], "z_u": zu[s]})
        rows[s] = hard_decode(
            engine.pre, soft, None if lower is None else lower[s], None if upper is None else upper[s]
        )
        score[s] = engine.score(rows[s])
    return rows, score


def rescue(
    engine: Engine,
    x: np.ndarray,
    cfg: RunSettings,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> Rescued | None:
    """Walk each row of ``x`` (model space, rows the main search missed) toward its nearest
    anchors; None when the bundle has no anchors."""
    anchors = engine.anchors
    if anchors is None or len(x) == 0:
        return None
    m, width = x.shape
    k = min(cfg.fallback_neighbours, len(anchors.score))
    t, top = cfg.threshold, cfg.threshold + cfg.tol
    # Nearest anchors by the L2 distance of their decoded rows to the query.
    d2 = (x**2).sum(1)[:, None] - 2.0 * x @ anchors.rows.T + (anchors.rows**2).sum(1)[None, :]
    near = np.argsort(d2, axis=1, kind="stable")[:, :k]  # [m, k]
    zq = engine.run("encoder", {"x": x})
    zuq = engine.run("encoder_u", {"x": x})
    pair_q = np.repeat(np.arange(m), k)  # query of each (query, anchor) pair
    za, zua = anchors.z[near.reshape(-1)], anchors.zu[near.reshape(-1)]

    def candidates(pairs: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [P, S, F], scores [P, S] and squared distances to the query [P, S] (inf where
        the score is outside [T, T + tol)) of the pairs ``pairs`` at ``alphas`` [P, S]."""
        s = alphas.shape[1]
        a = alphas.reshape(-1, 1)
        rep = np.repeat(pairs, s)
        q = pair_q[rep]
        rows, score = _decode_score(
            engine, (1 - a) * zq[q] + a * za[rep], (1 - a) * zuq[q] + a * zua[rep],
            None if bounds is None else bounds[0][q], None if bounds is None else bounds[1][q],
        )
        d2 = ((rows - x[q]) ** 2).sum(1)
        d2 = np.where((score >= t) & (score < top), d2, np.inf)
        return rows.reshape(len(pairs), s, width), score.reshape(len(pairs), s), d2.reshape(len(pairs), s)

    grid = np.linspace(1.0 / cfg.fallback_steps, 1.0, cfg.fallback_steps, dtype=np.float32)
    steps = grid.size
    rows, score, d2 = candidates(np.arange(m * k), np.broadcast_to(grid, (m * k, steps)).copy())
    evals = np.full(m, k * steps, np.int32)
    # The nearest approved candidate over every anchor's path (not the first crossing: a path
    # may wander off before it reaches the anchor's own decoding, its last point).
    flat = d2.reshape(m, k * steps)
    pick = flat.argmin(1)
    found = np.isfinite(flat[np.arange(m), pick])
    pair = np.arange(m) * k + pick // steps
    step = pick % steps
    best_row = rows[pair, step]
    best_score = score[pair, step]
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
        evals[redo] += cfg.refine_points
    return Rescued(
        found=found,
        cf=np.where(found[:, None], best_row, 0.0).astype(np.float32),
        cf_score=np.where(found, best_score, np.nan).astype(np.float32),
        alpha=np.where(found, best_alpha, np.nan).astype(np.float32),
        evaluations=evals,
    )
