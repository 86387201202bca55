"""How plausible a counterfactual is, by the model itself.

The encoder maps rows to a latent space shaped into one Gaussian per class; a counterfactual
whose code ``z = E(x_cf)`` lies where the target class's Gaussian N(mu_1, diag var_1) has
mass looks like the rows f approves. ``log_density`` is that Gaussian's log-density at ``z``
(summed over the latent dimensions; higher is more plausible). For comparison, the same
figure for the approved training rows is what a typical approved applicant scores.
"""

from __future__ import annotations

import numpy as np


def log_density(z: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log N(z; mu, diag var) per row of ``z`` [n, d]."""
    z = np.asarray(z, np.float64)
    var = np.asarray(var, np.float64)
    return np.asarray(
        -0.5 * (((z - mu) ** 2 / var).sum(axis=1) + np.log(2.0 * np.pi * var).sum()),
        dtype=np.float32,
    )
