"""Training levers beyond the paper that aim the walk at f's approval region (docs/design.md,
"Levers"). Each is off by default and switched on in ``TrainConfig``:

- ``lambda_tie`` > 0: a term tying the decodings at each class mean to that class. For every row
  of a batch, D(mu_c, z_u) is decoded for both classes c and a judge must read it as c: the
  walk's end point D(mu_1, z_u) is then approved whatever the query's z_u carries. The judge
  (``tie_judge``) is ``posterior`` (the mixture posterior of the decoding's re-encoding, with the
  encoder and means frozen for this term) or ``surrogate`` (a differentiable stand-in for f:
  the reference MLP itself when the trainer trained it, else a small MLP distilled from f's
  scores on the training rows).
- ``select_by = "walk"``: checkpoints are chosen by the real objective, the validity (then the
  proximity) of the walk on validation rows f rejects, decoded and hard-decoded as the exported
  search does and scored by the ONNX f, instead of by z_u's leakage.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from gmcf.runtime.schema import Preprocessor
from gmcf.trainer.model import GMCF, mlp

Judge = Callable[[torch.Tensor], torch.Tensor]
"""Soft decodings [N, F] -> logit of the positive class [N]."""


def posterior_judge(model: GMCF) -> Judge:
    """The mixture posterior of the re-encoded decoding, with the encoder and the means frozen
    (their parameters are detached: the term trains the decoder, not the judge)."""

    def judge(xs: torch.Tensor) -> torch.Tensor:
        params = {k: v.detach() for k, v in model.encoder.named_parameters()}
        z = functional_call(model.encoder, params, (xs,))
        var = model.var.detach()
        diff = z[:, None, :] - model.mu.detach()[None]
        logp = -0.5 * ((diff**2) / var).sum(-1) - 0.5 * torch.log(var).sum(-1) + model.log_prior
        return logp[:, 1] - logp[:, 0]

    return judge


def distilled_surrogate(
    x: np.ndarray, f_scores: np.ndarray, seed: int, epochs: int = 10
) -> nn.Module:
    """A small MLP (width-32-32-1) trained to reproduce f's scores on the training rows: a
    differentiable stand-in for a classifier given as ONNX (trees have no useful gradient)."""
    gen = torch.Generator().manual_seed(seed + 17)
    torch.manual_seed(seed + 17)
    net = mlp([x.shape[1], 32, 32, 1], act=nn.ReLU)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(np.clip(f_scores, 0.0, 1.0).astype(np.float32))
    pos = float((yt >= 0.5).float().mean().clamp(1e-3, 1 - 1e-3))
    w_all = torch.where(yt >= 0.5, 0.5 / pos, 0.5 / (1 - pos))
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 256):
            idx = perm[i : i + 256]
            loss = F.binary_cross_entropy_with_logits(
                net(xt[idx]).squeeze(-1), yt[idx], weight=w_all[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def module_judge(
    net: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Judge:
    """A frozen torch classifier as judge: ``logits`` (e.g. ReferenceClassifier.logits) or the
    module's own output squeezed to [N]."""
    for p in net.parameters():
        p.requires_grad_(False)
    return logits if logits is not None else (lambda xs: net(xs).squeeze(-1))


def tie_loss(
    model: GMCF, zu: torch.Tensor, judge: Judge, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the judge on D(mu_c, z_u) against c, both classes, every row's z_u."""
    n, d = zu.shape[0], model.mu.shape[1]
    total = zu.new_zeros(())
    for c in (0, 1):
        zz = torch.cat([model.mu[c].detach().expand(n, d), zu], dim=1)
        logit = judge(model.decoder(zz))
        target = torch.full((n,), float(c))
        bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        total = total + (bce.mean() if weights is None else (bce * weights).sum() / weights.sum())
    return total / 2


def walk_check(
    pre: Preprocessor,
    x_val: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    threshold: float = 0.5,
    steps: int = 16,
    max_alpha: float = 2.0,
    limit: int = 2000,
) -> Callable[[GMCF], dict[str, float]]:
    """Checkpoint figures by the real objective: for up to ``limit`` validation rows f rejects,
    the walk toward mu_1 (then past it up to ``max_alpha``), hard-decoded as the exported graphs
    do and scored by ``score`` (the ONNX f); the share that crosses T and the mean L2 of the
    first crossing."""
    from gmcf.trainer.export import PlainSearchFront

    rejected = x_val[score(x_val) < threshold][:limit]
    alphas = np.concatenate(
        [np.linspace(1.0 / steps, 1.0, steps), np.linspace(1.0, max_alpha, steps + 1)[1:]]
    ).astype(np.float32)

    def check(model: GMCF) -> dict[str, float]:
        if len(rejected) == 0:
            return {"walk_validity": float("nan"), "walk_l2": float("nan")}
        front = PlainSearchFront(model, pre).eval()
        b = len(rejected)
        with torch.no_grad():
            rows = front(
                torch.from_numpy(rejected),
                torch.from_numpy(np.tile(alphas, (b, 1))),
                model.mu[1].detach().expand(b, -1).contiguous(),
            ).numpy()
        sc = score(rows).reshape(b, alphas.size)
        cross = sc >= threshold
        has = cross.any(1)
        first = cross.argmax(1)
        cf = rows.reshape(b, alphas.size, -1)[np.arange(b), first]
        l2 = np.sqrt(((cf - rejected) ** 2).sum(1))[has]
        return {
            "walk_validity": float(has.mean()),
            "walk_l2": float(l2.mean()) if l2.size else float("nan"),
        }

    return check


def lever_hooks(
    cfg: object,
    pre: Preprocessor,
    clf: nn.Module | None,
    clf_onnx: object,
    x_fit: np.ndarray,
    f_fit: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[Callable[[GMCF], Judge] | None, Callable[[GMCF], dict[str, float]] | None]:
    """The hooks ``fit_gmcf`` takes for the levers ``cfg`` (a TrainConfig) switches on: the tie
    term's judge factory and the walk check of checkpoint selection (None when off)."""
    from gmcf.trainer.model import ReferenceClassifier

    def score(x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(
            clf_onnx.SerializeToString(),  # type: ignore[attr-defined]
            opts,
            providers=["CPUExecutionProvider"],
        )
        return np.asarray(sess.run(["score"], {"x": x.astype(np.float32)})[0])

    judge = None
    if getattr(cfg, "lambda_tie", 0.0) > 0:
        kind = getattr(cfg, "tie_judge", "posterior")
        if kind == "posterior":
            judge = posterior_judge
        elif kind == "surrogate":
            if isinstance(clf, ReferenceClassifier):
                net: nn.Module = clf
                judge_fn = module_judge(clf, clf.logits)
            else:
                net = distilled_surrogate(x_fit, f_fit, int(getattr(cfg, "seed", 0)))
                judge_fn = module_judge(net)
            judge = lambda model: judge_fn  # noqa: E731
            del net
        else:
            raise ValueError(f"tie_judge must be posterior or surrogate, got {kind!r}")
    walk = None
    if getattr(cfg, "select_by", "leakage") == "walk" and validation is not None:
        walk = walk_check(pre, validation[0], score)
    elif getattr(cfg, "select_by", "leakage") not in ("leakage", "walk"):
        raise ValueError(
            f"select_by must be leakage or walk, got {getattr(cfg, 'select_by', None)!r}"
        )
    return judge, walk
