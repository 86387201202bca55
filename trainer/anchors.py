"""The anchors of the last-resort search (``gmcf.runtime.fallback``): latent codes of training
rows that f approves and whose own hard-decoded reconstruction f approves too."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gmcf.runtime.fallback import hard_decode
from gmcf.runtime.schema import Preprocessor
from gmcf.trainer.model import GMCF

#: Anchors a bundle carries at most (24 bytes each for Adult's 3 + 3 latent dimensions).
ANCHOR_COUNT = 4096


def select_anchors(
    model: GMCF,
    pre: Preprocessor,
    x: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    threshold: float = 0.5,
    count: int = ANCHOR_COUNT,
    seed: int = 0,
) -> np.ndarray:
    """[n, d + d_u] float32: (z, z_u) of up to ``count`` rows of ``x`` (a seeded sample) that
    ``score`` (f) puts at or above ``threshold`` and whose hard-decoded reconstruction it also
    does; empty when there are none."""
    approved = np.nonzero(score(x) >= threshold)[0]
    with torch.no_grad():
        xt = torch.from_numpy(x[approved])
        z, zu = model.encoder(xt), model.encoder_u(xt)
        soft = model.decoder(torch.cat([z, zu], 1)).numpy()
    rows = hard_decode(pre, soft)
    keep = np.nonzero(score(rows) >= threshold)[0]
    if keep.size > count:
        keep = np.sort(np.random.default_rng(seed + 11).choice(keep, count, replace=False))
    return np.concatenate([z.numpy()[keep], zu.numpy()[keep]], axis=1).astype(np.float32)
