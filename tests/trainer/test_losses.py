"""The losses of trainer/model.py (paper eq. 4, 5, 7, 8) against values computed by hand.

Every expected value is computed here with plain math/numpy from parameters set by hand; the
model's own helpers (log_gauss, posterior_logits) are not used to build the expectation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gmcf.trainer.model import (  # noqa: E402
    GMCF,
    class_weights,
    loss_adv,
    loss_cls,
    loss_lkd,
    loss_rec,
)

VAR_FLOOR = 0.05
MU = [[0.0, 1.0], [2.0, -1.0]]
VAR_RAW = [[0.0, 1.0], [-1.0, 0.5]]
PRIOR = [0.7, 0.3]
Z = [[0.5, 0.2], [1.5, -0.5], [-1.0, 2.0], [2.2, -0.9]]
Y = [0, 1, 1, 0]
W = [0.5, 2.0, 1.0, 3.0]


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def variances() -> list[list[float]]:
    return [[VAR_FLOOR + softplus(v) for v in row] for row in VAR_RAW]


def log_normal_diag(z: list[float], mu: list[float], var: list[float]) -> float:
    """log N(z; mu, diag(var)), written out."""
    return sum(
        -0.5 * math.log(2 * math.pi * v) - (zj - mj) ** 2 / (2 * v)
        for zj, mj, v in zip(z, mu, var, strict=True)
    )


def wmean(values: list[float], weights: list[float] | None) -> float:
    if weights is None:
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


@pytest.fixture
def model() -> GMCF:
    torch.manual_seed(0)
    m = GMCF(
        width=5,
        n_numeric=2,
        cat_sizes=[3],
        latent_dim=2,
        latent_u_dim=2,
        encoder_hidden=(4,),
        decoder_hidden=(4,),
        adversary_hidden=(3,),
        var_floor=VAR_FLOOR,
        class_prior=PRIOR,
    )
    with torch.no_grad():
        m.mu.copy_(torch.tensor(MU))
        m.var_raw.copy_(torch.tensor(VAR_RAW))
    return m


def tz() -> torch.Tensor:
    return torch.tensor(Z, dtype=torch.float32)


def ty() -> torch.Tensor:
    return torch.tensor(Y, dtype=torch.float32)


def tw() -> torch.Tensor:
    return torch.tensor(W, dtype=torch.float32)


def test_variance_is_floor_plus_softplus(model: GMCF) -> None:
    np.testing.assert_allclose(model.var.detach().numpy(), variances(), rtol=1e-6)
    assert float(model.var.detach().min()) > VAR_FLOOR
    # The floor holds however negative the raw parameter gets.
    with torch.no_grad():
        model.var_raw.fill_(-50.0)
    np.testing.assert_allclose(model.var.detach().numpy(), VAR_FLOOR, rtol=1e-6)


def test_prior_is_the_given_class_prior(model: GMCF) -> None:
    np.testing.assert_allclose(model.log_prior.numpy(), np.log(PRIOR), rtol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_cls_is_the_posterior_cross_entropy(model: GMCF, weighted: bool) -> None:
    var = variances()
    nll = []
    for z, y in zip(Z, Y, strict=True):
        joint = [log_normal_diag(z, MU[c], var[c]) + math.log(PRIOR[c]) for c in (0, 1)]
        log_evidence = math.log(math.exp(joint[0]) + math.exp(joint[1]))
        nll.append(-(joint[y] - log_evidence))
    want = wmean(nll, W if weighted else None)
    got = loss_cls(model, tz(), ty(), tw() if weighted else None)
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)


def test_loss_cls_posterior_sums_to_one_and_follows_bayes(model: GMCF) -> None:
    var = variances()
    post = torch.softmax(model.posterior_logits(tz()), dim=1).detach().numpy()
    for i, z in enumerate(Z):
        num = [math.exp(log_normal_diag(z, MU[c], var[c])) * PRIOR[c] for c in (0, 1)]
        np.testing.assert_allclose(post[i], np.array(num) / sum(num), rtol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_lkd_is_the_own_class_negative_log_likelihood(model: GMCF, weighted: bool) -> None:
    var = variances()
    nll = [-log_normal_diag(z, MU[y], var[y]) for z, y in zip(Z, Y, strict=True)]
    want = wmean(nll, W if weighted else None)
    got = loss_lkd(model, tz(), ty(), tw() if weighted else None)
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)


def test_loss_lkd_is_minimal_at_the_class_mean(model: GMCF) -> None:
    at_mean = torch.tensor([MU[1]])
    off_mean = torch.tensor([[MU[1][0] + 0.3, MU[1][1]]])
    y = torch.tensor([1.0])
    assert float(loss_lkd(model, at_mean, y).detach()) < float(
        loss_lkd(model, off_mean, y).detach()
    )
    var = variances()[1]
    assert float(loss_lkd(model, at_mean, y).detach()) == pytest.approx(
        0.5 * sum(math.log(2 * math.pi * v) for v in var), rel=1e-6
    )


ADV_W1 = [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]]  # Linear(2, 3).weight: [out, in]
ADV_B1 = [0.1, -0.2, 0.3]
ADV_W2 = [[1.0, -2.0, 0.5]]  # Linear(3, 1)
ADV_B2 = [-0.4]
ZU = [[0.2, -0.3], [1.0, 0.5], [-1.2, 0.8], [0.0, 0.0]]


def set_adversary(model: GMCF) -> None:
    lin1, lin2 = model.adversary[0], model.adversary[2]
    assert isinstance(lin1, torch.nn.Linear) and isinstance(lin2, torch.nn.Linear)
    assert isinstance(model.adversary[1], torch.nn.LeakyReLU)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor(ADV_W1))
        lin1.bias.copy_(torch.tensor(ADV_B1))
        lin2.weight.copy_(torch.tensor(ADV_W2))
        lin2.bias.copy_(torch.tensor(ADV_B2))


def adversary_prob(zu: list[float]) -> float:
    hidden = []
    for row, b in zip(ADV_W1, ADV_B1, strict=True):
        h = sum(w * v for w, v in zip(row, zu, strict=True)) + b
        hidden.append(h if h > 0 else 0.01 * h)  # LeakyReLU, default slope 0.01
    logit = sum(w * h for w, h in zip(ADV_W2[0], hidden, strict=True)) + ADV_B2[0]
    return 1.0 / (1.0 + math.exp(-logit))


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_adv_is_the_bce_of_the_adversary(model: GMCF, weighted: bool) -> None:
    set_adversary(model)
    bce = []
    for zu, y in zip(ZU, Y, strict=True):
        p = adversary_prob(zu)
        bce.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))  # eq. 7
    want = wmean(bce, W if weighted else None)
    got = loss_adv(model, torch.tensor(ZU), ty(), tw() if weighted else None)
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)


def test_loss_adv_of_an_undecided_adversary_is_log_2(model: GMCF) -> None:
    with torch.no_grad():
        for p in model.adversary.parameters():
            p.zero_()
    assert float(loss_adv(model, torch.tensor(ZU), ty()).detach()) == pytest.approx(
        math.log(2), rel=1e-6
    )


X = [
    [0.1, 0.9, 1.0, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0, 1.0],
    [1.0, 0.0, 0.0, 1.0, 0.0],
    [0.3, 0.3, 0.0, 1.0, 0.0],
]
XR = [
    [0.2, 0.7, 0.8, 0.1, 0.1],
    [0.5, 0.5, 0.0, 0.0, 1.0],
    [0.6, 0.2, 0.3, 0.3, 0.4],
    [0.0, 1.0, 0.5, 0.5, 0.0],
]


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_rec_is_the_squared_error_summed_over_features(model: GMCF, weighted: bool) -> None:
    per_row = [
        sum((a - b) ** 2 for a, b in zip(x, xr, strict=True)) for x, xr in zip(X, XR, strict=True)
    ]
    assert per_row[1] == 0.0
    want = wmean(per_row, W if weighted else None)
    got = loss_rec(model, torch.tensor(X), torch.tensor(XR), tw() if weighted else None)
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)


def test_class_weights_by_hand() -> None:
    y = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float32)
    w = class_weights(y).numpy()
    # n = 8, 2 positives, 6 negatives: n / (2 * 2) = 2 and n / (2 * 6) = 2/3.
    np.testing.assert_allclose(w, [2, 2 / 3, 2 / 3, 2 / 3, 2, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)


@pytest.mark.parametrize("n_pos", [1, 7, 50, 99])
def test_class_weights_give_both_classes_equal_total_weight(n_pos: int) -> None:
    n = 100
    y = torch.zeros(n)
    y[torch.randperm(n, generator=torch.Generator().manual_seed(n_pos))[:n_pos]] = 1.0
    w = class_weights(y)
    total_pos, total_neg = float(w[y == 1].sum()), float(w[y == 0].sum())
    assert total_pos == pytest.approx(total_neg, rel=1e-5)
    assert total_pos + total_neg == pytest.approx(n, rel=1e-5)  # mean weight 1
    # Every row of a class gets the same weight.
    assert torch.unique(w[y == 1]).numel() == 1 and torch.unique(w[y == 0]).numel() == 1


def test_class_weights_of_a_single_class_batch_are_finite() -> None:
    for y in (torch.zeros(6), torch.ones(6)):
        w = class_weights(y)
        assert torch.isfinite(w).all()
        assert float(w.sum()) == pytest.approx(3.0)


def test_balanced_weights_make_a_weighted_loss_class_balanced(model: GMCF) -> None:
    """With class weights, a batch of 1 positive and 3 negatives counts each class half."""
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    per_row = [
        sum((a - b) ** 2 for a, b in zip(x, xr, strict=True)) for x, xr in zip(X, XR, strict=True)
    ]
    want = 0.5 * per_row[0] + 0.5 * (per_row[1] + per_row[2] + per_row[3]) / 3
    got = loss_rec(model, torch.tensor(X), torch.tensor(XR), class_weights(y))
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)
