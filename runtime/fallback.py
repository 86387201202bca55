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
decoding, which f approves. Per anchor the first candidate with T <= f < T + tol is kept, the
bracket before it is subdivided once (``refine_points``), and the nearest of the anchors'
answers is returned. Decoding and scoring use the bundle's own ``encoder``, ``encoder_u``,
``decoder`` and ``classifier`` graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmcf.runtime.errors import BundleError

if TYPE_CHECKING:
    from gmcf.runtime.bundle import SearchDefaults
    from gmcf.runtime.schema import Preprocessor
    from gmcf.runtime.search import Engine

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
    spec = engine.bundle.manifest.get("anchors")
    if not spec:
        return None
    path = engine.bundle.path / str(spec["file"])
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {engine.bundle.path}: cannot read {spec['file']} ({exc})") from exc
    d = int(engine.bundle.manifest["latent"]["dim"])
    if codes.ndim != 2 or codes.shape[1] != d + int(engine.bundle.manifest["latent"]["u_dim"]):
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
    cfg: SearchDefaults,
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
    lower = None if bounds is None else np.repeat(bounds[0], k, axis=0)
    upper = None if bounds is None else np.repeat(bounds[1], k, axis=0)
    za = anchors.z[near].reshape(m * k, -1)
    zua = anchors.zu[near].reshape(m * k, -1)
    zs, zus = np.repeat(zq, k, axis=0), np.repeat(zuq, k, axis=0)
    pairs = m * k
    best = np.full(pairs, np.nan, np.float32)
    best_a = np.full(pairs, np.nan, np.float32)
    best_row = np.zeros((pairs, width), np.float32)
    lo_a = np.zeros(pairs, np.float32)
    hi_a = np.full(pairs, np.nan, np.float32)

    def walk(idx: np.ndarray, alphas: np.ndarray) -> None:
        """Candidates at ``alphas`` [len(idx), S] for pairs ``idx``; keep first crossings."""
        s = alphas.shape[1]
        a = alphas.reshape(-1, 1)
        rep = np.repeat(idx, s)
        rows, score = _decode_score(
            engine, (1 - a) * zs[rep] + a * za[rep], (1 - a) * zus[rep] + a * zua[rep],
            None if lower is None else lower[rep], None if upper is None else upper[rep],
        )
        score = score.reshape(-1, s)
        ok = (score >= t) & (score < top)
        crossed = score >= t
        has = crossed.any(1)
        first = crossed.argmax(1)
        hit = has & ok[np.arange(len(idx)), first]
        i = idx[hit]
        f = first[hit]
        best[i] = score[hit, f]
        best_a[i] = alphas[hit, f]
        best_row[i] = rows.reshape(len(idx), s, width)[hit, f]
        hi_a[i] = alphas[hit, f]
        lo_a[i] = np.where(f > 0, alphas[hit, np.maximum(f - 1, 0)], lo_a[i])
        miss = idx[~has]
        lo_a[miss] = alphas[~has, -1]

    grid = np.linspace(1.0 / cfg.fallback_steps, 1.0, cfg.fallback_steps, dtype=np.float32)
    walk(np.arange(pairs), np.broadcast_to(grid, (pairs, grid.size)).copy())
    evals = np.full(m, k * grid.size, np.int32)
    hit = np.nonzero(~np.isnan(best))[0]
    if cfg.refine and hit.size:
        # One round between the last point below T and the crossing: closer to the query.
        frac = np.arange(1, cfg.refine_points + 1, dtype=np.float32) / (cfg.refine_points + 1)
        alphas = lo_a[hit, None] + (hi_a[hit] - lo_a[hit])[:, None] * frac[None, :]
        walk(hit, alphas.astype(np.float32))
        np.add.at(evals, hit // k, cfg.refine_points)
    dist = np.where(np.isnan(best), np.inf, ((best_row - np.repeat(x, k, axis=0)) ** 2).sum(1))
    choice = dist.reshape(m, k).argmin(1)
    pick = np.arange(m) * k + choice
    found = np.isfinite(dist[pick])
    return Rescued(
        found=found,
        cf=np.where(found[:, None], best_row[pick], 0.0).astype(np.float32),
        cf_score=np.where(found, best[pick], np.nan).astype(np.float32),
        alpha=np.where(found, best_a[pick], np.nan).astype(np.float32),
        evaluations=evals,
    )
