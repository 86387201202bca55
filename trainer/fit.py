"""Training: the reference classifier, and Algorithm 1's alternating updates."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gmcf.trainer.model import (
    GMCF,
    ReferenceClassifier,
    class_weights,
    loss_adv,
    loss_cls,
    loss_lkd,
    loss_rec,
    mlp,
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters. Defaults are the paper's Adult settings (section 4.2, Table 7)."""

    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    lambda_adv: float = 0.05
    lambda_lkd: float = 0.5
    latent_dim: int = 3
    latent_u_dim: int = 3
    encoder_hidden: tuple[int, ...] = (12, 24, 12, 6)
    decoder_hidden: tuple[int, ...] = (6, 12, 24)
    adversary_hidden: tuple[int, ...] = (16, 16)
    var_floor: float = 0.05
    adversarial_objective: str = "paper"
    """``paper``: E_u maximises the adversary's BCE (eq. 9). ``confusion``: E_u drives the
    adversary's output to 1/2, which cannot be met by anti-correlating z_u with the label."""
    adversary_lr: float = 1e-3
    adversary_steps: int = 1
    rec_reduction: str = "sum"
    """``sum``: L_rec sums the squared error over the input vector (tabular); ``mean``: averages
    it (images, where a sum over 784 pixels would drown the adversarial and likelihood terms);
    ``bce``: mean binary cross-entropy over the entries (images in [0, 1])."""
    lambda_mmd: float = 0.0
    """Weight of an MMD penalty between z_u of the two classes (0 = the paper's model)."""
    classifier_epochs: int = 40
    classifier_lr: float = 3e-3
    classifier_restarts: int = 3
    classifier_hidden: tuple[int, ...] = (10, 4, 2)
    probe_epochs: int = 20
    select_every: int = 5
    """Check z_u leakage on validation rows every this many epochs and keep the best checkpoint
    (0 = keep the last epoch, as the paper does)."""
    select_after: int = 10
    validation_size: float = 0.1
    """Share of the training rows held out of Algorithm 1 for model selection."""
    test_size: float = 0.2
    lambda_tie: float = 0.0
    """Weight of the term tying the decodings at each class mean to that class
    (``gmcf.trainer.levers.tie_loss``; 0 = the paper's model)."""
    tie_judge: str = "posterior"
    """Who reads the decodings for ``lambda_tie``: ``posterior`` (the mixture posterior of their
    re-encoding) or ``surrogate`` (a differentiable stand-in for f)."""
    anchors: int = 4096
    """Approved training rows (a seeded sample, model space) the bundle carries for the
    last-resort search (``gmcf.runtime.fallback``); 0 ships none, and no last resort."""
    select_by: str = "leakage"
    """Checkpoint selection: ``leakage`` (least z_u leakage among checkpoints whose GM posterior
    agrees with f) or ``walk`` (validity, then proximity, of the walk on validation rows f
    rejects, scored by f: ``gmcf.trainer.levers.walk_check``)."""
    screen: bool = True
    """Give a bundle whose classifier is the user's ONNX model a screen: a small MLP distilled
    from f that the runtime walks with, asking f only about the candidates it picks
    (``gmcf.trainer.screen``). The reference MLP is as cheap as a screen and never gets one."""
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class History:
    """Mean of each loss over the last (or the selected) epoch, and the model-selection checks."""

    losses: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, float]] = field(default_factory=list)
    selected_epoch: int | None = None


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    rates = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def train_classifier(
    x: np.ndarray, y: np.ndarray, cfg: TrainConfig, progress: Callable[[str], None] | None = None
) -> ReferenceClassifier:
    """The paper's reference MLP (Table 6), trained with class re-weighting on the ground truth.

    Its 2-unit ReLU bottleneck can die at initialisation and then predict one class for every
    row; we train ``classifier_restarts`` seeded initialisations and keep the one with the best
    balanced accuracy on the training rows.
    """
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    w_all = class_weights(yt)
    best: tuple[float, ReferenceClassifier] | None = None
    for attempt in range(cfg.classifier_restarts):
        seed_everything(cfg.seed + 7919 * attempt)
        clf = ReferenceClassifier(x.shape[1], cfg.classifier_hidden)
        opt = torch.optim.Adam(clf.parameters(), lr=cfg.classifier_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.classifier_epochs))
        gen = torch.Generator().manual_seed(cfg.seed + attempt)
        for epoch in range(cfg.classifier_epochs):
            total = 0.0
            for idx in _batches(len(xt), 256, gen):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    clf.logits(xt[idx]), yt[idx], weight=w_all[idx]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            if progress:
                progress(
                    f"classifier {attempt + 1}/{cfg.classifier_restarts} "
                    f"epoch {epoch + 1}/{cfg.classifier_epochs} loss {total / len(xt):.4f}"
                )
        clf.eval()
        with torch.no_grad():
            ba = _balanced_accuracy(y, (clf(xt) > 0.5).numpy().astype(np.int64))
        if best is None or ba > best[0]:
            best = (ba, clf)
    assert best is not None
    return best[1]


def alternating_step(
    model: GMCF,
    opt_adv: torch.optim.Optimizer,
    opt_gm: torch.optim.Optimizer,
    opt_ae: torch.optim.Optimizer,
    batch_a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    batch_b: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    judge: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One iteration of Algorithm 1 (lines 3-9). Each batch is (x, y_hat, class weights).
    With ``cfg.lambda_tie`` > 0 and a ``judge``, step (b) adds the tie term (trainer/levers.py)."""
    x, y, w = batch_a
    # line 4: the adversary learns to read y_hat from z_u (z_u frozen).
    with torch.no_grad():
        zu = model.encoder_u(x)
    for _ in range(cfg.adversary_steps):
        l_adv_a = loss_adv(model, zu, y, w)
        opt_adv.zero_grad()
        l_adv_a.backward()
        opt_adv.step()
    # lines 5-6: encoder, means and covariances on L_GM - lambda_adv L_adv.
    z = model.encoder(x)
    with torch.no_grad():
        l_adv_gm = loss_adv(model, model.encoder_u(x), y, w)
    l_cls = loss_cls(model, z, y, w)
    l_lkd = loss_lkd(model, z, y, w)
    l_gm = l_cls + cfg.lambda_lkd * l_lkd - cfg.lambda_adv * l_adv_gm
    opt_gm.zero_grad()
    l_gm.backward()
    opt_gm.step()
    # lines 7-9: on a fresh batch, encoder, encoder_u and decoder on eq. 9.
    x, y, w = batch_b
    z, zu = model.encoder(x), model.encoder_u(x)
    xr = model.decoder(torch.cat([z, zu], dim=1))
    l_rec = loss_rec(model, x, xr, w, cfg.rec_reduction)
    l_lkd_b = loss_lkd(model, z, y, w)
    l_adv_b = loss_adv(model, zu, y, w)
    if cfg.adversarial_objective == "confusion":
        # E_u is pushed to make the adversary unsure (A(z_u) -> 1/2) instead of wrong.
        l_conf = loss_adv(model, zu, torch.full_like(y, 0.5), w)
        total = l_rec + cfg.lambda_lkd * l_lkd_b + cfg.lambda_adv * l_conf
    else:
        total = l_rec + cfg.lambda_lkd * l_lkd_b - cfg.lambda_adv * l_adv_b
    if cfg.lambda_mmd > 0:
        total = total + cfg.lambda_mmd * mmd_between_classes(zu, y)
    if cfg.lambda_tie > 0 and judge is not None:
        from gmcf.trainer.levers import tie_loss

        total = total + cfg.lambda_tie * tie_loss(model, zu, judge, w)
    opt_ae.zero_grad()
    total.backward()
    opt_ae.step()
    return {
        "adv": float(l_adv_a.detach()),
        "cls": float(l_cls.detach()),
        "lkd": float(l_lkd_b.detach()),
        "rec": float(l_rec.detach()),
        "total": float(total.detach()),
    }


def mmd_between_classes(zu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy between z_u of the two classes (RBF kernels at
    several bandwidths). Zero when the class-conditional distributions of z_u agree."""
    a, b = zu[y > 0.5], zu[y <= 0.5]
    if len(a) < 2 or len(b) < 2:
        return zu.sum() * 0.0
    both = torch.cat([a, b])
    sq = (both**2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * both @ both.t()).clamp(min=0.0)
    scale = d2.detach().mean().clamp(min=1e-6)
    k = torch.exp(-d2 / (scale * 0.25)) + torch.exp(-d2 / scale) + torch.exp(-d2 / (scale * 4.0))
    na = len(a)
    return k[:na, :na].mean() + k[na:, na:].mean() - 2 * k[:na, na:].mean()


def make_optimizers(
    model: GMCF, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer]:
    opt_adv = torch.optim.Adam(model.adversary.parameters(), lr=cfg.adversary_lr)
    opt_gm = torch.optim.Adam([*model.encoder.parameters(), *model.gm_parameters()], lr=cfg.lr)
    opt_ae = torch.optim.Adam(
        [*model.encoder.parameters(), *model.encoder_u.parameters(), *model.decoder.parameters()],
        lr=cfg.lr,
    )
    return opt_adv, opt_gm, opt_ae


def checkpoint_score(
    model: GMCF,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    seed: int,
) -> dict[str, float]:
    """Model selection on validation rows: z_u leakage (a quick probe's balanced accuracy) and
    agreement of the GM posterior with f. Lower ``score`` is better."""
    with torch.no_grad():
        zu_fit = model.encoder_u(torch.from_numpy(x_fit)).numpy()
        xv = torch.from_numpy(x_val)
        zu_val = model.encoder_u(xv).numpy()
        agree = float((model.posterior_logits(model.encoder(xv)).argmax(1).numpy() == y_val).mean())
    state = torch.random.get_rng_state()
    leak = probe_leakage(zu_fit, y_fit, zu_val, y_val, seed, epochs=5)["balanced_accuracy"]
    torch.random.set_rng_state(state)
    return {"leakage": leak, "agreement": agree, "score": leak + 10 * max(0.0, 0.9 - agree)}


def fit_gmcf(
    x: np.ndarray,
    y_hat: np.ndarray,
    n_numeric: int,
    cat_sizes: list[int],
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    networks: Callable[[], tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]] | None = None,
    judge: Callable[[GMCF], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    walk: Callable[[GMCF], dict[str, float]] | None = None,
) -> tuple[GMCF, History]:
    """Algorithm 1 on (x, y_hat): the classifier's labels, not the ground truth.

    With ``validation`` rows (x, y_hat) and ``cfg.select_every`` > 0, the weights are checked
    every ``select_every`` epochs from ``select_after`` on, and the checkpoint whose z_u leaks
    least about y_hat (with the GM posterior agreeing with f on at least 90% of the rows) is kept:
    the adversarial game does not converge, and z_u's leakage swings from epoch to epoch.

    ``networks`` builds (encoder, encoder_u, decoder) after seeding, in place of the tabular
    MLPs (see ``GMCF``). ``judge(model)`` builds the judge of the tie term; ``walk(model)``
    gives the figures of ``select_by = "walk"`` (both in trainer/levers.py)."""
    seed_everything(cfg.seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y_hat.astype(np.float32))
    prior = float(yt.mean().clamp(1e-3, 1 - 1e-3))
    model = GMCF(
        x.shape[1],
        n_numeric,
        cat_sizes,
        cfg.latent_dim,
        cfg.latent_u_dim,
        cfg.encoder_hidden,
        cfg.decoder_hidden,
        cfg.adversary_hidden,
        cfg.var_floor,
        (1 - prior, prior),
        None if networks is None else networks(),
    )
    opts = make_optimizers(model, cfg)
    tie_judge = judge(model) if judge is not None and cfg.lambda_tie > 0 else None
    w_all = class_weights(yt)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    hist = History()
    best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
    fit_rows = np.random.default_rng(cfg.seed).permutation(len(x))
    for epoch in range(cfg.epochs):
        order_a = _batches(len(xt), cfg.batch_size, gen)
        order_b = _batches(len(xt), cfg.batch_size, gen)
        sums: dict[str, float] = {}
        for ia, ib in zip(order_a, order_b, strict=True):
            out = alternating_step(
                model,
                *opts,
                (xt[ia], yt[ia], w_all[ia]),
                (xt[ib], yt[ib], w_all[ib]),
                cfg,
                tie_judge,
            )
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
        hist.losses = {k: v / len(order_a) for k, v in sums.items()}
        done = epoch + 1
        if (
            validation is not None
            and cfg.select_every > 0
            and done >= cfg.select_after
            and (done - cfg.select_after) % cfg.select_every == 0
        ) or (validation is not None and done == cfg.epochs and cfg.select_every > 0):
            model.eval()
            sub = fit_rows[: min(len(fit_rows), 8000)]
            check = checkpoint_score(
                model, x[sub], y_hat[sub], validation[0], validation[1], cfg.seed
            )
            if walk is not None and cfg.select_by == "walk":
                check.update(walk(model))
                # the real objective: validity first, then proximity; the GM must still agree
                check["score"] = (
                    (1.0 - check["walk_validity"])
                    + 0.1 * check["walk_l2"]
                    + 10 * max(0.0, 0.9 - check["agreement"])
                )
            model.train()
            hist.checks.append({"epoch": done, **check})
            if best is None or check["score"] < best[0]:
                best = (check["score"], done, copy.deepcopy(model.state_dict()), dict(hist.losses))
        if on_epoch:
            on_epoch(epoch, hist.losses)
    if best is not None:
        model.load_state_dict(best[2])
        hist.selected_epoch = best[1]
        hist.losses = best[3]
    model.eval()
    return model, hist


def probe_leakage(
    zu_train: np.ndarray,
    y_train: np.ndarray,
    zu_test: np.ndarray,
    y_test: np.ndarray,
    seed: int,
    epochs: int,
) -> dict[str, float]:
    """Fit a fresh classifier on frozen z_u to predict y_hat; its held-out balanced accuracy
    measures how much of the label z_u still carries (0.5 = none)."""
    seed_everything(seed + 99)
    xt, yt = torch.from_numpy(zu_train), torch.from_numpy(y_train.astype(np.float32))
    probe = mlp([zu_train.shape[1], 32, 32, 1], act=torch.nn.ReLU)
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    w = class_weights(yt)
    gen = torch.Generator().manual_seed(seed + 99)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 256):
            idx = perm[i : i + 256]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                probe(xt[idx]).squeeze(-1), yt[idx], weight=w[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = (probe(torch.from_numpy(zu_test)).squeeze(-1) > 0).numpy().astype(np.int64)
    majority = float(max(y_test.mean(), 1 - y_test.mean()))
    return {
        "balanced_accuracy": _balanced_accuracy(y_test, pred),
        "accuracy": float((pred == y_test).mean()),
        "majority_rate": majority,
    }
