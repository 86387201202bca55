"""The anchors of the last-resort search (``gmcf.runtime.fallback``): a seeded sample of the
training rows f approves, in the model's input space."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Anchors a bundle carries by default (``TrainConfig.anchors``): 84 bytes each for Adult's 21
#: model-space entries.
ANCHOR_COUNT = 4096


def select_anchors(
    x: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    threshold: float = 0.5,
    count: int = ANCHOR_COUNT,
    seed: int = 0,
) -> np.ndarray:
    """[n, F] float32: up to ``count`` rows of ``x`` (a seeded sample, in their order) that
    ``score`` (f) puts at or above ``threshold``; empty when ``count`` is 0 or none is approved."""
    approved = np.nonzero(score(x) >= threshold)[0]
    if count <= 0:
        approved = approved[:0]
    elif approved.size > count:
        approved = np.sort(np.random.default_rng(seed + 11).choice(approved, count, replace=False))
    return np.ascontiguousarray(x[approved], dtype=np.float32)
