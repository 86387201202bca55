"""Gradient-boosted classifiers f (the models credit-risk teams use) on the tool's own encoding,
exported to ONNX, and the differentiable stand-in that gradient methods (GDL) descend on when f is
a tree ensemble.

``hgb``: scikit-learn's HistGradientBoostingClassifier through skl2onnx; ``lgbm``: LightGBM through
onnxmltools. Both class-balanced and single-threaded (``pip install 'gmcf-batch[gbm]'``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from gmcf.runtime.errors import InputError
from gmcf.runtime.metrics import harden
from gmcf.runtime.schema import Preprocessor
from gmcf.trainer.fit import _batches, seed_everything
from gmcf.trainer.model import mlp

#: Kinds of f: the paper's reference MLP (trained in torch) and the gradient-boosted models.
CLASSIFIERS = ("mlp", "hgb", "lgbm")
#: What each gradient-boosted kind imports (module names) and describes itself as.
NEEDS = {
    "hgb": ("sklearn", "skl2onnx", "threadpoolctl"),
    "lgbm": ("lightgbm", "onnxmltools"),
}
DESCRIPTIONS = {
    "mlp": "the paper's reference MLP",
    "hgb": "scikit-learn HistGradientBoostingClassifier, class-balanced",
    "lgbm": "LightGBM LGBMClassifier, class-balanced",
}


def check_classifier(kind: str) -> None:
    """Fail in one line on an unknown kind, or on a gradient-boosted kind whose libraries are
    not installed."""
    if kind not in CLASSIFIERS:
        raise InputError(f"unknown classifier {kind!r}; choose from: {', '.join(CLASSIFIERS)}")
    missing = []
    for name in NEEDS.get(kind, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(
            f"classifier {kind!r} needs {', '.join(missing)}: pip install 'gmcf-batch[gbm]'"
        )


def gbm_classifier(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> onnx.ModelProto:
    """A class-balanced gradient-boosted classifier on the encoded rows ``x`` and labels ``y``,
    as an ONNX model with one input [N, width] and class probabilities [N, 2]."""
    check_classifier(kind)
    if kind == "hgb":
        from skl2onnx import to_onnx
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # OpenMP on a shared machine is many times slower
            clf = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed).fit(
                x, y
            )
        with warnings.catch_warnings():
            # skl2onnx 1.20 writes booleans into integer attributes of the trees, which protobuf 6
            # accepts with a DeprecationWarning
            warnings.filterwarnings("ignore", "Field onnx.AttributeProto.ints", DeprecationWarning)
            model: Any = to_onnx(
                clf,
                x[:1],
                options={id(clf): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
        return model
    if kind == "lgbm":
        import lightgbm
        import onnx.compose
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        clf = lightgbm.LGBMClassifier(
            class_weight="balanced", random_state=seed, verbose=-1, n_jobs=1
        ).fit(x, y)
        converted = convert_lightgbm(
            clf,
            initial_types=[("x", FloatTensorType([None, x.shape[1]]))],
            zipmap=False,
            target_opset=15,
        )
        # onnxmltools names an initializer "one", as does the contract's adapter: prefix ours away
        return onnx.compose.add_prefix(converted, "lgbm_")
    raise InputError(f"classifier {kind!r} is not gradient-boosted")


# -- the stand-in ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StandInConfig:
    """A small MLP fitted to f's scores (soft targets, binary cross-entropy) on the training rows,
    a perturbed copy of them and rows decoded from around their latent codes."""

    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 15
    batch_size: int = 256
    lr: float = 2e-3
    numeric_noise: float = 0.1
    """SD of the Gaussian noise on the numeric entries of the perturbed copy (model space)."""
    category_flip: float = 0.3
    """Chance that each categorical feature of the perturbed copy takes a random category."""
    latent_noise: float = 0.5
    """SD of the noise added to the latent codes of the decoded rows."""


class StandIn(nn.Module):
    """P(f approves x) for model-space rows x [N, width], differentiable."""

    def __init__(self, width: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp([width, *hidden, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x).squeeze(-1))


def perturb(pre: Preprocessor, x: np.ndarray, cfg: StandInConfig, seed: int) -> np.ndarray:
    """A copy of ``x`` with noisy numeric entries and random categories, on the feature grid."""
    rng = np.random.default_rng(seed)
    out = np.array(x, dtype=np.float32, copy=True)
    n = pre.n_numeric
    out[:, :n] += rng.normal(0.0, cfg.numeric_noise, size=(len(out), n)).astype(np.float32)
    start = n
    for size in pre.cat_sizes:
        flip = rng.random(len(out)) < cfg.category_flip
        block = np.zeros((int(flip.sum()), size), np.float32)
        block[np.arange(len(block)), rng.integers(0, size, size=len(block))] = 1.0
        out[flip, start : start + size] = block
        start += size
    return harden(pre, out).astype(np.float32)


def fit_stand_in(
    score: Callable[[np.ndarray], np.ndarray],
    pre: Preprocessor,
    x_train: np.ndarray,
    x_test: np.ndarray,
    decode_near: Callable[[np.ndarray, float, int], np.ndarray] | None,
    seed: int,
    cfg: StandInConfig = StandInConfig(),
) -> tuple[StandIn, dict[str, float]]:
    """Fit the stand-in to f's scores ``score(x)`` (seeded). ``decode_near(x, sd, seed)`` gives
    hard-decoded rows from around the latent codes of ``x`` (the region a latent search walks).
    Returns the model and its agreement with f's decisions (score >= 0.5) on rows it was not
    fitted to: the held-out rows, their perturbed copies and rows decoded from around them."""
    parts = [x_train, perturb(pre, x_train, cfg, seed + 1)]
    if decode_near is not None:
        parts.append(decode_near(x_train, cfg.latent_noise, seed + 2))
    x_fit = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    y_fit = np.asarray(score(x_fit), dtype=np.float32)
    seed_everything(seed)
    model = StandIn(x_fit.shape[1], cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    xt, yt = torch.from_numpy(x_fit), torch.from_numpy(y_fit)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        for idx in _batches(len(xt), cfg.batch_size, gen):
            logits = model.net(xt[idx]).squeeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    checks = {"held_out": x_test, "held_out_perturbed": perturb(pre, x_test, cfg, seed + 3)}
    if decode_near is not None:
        checks["held_out_decoded"] = decode_near(x_test, cfg.latent_noise, seed + 4)
    agreement = {}
    for name, rows in checks.items():
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        with torch.no_grad():
            mine = model(torch.from_numpy(rows)).numpy() >= 0.5
        agreement[name] = float((mine == (score(rows) >= 0.5)).mean())
    return model, agreement
