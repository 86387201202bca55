"""Algorithm 2, vectorised over a batch of queries and over the alpha path.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from gmcf.runtime.bundle import Bundle, SearchDefaults, check_graph_signature
from gmcf.runtime.errors import BundleError, GmcfError

# Row status codes (index into STATUSES) and search kinds (index into SEARCH_KINDS).
STATUSES = ("found", "already_target", "not_found", "invalid")
FOUND, ALREADY, NOT_FOUND, INVALID = range(4)
SEARCH_KINDS = ("grid", "refined", "extrapolated", "anchored")
GRID, REFINED, EXTRAPOLATED, ANCHORED = range(4)
#: Alphas evaluated per call along a path; rows stop at their first crossing. 1M Adult rows, 2
#: workers, seven runs each: 8 gave 378-403k rows/s (median 401k), 16 gave 369-387k (381k).
BLOCK = 8


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class Engine:
    """onnxruntime sessions of a bundle: the fused search graph, f, and the reconstruction."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        if threads < 1:
            raise GmcfError(f"threads must be at least 1, got {threads}")
        self.bundle = bundle
        self.threads = threads
        self.sessions: dict[str, ort.InferenceSession] = {}
        # search_bounded is opened on first use (only constrained searches need it).
        for name in ("search", "classifier", "reconstruct"):
            self._open(name)
        self.pre = bundle.preprocessor
        width = self.pre.width
        shape = self.sessions["classifier"].get_inputs()[0].shape
        if isinstance(shape[1], int) and shape[1] != width:
            raise BundleError(
                f"bundle {bundle.path}: classifier takes {shape[1]} inputs, preprocessing makes {width}"
            )
        self.mu_1 = np.asarray(bundle.mu_1, dtype=np.float32)
        self._probe("search")
        self._anchors: Any = None

    @property
    def anchors(self) -> Any:
        """The bundle's anchors for the last-resort search (``gmcf.runtime.fallback.Anchors``),
        loaded on first use; None when the bundle carries none."""
        if self._anchors is None:
            from gmcf.runtime.fallback import load_anchors

            self._anchors = load_anchors(self) or False
        return self._anchors or None

    def run(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The first output of one of the bundle's graphs (opened on first use)."""
        return np.asarray(self._open(name).run(None, feed)[0], dtype=np.float32)

    def _open(self, name: str) -> ort.InferenceSession:
        if name not in self.sessions:
            sess = _session(str(self.bundle.graph_path(name)), self.threads)
            check_graph_signature(
                self.bundle, name, [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
            )
            self.sessions[name] = sess
            if name == "search_bounded":
                self._probe(name)
        return self.sessions[name]

    def _probe(self, name: str) -> None:
        """One query, two alphas: a search graph must return one scored code per candidate."""
        x0 = np.zeros((1, self.pre.width), np.float32)
        feed = {"x": x0, "alphas": np.ones((1, 2), np.float32), "target": self.mu_1_rows(1)}
        if name == "search_bounded":
            feed |= {"lower": x0, "upper": x0 + 1.0}
        code, score = self.sessions[name].run(None, feed)
        code_width = self.pre.code_width
        if code.shape != (2, code_width) or score.shape != (2,):
            raise BundleError(
                f"bundle {self.bundle.path}: {name} graph returns code {list(code.shape)} and scores "
                f"{list(score.shape)} for 1 query x 2 alphas, expected [2, {code_width}] and [2]"
            )

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.sessions["classifier"].run(None, {"x": x})[0], dtype=np.float32)

    def candidates(
        self, x: np.ndarray, alphas: np.ndarray, target: np.ndarray | None = None,
        lower: np.ndarray | None = None, upper: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hard-decoded candidates [B, S, F] in model space and their scores [B, S].

        ``target`` [B, d] defaults to mu_1 for every row; ``lower``/``upper`` [B, F] bound the
        returned rows in model space and default to [0, 1] (the training range)."""
        code, score = self.codes(x, alphas, target, lower, upper)
        b, s, c = code.shape
        return self.pre.expand_code(code.reshape(b * s, c)).reshape(b, s, -1), score

    def codes(
        self, x: np.ndarray, alphas: np.ndarray, target: np.ndarray | None = None,
        lower: np.ndarray | None = None, upper: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``candidates``, with each candidate in compact code [B, S, C] (see
        ``Preprocessor.expand_code``): what the search keeps until it has chosen."""
        b, s = alphas.shape
        feed = {"x": x, "alphas": alphas, "target": self.mu_1_rows(b) if target is None else target}
        graph = "search"
        if lower is not None or upper is not None:
            graph = "search_bounded"
            feed["lower"] = np.zeros_like(x) if lower is None else lower
            feed["upper"] = np.ones_like(x) if upper is None else upper
        rows, score = self._open(graph).run(None, feed)
        return rows.reshape(b, s, -1), score.reshape(b, s)

    def mu_1_rows(self, n: int) -> np.ndarray:
        return np.broadcast_to(self.mu_1, (n, self.mu_1.size)).copy()

    def reconstruction_error(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.sessions["reconstruct"].run(None, {"x": x})[0], dtype=np.float32)


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

    FIELDS = ("status", "kind", "score", "cf", "cf_score", "alpha", "evaluations", "overshoot")

    def assign(self, rows: np.ndarray, part: SearchResult) -> None:
        """Copy ``part`` (results for ``rows`` of this result, in order) into place."""
        for name in self.FIELDS:
            getattr(self, name)[rows] = getattr(part, name)

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
        )


def _first_crossing(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    cross = np.asarray(scores >= threshold)
    first = np.asarray(cross.argmax(axis=1))
    return np.asarray(cross[np.arange(len(first)), first]), first


def search(
    engine: Engine,
    x: np.ndarray,
    cfg: SearchDefaults,
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
    t, upper = cfg.threshold, cfg.threshold + cfg.tol
    grid = np.linspace(1.0 / cfg.steps, 1.0, cfg.steps, dtype=np.float32)
    xq = x[todo]
    lower_q = None if bounds is None else bounds[0][todo]
    upper_q = None if bounds is None else bounds[1][todo]
    target_q = engine.mu_1_rows(todo.size) if target is None else target[todo]

    def run(rows: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return engine.codes(
            xq[rows], alphas, target_q[rows],
            None if lower_q is None else lower_q[rows],
            None if upper_q is None else upper_q[rows],
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
            part = path[i: i + BLOCK]
            walk(rows, np.broadcast_to(part, (rows.size, part.size)).copy(), lo[rows].copy(), how)
            rows = rows[np.isnan(best_score[rows])]

    walk_path(ar, grid, 0.0, GRID)

    if cfg.extrapolate and cfg.max_alpha > 1.0:
        rows = np.nonzero(np.isnan(best_score))[0]
        ext = np.linspace(1.0, cfg.max_alpha, cfg.steps + 1, dtype=np.float32)[1:]
        walk_path(rows, ext, 1.0, EXTRAPOLATED)

    if cfg.refine:
        frac = np.arange(1, cfg.refine_points + 1, dtype=np.float32) / (cfg.refine_points + 1)
        for _ in range(cfg.refine_rounds):
            rows = np.nonzero(best_score >= upper)[0]
            if rows.size == 0:
                break
            alphas = lo[rows, None] + (hi[rows] - lo[rows])[:, None] * frac[None, :]
            prev_kind = kind[rows].copy()
            # A crossing inside the bracket shrinks it to (previous point, crossing point); none
            # moves its low end to the last point tried.
            walk(rows, alphas.astype(np.float32), lo[rows].copy(), REFINED)
            kind[rows] = np.where(prev_kind == EXTRAPOLATED, EXTRAPOLATED, kind[rows])

    found = ~np.isnan(best_score) & (best_score < upper)
    over = ~np.isnan(best_score) & ~found
    if cfg.fallback and not found.all():
        _last_resort(engine, xq, cfg, bounds, todo, found, best_code, best_score, best_alpha, kind, evals)
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
    engine: Engine, xq: np.ndarray, cfg: SearchDefaults, bounds: tuple[np.ndarray, np.ndarray] | None,
    todo: np.ndarray, found: np.ndarray, best_code: np.ndarray, best_score: np.ndarray,
    best_alpha: np.ndarray, kind: np.ndarray, evals: np.ndarray,
) -> None:
    """Rows the walk missed walk toward nearby approved training rows (``gmcf.runtime.fallback``);
    the arrays of the searched rows are updated in place where that finds a counterfactual."""
    from gmcf.runtime.fallback import compact, rescue

    miss = np.nonzero(~found)[0]
    b = None if bounds is None else (bounds[0][todo[miss]], bounds[1][todo[miss]])
    got = rescue(engine, xq[miss], cfg, b)
    if got is None:
        return
    evals[miss] += got.evaluations
    hit = miss[got.found]
    found[hit] = True
    best_code[hit] = compact(engine.pre, got.cf[got.found])
    best_score[hit] = got.cf_score[got.found]
    best_alpha[hit] = got.alpha[got.found]
    kind[hit] = ANCHORED
