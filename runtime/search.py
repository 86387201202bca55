"""Step 3 of the data path: the search, Algorithm 2, vectorised over a batch of queries and
over the alpha path.

For each query the fused graph ``search.onnx`` decodes z_s = (1 - a) z_q + a mu_1 for every a of a
grid, hard-decodes each candidate to the row a user would receive and scores it with f. The
counterfactual is the first candidate on the path with T <= f < T + tol. Beyond the paper, and
each visible in the row's ``search`` column:

- ``refined``: the first crossing overshot T + tol; the bracket (last a below T, first a above)
  is subdivided ``refine_rounds`` times with ``refine_points`` points until a candidate lands
  within tol.
- ``extrapolated``: the path to mu_1 never crossed T; the walk continues past mu_1 up to
  ``max_alpha``.
- ``anchored``: the last resort (``gmcf.runtime.fallback``): the row still has no counterfactual,
  and a walk toward the latent codes of nearby approved training rows found one.

``search_batch`` runs it over an encoded batch (in chunks, within the run's constraints and, for
K options per query, along several walks) and hands a ``BatchResult`` to the decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gmcf.runtime.constraints import Constraints
from gmcf.runtime.encode import Encoded
from gmcf.runtime.engine import Engine as Engine
from gmcf.runtime.fallback import compact, rescue
from gmcf.runtime.manifest import Latent
from gmcf.runtime.plausibility import log_density
from gmcf.runtime.revert import revert_changes
from gmcf.runtime.schema import ImagePreprocessor
from gmcf.runtime.settings import RunSettings
from gmcf.runtime.status import ALREADY as ALREADY
from gmcf.runtime.status import ANCHORED as ANCHORED
from gmcf.runtime.status import EXTRAPOLATED as EXTRAPOLATED
from gmcf.runtime.status import FOUND as FOUND
from gmcf.runtime.status import GRID as GRID
from gmcf.runtime.status import INVALID as INVALID
from gmcf.runtime.status import NOT_FOUND as NOT_FOUND
from gmcf.runtime.status import REFINED as REFINED
from gmcf.runtime.status import SEARCH_KINDS as SEARCH_KINDS
from gmcf.runtime.status import STATUSES as STATUSES

#: Alphas evaluated per call along a path; rows stop at their first crossing (docs/design.md).
BLOCK = 8
#: Queries per call of the fused graph (docs/design.md: 4,096 measured faster than 2,048).
SEARCH_CHUNK = 4096
#: Found rows per call of the revert step (``revert_found``).
REVERT_CHUNK = 8192
#: Model-space entries per chunk of queries for wide tabular rows (the limit binds above 98
#: entries per row; the shipped tables have 12 and 21).
WIDE_CHUNK_ENTRIES = 512 * 784
#: The same for images: 64 queries of 784 pixels, as fast as larger chunks and leaner
#: (docs/design.md).
IMAGE_CHUNK_ENTRIES = 64 * 784
#: With a screen and a last resort, a row whose g scores stay below threshold - FAR_FROM_CROSSING
#: over the walk's first block (alphas up to 0.5) walks no further: the last resort answers it.
#: On held-out rows the same validity, and L2 as low or lower (docs/design.md).
FAR_FROM_CROSSING = 0.2
#: Distance, in standard deviations of the target class's Gaussian, of the extra walks' targets
#: (K > 1 options per query; docs/design.md).
TARGET_SPREAD = 3.0


def search_chunk(width: int, image: bool = False) -> int:
    """Queries per call of the fused graph: SEARCH_CHUNK for tabular rows (fewer for very wide
    ones), fewer for images, whose convolutional decoder would otherwise hold B * steps feature
    maps at once."""
    entries = IMAGE_CHUNK_ENTRIES if image else WIDE_CHUNK_ENTRIES
    return max(16, min(SEARCH_CHUNK, entries // max(width, 1)))


@dataclass
class SearchResult:
    """Per-row outcome of the search for n queries (all arrays have length n)."""

    status: np.ndarray  # int8 codes into STATUSES
    kind: np.ndarray  # int8 codes into SEARCH_KINDS, -1 where nothing was found
    score: np.ndarray  # f(x_q)
    cf: np.ndarray  # [n, F] counterfactual rows in model space (zeros where none)
    cf_score: np.ndarray  # f(x_cf), NaN where none
    alpha: np.ndarray  # NaN where none
    evaluations: np.ndarray  # decoder evaluations spent on the row
    overshoot: np.ndarray  # best crossing score where the search crossed T but never within tol
    reverted: np.ndarray  # changes of the latent answer put back by the revert step

    FIELDS = (
        "status",
        "kind",
        "score",
        "cf",
        "cf_score",
        "alpha",
        "evaluations",
        "overshoot",
        "reverted",
    )

    def assign(self, rows: np.ndarray, part: SearchResult) -> None:
        """Copy ``part`` (results for ``rows`` of this result, in order) into place."""
        for name in self.FIELDS:
            getattr(self, name)[rows] = getattr(part, name)

    def take(self, rows: np.ndarray) -> SearchResult:
        """The results of ``rows``, in order (copies)."""
        return SearchResult(*(getattr(self, name)[rows] for name in self.FIELDS))

    @classmethod
    def empty(cls, n: int, width: int) -> SearchResult:
        return cls(
            status=np.full(n, INVALID, np.int8),
            kind=np.full(n, -1, np.int8),
            score=np.full(n, np.nan, np.float32),
            cf=np.zeros((n, width), np.float32),
            cf_score=np.full(n, np.nan, np.float32),
            alpha=np.full(n, np.nan, np.float32),
            evaluations=np.zeros(n, np.int32),
            overshoot=np.full(n, np.nan, np.float32),
            reverted=np.zeros(n, np.int32),
        )


def _first_crossing(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    cross = np.asarray(scores >= threshold)
    first = np.asarray(cross.argmax(axis=1))
    return np.asarray(cross[np.arange(len(first)), first]), first


def search(
    engine: Engine,
    x: np.ndarray,
    cfg: RunSettings,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    target: np.ndarray | None = None,
    score: np.ndarray | None = None,
) -> SearchResult:
    """Explain every row of ``x`` (model space, float32, all rows valid).

    ``bounds`` (lower, upper) [n, F] constrain the returned rows (see runtime/constraints.py);
    ``target`` [n, d] is the latent point each query walks toward (default mu_1); ``score``, f(x)
    if the caller has it already."""
    n, width = x.shape
    res = SearchResult.empty(n, width)
    res.score[:] = engine.score(x) if score is None else score
    res.status[:] = np.where(res.score >= cfg.threshold, ALREADY, NOT_FOUND)
    todo = np.nonzero(res.status == NOT_FOUND)[0]
    if todo.size == 0:
        return res
    t, ceiling = cfg.threshold, cfg.score_ceiling
    grid = np.linspace(1.0 / cfg.steps, 1.0, cfg.steps, dtype=np.float32)
    xq = x[todo]
    # Per searched row: the bounds of the returned row in model space (constraints), if any.
    lower_bound = None if bounds is None else bounds[0][todo]
    upper_bound = None if bounds is None else bounds[1][todo]
    target_q = engine.mu_1_rows(todo.size) if target is None else target[todo]

    def run(
        rows: np.ndarray, alphas: np.ndarray, screen: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        return engine.codes(
            xq[rows],
            alphas,
            target_q[rows],
            None if lower_bound is None else lower_bound[rows],
            None if upper_bound is None else upper_bound[rows],
            screen,
        )

    m = todo.size
    ar = np.arange(m)

    # Per searched row: bracket (lo, hi) around the first crossing, and the best answer so far.
    lo = np.zeros(m, np.float32)
    hi = np.full(m, np.nan, np.float32)
    best_code = np.zeros((m, engine.pre.code_width), np.float32)
    best_score = np.full(m, np.nan, np.float32)
    best_alpha = np.full(m, np.nan, np.float32)
    kind = np.full(m, -1, np.int8)
    evals = np.zeros(m, np.int32)

    def walk(rows: np.ndarray, alphas: np.ndarray, start_lo: np.ndarray, how: int) -> None:
        """Evaluate ``alphas`` [r, K] for searched rows ``rows``; record first crossings."""
        cand, sc = run(rows, alphas)
        evals[rows] += alphas.shape[1]
        has, first = _first_crossing(sc, t)
        idx = np.nonzero(has)[0]
        r, f = rows[idx], first[idx]
        hi[r] = alphas[idx, f]
        lo[r] = np.where(f > 0, alphas[idx, np.maximum(f - 1, 0)], start_lo[idx])
        best_code[r] = cand[idx, f]
        best_score[r] = sc[idx, f]
        best_alpha[r] = hi[r]
        kind[r] = how
        # rows that did not cross: the bracket's low end moves to the last alpha tried
        lo[rows[~has]] = alphas[~has, -1]

    def walk_path(rows: np.ndarray, path: np.ndarray, start: float, how: int) -> None:
        """Walk ``path`` block by block, in order; a row leaves at its first crossing. Gives the
        same first crossing as evaluating the whole path at once, with fewer evaluations."""
        lo[rows] = start
        for i in range(0, path.size, BLOCK):
            if rows.size == 0:
                return
            part = path[i : i + BLOCK]
            walk(rows, np.broadcast_to(part, (rows.size, part.size)).copy(), lo[rows].copy(), how)
            rows = rows[np.isnan(best_score[rows])]

    ext = np.linspace(1.0, cfg.max_alpha, cfg.steps + 1, dtype=np.float32)[1:]
    extrapolate = cfg.extrapolate and cfg.max_alpha > 1.0
    if engine.screens(cfg):
        # g walks the path; f confirms g's first crossing, then its next one in the blocks g
        # walked (``screen_rounds``). The rows left go to the last resort when there is one, else
        # walk with f. A last resort that also takes the rows answered past mu_1
        # (``fallback_extrapolated``) keeps the nearer answer, and its anchored one was as near
        # or nearer on every held-out row measured: g then walks to mu_1 only (docs/design.md).
        last_resort = cfg.fallback and engine.anchors is not None
        beyond = extrapolate and not (last_resort and cfg.fallback_extrapolated)
        path = np.concatenate([grid, ext]) if beyond else grid
        code_g = np.zeros((m, path.size, engine.pre.code_width), np.float32)
        score_g = np.zeros((m, path.size), np.float32)
        # block by block (BLOCK alphas), each row until g first approves a candidate
        rows = ar
        for i in range(0, path.size, BLOCK):
            part = path[i : i + BLOCK]
            if rows.size == 0:
                break
            j = slice(i, i + part.size)
            code_g[rows, j], score_g[rows, j] = run(
                rows, np.broadcast_to(part, (rows.size, part.size)).copy(), screen=True
            )
            rows = rows[(score_g[rows, j] < t).all(axis=1)]
            if last_resort and i == 0:
                # far from crossing after the first block: the last resort's answer instead
                rows = rows[score_g[rows, j].max(axis=1) >= t - FAR_FROM_CROSSING]
        key = np.where(score_g >= t, np.arange(path.size)[None, :], path.size)
        pending = np.nonzero((key < path.size).any(axis=1))[0]
        for _ in range(cfg.screen_rounds):
            if pending.size == 0:
                break
            k = key[pending].argmin(axis=1)
            sc = engine.score(engine.pre.expand_code(code_g[pending, k]))
            evals[pending] += 1
            ok = sc >= t
            r, kk = pending[ok], k[ok]
            best_code[r] = code_g[r, kk]
            best_score[r] = sc[ok]
            best_alpha[r] = hi[r] = path[kk]
            lo[r] = np.where(kk > 0, path[np.maximum(kk - 1, 0)], 0.0)
            kind[r] = np.where(path[kk] > 1.0, EXTRAPOLATED, GRID)
            key[pending[~ok], k[~ok]] = path.size
            pending = pending[~ok]
            pending = pending[(key[pending] < path.size).any(axis=1)]
        rest = np.nonzero(np.isnan(best_score))[0]
        if last_resort:
            rest = rest[:0]  # the last resort takes them, screened as well
        walk_path(rest, grid, 0.0, GRID)
        if extrapolate:
            walk_path(rest[np.isnan(best_score[rest])], ext, 1.0, EXTRAPOLATED)
    else:
        walk_path(ar, grid, 0.0, GRID)
        if extrapolate:
            walk_path(np.nonzero(np.isnan(best_score))[0], ext, 1.0, EXTRAPOLATED)

    if cfg.refine:
        frac = np.arange(1, cfg.refine_points + 1, dtype=np.float32) / (cfg.refine_points + 1)
        for _ in range(cfg.refine_rounds):
            rows = np.nonzero(best_score >= ceiling)[0]
            if rows.size == 0:
                break
            alphas = lo[rows, None] + (hi[rows] - lo[rows])[:, None] * frac[None, :]
            prev_kind = kind[rows].copy()
            # A crossing inside the bracket shrinks it to (previous point, crossing point); none
            # moves its low end to the last point tried.
            walk(rows, alphas.astype(np.float32), lo[rows].copy(), REFINED)
            kind[rows] = np.where(prev_kind == EXTRAPOLATED, EXTRAPOLATED, kind[rows])

    found = ~np.isnan(best_score) & (best_score < ceiling)
    over = ~np.isnan(best_score) & ~found
    if cfg.fallback and (
        not found.all() or (cfg.fallback_extrapolated and (kind == EXTRAPOLATED).any())
    ):
        _last_resort(
            engine, xq, cfg, bounds, todo, found, best_code, best_score, best_alpha, kind, evals
        )
        over &= ~found
    idx = todo[found]
    res.status[idx] = FOUND
    res.kind[idx] = kind[found]
    res.cf[idx] = engine.pre.expand_code(best_code[found])
    res.cf_score[idx] = best_score[found]
    res.alpha[idx] = best_alpha[found]
    res.overshoot[todo[over]] = best_score[over]
    res.evaluations[todo] = evals
    return res


def _last_resort(
    engine: Engine,
    xq: np.ndarray,
    cfg: RunSettings,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    todo: np.ndarray,
    found: np.ndarray,
    best_code: np.ndarray,
    best_score: np.ndarray,
    best_alpha: np.ndarray,
    kind: np.ndarray,
    evals: np.ndarray,
) -> None:
    """Rows the walk missed walk toward nearby approved training rows (``gmcf.runtime.fallback``);
    so do rows it answered only past mu_1 (``fallback_extrapolated``), which keep the nearer of
    the two answers. The arrays of the searched rows are updated in place."""

    far = found & (kind == EXTRAPOLATED) if cfg.fallback_extrapolated else np.zeros_like(found)
    miss = np.nonzero(~found | far)[0]
    b = None if bounds is None else (bounds[0][todo[miss]], bounds[1][todo[miss]])
    screen = engine.screen_score if engine.screens(cfg) else None
    got = rescue(engine, xq[miss], cfg, b, screen, cfg.screen_rounds)
    if got is None:
        return
    evals[miss] += got.evaluations
    hit = miss[got.found]
    # a row the walk answered past mu_1 takes the anchored answer only where it is nearer
    walk_d = ((engine.pre.expand_code(best_code[hit]) - xq[hit]) ** 2).sum(1)
    new_d = ((got.cf[got.found] - xq[hit]) ** 2).sum(1)
    take = ~found[hit] | (new_d < walk_d)
    got_idx = np.nonzero(got.found)[0][take]
    hit = hit[take]
    found[hit] = True
    best_code[hit] = compact(engine.pre, got.cf[got_idx])
    best_score[hit] = got.cf_score[got_idx]
    best_alpha[hit] = got.alpha[got_idx]
    kind[hit] = ANCHORED


@dataclass
class BatchResult:
    """What the search step hands to the decode step for one batch of queries.

    One entry per output row: the query rows themselves in order, or with K > 1 options per
    query, one row per option (``source`` gives the query row each output row repeats)."""

    x: np.ndarray
    """[m, F] the query of each output row, in model space."""
    reason: np.ndarray
    """[m] why a row is invalid or could not be searched (None otherwise)."""
    result: SearchResult
    recon: np.ndarray
    """[m] the autoencoder's reconstruction error of each counterfactual (NaN where none)."""
    counted: np.ndarray
    """Status code of every query of the batch, each once: what a run's summary counts."""
    score_ceiling: float
    constrained: bool
    source: np.ndarray | None = None
    rank: np.ndarray | None = None
    """[m] rank of the option among its query's (1 = nearest; 0: the query has none)."""
    plausibility: np.ndarray | None = None
    """[m] log-density of each counterfactual's latent code under the target Gaussian (NaN where
    none)."""


def search_batch(
    engine: Engine,
    encoded: Encoded,
    settings: RunSettings,
    constraints: Constraints,
    num_cfs: int = 1,
    revert: bool = False,
) -> BatchResult:
    """Search every usable row of an encoded batch, in chunks of ``search_chunk`` queries;
    ``revert``: put back the changes f does not need (``gmcf.runtime.revert``)."""
    pre = engine.pre
    x, reason = encoded.x, encoded.reason
    ok = encoded.usable()
    targets = option_targets(engine.bundle.manifest.latent, num_cfs)
    walks = [SearchResult.empty(len(x), pre.width) for _ in targets]
    if constraints and ok.size:
        ok, reason = set_aside_unmeetable(engine, x, reason, ok, walks, settings, constraints)
    # the constraints' per-row bounds, once for the batch: the search and the revert step read them
    limits = None
    if constraints and ok.size:
        limits = np.zeros((len(x), pre.width), np.float32), np.ones((len(x), pre.width), np.float32)
        limits[0][ok], limits[1][ok] = constraints.bounds(pre, x[ok])
    chunk = chunk_for(engine)
    for start in range(0, ok.size, chunk):
        rows = ok[start : start + chunk]
        xr = x[rows]
        bounds = None if limits is None else (limits[0][rows], limits[1][rows])
        score = engine.score(xr) if len(targets) > 1 else None
        for res, target in zip(walks, targets, strict=True):
            tgt = (
                None if target is None else np.broadcast_to(target, (rows.size, target.size)).copy()
            )
            res.assign(rows, search(engine, xr, settings, bounds, tgt, score))
    if revert:
        # the found rows of the batch, REVERT_CHUNK at a time: fewer calls of f and g than
        # search chunk by search chunk, while the step's arrays stay in cache
        for res in walks:
            found = np.nonzero(res.status == FOUND)[0]
            for start in range(0, found.size, REVERT_CHUNK):
                hit = found[start : start + REVERT_CHUNK]
                bounds = None if limits is None else (limits[0][hit], limits[1][hit])
                part = res.take(hit)
                revert_found(engine, part, x[hit], settings, bounds)
                res.assign(hit, part)
    ceiling, constrained = settings.score_ceiling, bool(constraints)
    if num_cfs == 1:
        res = walks[0]
        return BatchResult(
            x,
            reason,
            res,
            reconstruction_errors(engine, res),
            res.status,
            ceiling,
            constrained,
            plausibility=plausibilities(engine, res),
        )
    src, rank, res = rank_options(walks, x, num_cfs)
    return BatchResult(
        x[src],
        reason[src],
        res,
        reconstruction_errors(engine, res),
        res.status[rank <= 1],
        ceiling,
        constrained,
        src,
        rank,
        plausibilities(engine, res),
    )


def revert_found(
    engine: Engine,
    part: SearchResult,
    x: np.ndarray,
    settings: RunSettings,
    bounds: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """The revert step on the found rows of ``part`` (in place; ``x`` and ``bounds``: its rows').
    Image bundles are not reverted: an image is one feature, and putting it back is the query
    itself."""

    hit = np.nonzero(part.status == FOUND)[0]
    if hit.size == 0 or isinstance(engine.pre, ImagePreprocessor):
        return
    b = None if bounds is None else (bounds[0][hit], bounds[1][hit])
    # with a screen, g ranks what to put back and f confirms (``revert._screened``)
    screened = engine.screens(settings)
    evals = np.zeros(hit.size, np.int32)
    part.cf[hit], part.cf_score[hit], part.reverted[hit] = revert_changes(
        engine.pre,
        engine.screen_score if screened else engine.score,
        x[hit],
        part.cf[hit],
        part.cf_score[hit],
        settings.threshold,
        settings.score_ceiling,
        b,
        evals,
        confirm=engine.score if screened else None,
        tries=settings.screen_rounds,
    )
    part.evaluations[hit] += evals


def plausibilities(engine: Engine, res: SearchResult) -> np.ndarray:
    """``plausibility.log_density`` of every counterfactual found (NaN for the other rows)."""

    out = np.full(len(res.status), np.nan, np.float32)
    hit = np.nonzero(res.status == FOUND)[0]
    latent = engine.bundle.manifest.latent
    mu, var = np.asarray(latent.mu_1, np.float32), np.asarray(latent.var_1, np.float32)
    chunk = chunk_for(engine)
    for start in range(0, hit.size, chunk):
        rows = hit[start : start + chunk]
        out[rows] = log_density(engine.latent(res.cf[rows]), mu, var)
    return out


def chunk_for(engine: Engine) -> int:
    """Queries per call of the engine's fused graph."""
    return search_chunk(engine.pre.width, isinstance(engine.pre, ImagePreprocessor))


def set_aside_unmeetable(
    engine: Engine,
    x: np.ndarray,
    reason: np.ndarray,
    ok: np.ndarray,
    walks: list[SearchResult],
    settings: RunSettings,
    constraints: Constraints,
) -> tuple[np.ndarray, np.ndarray]:
    """Queries whose constraints contradict each other (no row can meet them) are scored
    but not searched: ``already_target`` if f accepts them, else ``not_found`` with the
    reason. Returns the rows left to search and the updated reasons."""
    why = constraints.unmeetable(engine.pre, x[ok])
    stuck_at = why != None  # noqa: E711 - elementwise on an object array
    if not stuck_at.any():
        return ok, reason
    stuck = ok[stuck_at]
    score = engine.score(x[stuck])
    rejected = score < settings.threshold
    for res in walks:
        res.score[stuck] = score
        res.status[stuck] = np.where(rejected, NOT_FOUND, ALREADY)
    reason = reason.copy()
    reason[stuck[rejected]] = why[stuck_at][rejected]
    return ok[~stuck_at], reason


def reconstruction_errors(engine: Engine, res: SearchResult) -> np.ndarray:
    """The reconstruction error of every counterfactual found (NaN for the other rows)."""
    recon = np.full(len(res.status), np.nan, np.float32)
    hit = np.nonzero(res.status == FOUND)[0]
    chunk = chunk_for(engine)
    for start in range(0, hit.size, chunk):
        rows = hit[start : start + chunk]
        recon[rows] = engine.reconstruction_error(res.cf[rows])
    return recon


def option_targets(latent: Latent, num_cfs: int) -> list[np.ndarray | None]:
    """Latent points the walks head for: mu_1 (None) alone for one option; for K options mu_1
    first, then 2K - 2 points on the edge of the target class's Gaussian, TARGET_SPREAD standard
    deviations from mu_1 in fixed directions."""
    if num_cfs == 1:
        return [None]
    mu = np.asarray(latent.mu_1, np.float32)
    sd = np.sqrt(np.asarray(latent.var_1, np.float32))
    dirs = np.random.default_rng(20240229).standard_normal((2 * num_cfs - 2, mu.size))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return [mu, *[(mu + TARGET_SPREAD * sd * d).astype(np.float32) for d in dirs]]


def rank_options(
    walks: list[SearchResult], x: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, SearchResult]:
    """Merge the walks of every query into up to ``k`` distinct counterfactuals, nearest first.

    Returns, per output row, the query row it belongs to, its rank (1..k; 0 for a query with no
    counterfactual: already target, not found, or invalid) and its result."""
    n, width = x.shape
    w = len(walks)
    found = np.stack([r.status == FOUND for r in walks])  # [W, n]
    cf = np.stack([r.cf for r in walks])  # [W, n, F]
    dist = np.where(found, np.sqrt(((cf - x[None]) ** 2).sum(-1)), np.inf)
    order = np.argsort(dist, axis=0, kind="stable")  # [W, n], nearest walk first
    cols = np.arange(n)
    ranked_cf = cf[order, cols]  # [W, n, F]
    ranked_found = found[order, cols]
    # A walk is a new option if it found one and its row differs from every nearer walk's row
    # (equality is exact, so differing from every nearer walk = differing from every kept one).
    keep = ranked_found.copy()
    for j in range(1, w):
        same = (ranked_cf[:j] == ranked_cf[j][None]).all(axis=-1).any(axis=0)
        keep[j] &= ~same
    keep &= np.cumsum(keep, axis=0) <= k
    count = keep.sum(axis=0)  # options per query, 0..k
    # Output rows: a query's options in rank order, or one row when it has none.
    reps = np.maximum(count, 1)
    src = np.repeat(cols, reps)
    kept_q, kept_j = np.nonzero(keep.T)  # query by query, nearest first: the output's order
    rank = np.zeros(src.size, np.int64)
    pick = np.zeros(src.size, np.int64)
    slots = np.nonzero(np.repeat(count > 0, reps))[0]
    rank[slots] = np.cumsum(keep, axis=0)[kept_j, kept_q]
    pick[slots] = order[kept_j, kept_q]
    out = SearchResult.empty(src.size, width)
    for name in SearchResult.FIELDS:
        stacked = (
            cf if name == "cf" else np.stack([getattr(r, name) for r in walks])
        )  # cf: stacked above
        getattr(out, name)[:] = stacked[pick, src]
    out.evaluations[:] = np.stack([r.evaluations for r in walks]).sum(axis=0)[src]
    return src, rank, out
