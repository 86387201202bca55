"""The screen: a small MLP g distilled from the user's classifier f, so that the runtime can walk a
path with g and ask f only about the candidates g picks (``gmcf.runtime.search``).

A gradient-boosted f costs microseconds per row, ten to twenty times the autoencoder's decoding
of a candidate; the walk scores up to a few dozen candidates per query, the last resort and the
revert step more. With the screen, f confirms about one candidate per query and step, and every
row the runtime returns is still scored by f itself.

g learns f's score where the runtime asks it: the candidates of the bundle's own search graph
(training rows f rejects, walked over the runtime's grid toward mu_1 and past it to
``max_alpha``), the last resort's candidates toward approved training rows, the revert step's
mixtures of a query and a candidate, and the training rows themselves. The targets are f's scores
from the bundle's own graphs (onnxruntime), so g sees exactly what the runtime scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from gmcf.runtime import dependencies
from gmcf.runtime.bundle import load_bundle
from gmcf.runtime.engine import Engine
from gmcf.runtime.fallback import rescue
from gmcf.trainer.fit import _batches, seed_everything
from gmcf.trainer.model import ReferenceClassifier


@dataclass(frozen=True)
class ScreenConfig:
    queries: int = 8000
    """Training rows f rejects, walked to make the distillation set."""
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 10
    batch_size: int = 2048
    lr: float = 1e-2
    holdout: float = 0.1
    """Share of the distillation set kept to measure g's agreement with f."""


def distillation_set(
    bundle: Path, x: np.ndarray, f_x: np.ndarray, seed: int, cfg: ScreenConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (model space) and f's scores of them, from the bundle written at ``bundle``."""
    engine = Engine(load_bundle(bundle, verify=False))
    settings = engine.bundle.search
    rng = np.random.default_rng(seed)
    t = settings.threshold
    rejected = np.nonzero(f_x < t)[0]
    q = np.sort(rng.choice(rejected, min(cfg.queries, rejected.size), replace=False))
    steps = settings.steps
    grid = np.linspace(1.0 / steps, 1.0, steps, dtype=np.float32)
    ext = np.linspace(1.0, max(settings.max_alpha, 1.0), steps + 1, dtype=np.float32)[1:]
    path = np.concatenate([grid, ext])
    rows: list[np.ndarray] = [x]
    scores: list[np.ndarray] = [f_x.astype(np.float32)]
    groups = [np.array(c) for c in dependencies.groups(engine.pre)]
    chunk = max(1, 32768 // path.size)
    for start in range(0, q.size, chunk):
        xs = x[q[start : start + chunk]]
        b = len(xs)
        cand, score = engine.candidates(xs, np.broadcast_to(path, (b, path.size)).copy())
        rows.append(cand.reshape(b * path.size, -1))
        scores.append(score.reshape(-1))
        # the revert step's rows: the query with some of a candidate's feature groups
        pick = cand[np.arange(b), rng.integers(0, path.size, b)]
        for _ in range(2):
            mix = pick.copy()
            for cols in groups:
                back = np.nonzero(rng.random(b) < 0.5)[0]
                mix[np.ix_(back, cols)] = xs[np.ix_(back, cols)]
            rows.append(mix)
            scores.append(engine.score(mix))
    if engine.anchors is not None:
        # the last resort's candidates: the rows its walks decode, scored by f
        few = q[rng.permutation(q.size)[: max(1, q.size // 4)]]

        def record(r: np.ndarray) -> np.ndarray:
            s = engine.score(r)
            rows.append(np.array(r, np.float32, copy=True))
            scores.append(s)
            return s

        rescue(engine, x[few], settings, score=record)
    return np.concatenate(rows).astype(np.float32), np.concatenate(scores).astype(np.float32)


def fit_screen(
    rows: np.ndarray,
    f: np.ndarray,
    threshold: float,
    seed: int,
    cfg: ScreenConfig = ScreenConfig(),
    progress: Callable[[str], None] | None = None,
) -> tuple[ReferenceClassifier, dict[str, Any]]:
    """g: the reference classifier's shape with wider layers (the search graphs run it on
    columns), fitted to f's scores with binary cross-entropy on soft targets. Returns g and its
    agreement with f's decisions on a held-out share of the rows."""
    seed_everything(seed)
    perm = np.random.default_rng(seed).permutation(len(rows))
    n_hold = int(len(rows) * cfg.holdout)
    hold, fit = perm[:n_hold], perm[n_hold:]
    g = ReferenceClassifier(rows.shape[1], cfg.hidden)
    xt = torch.from_numpy(rows[fit])
    yt = torch.from_numpy(np.clip(f[fit], 0.0, 1.0).astype(np.float32))
    opt = torch.optim.Adam(g.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(cfg.epochs):
        total = 0.0
        for idx in _batches(len(xt), cfg.batch_size, gen):
            loss = nn.functional.binary_cross_entropy_with_logits(g.logits(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if progress:
            progress(f"screen epoch {epoch + 1}/{cfg.epochs} loss {total / len(xt):.4f}")
    g.eval()
    with torch.no_grad():
        s = g(torch.from_numpy(rows[hold])).numpy()
    agree = float(((s >= threshold) == (f[hold] >= threshold)).mean()) if n_hold else float("nan")
    return g, {
        "rows": len(rows),
        "agreement": round(agree, 4),
        "hidden": list(cfg.hidden),
        "epochs": cfg.epochs,
    }


def screen_graphs(graphs: dict[str, onnx.ModelProto]) -> dict[str, onnx.ModelProto]:
    """The bundle's screen graphs from graphs exported with g as the classifier."""
    return {
        "screen": graphs["search"],
        "screen_bounded": graphs["search_bounded"],
        "screen_classifier": graphs["classifier"],
    }
