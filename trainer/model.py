"""The networks and losses of the paper's section 3.3 for tabular data.

Our reading (see docs/design.md): diagonal class covariances, learnable, with a variance floor so
that the likelihood term cannot collapse; continuous features decoded through a sigmoid (they are
min-max scaled to [0, 1]); one softmax head per categorical feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def mlp(
    sizes: Sequence[int], act: type[nn.Module] = nn.LeakyReLU, last_act: bool = False
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers.append(act())
    return nn.Sequential(*layers)


class ReferenceClassifier(nn.Module):
    """The paper's Table 6 classifier: width-10-4-2-1 with ReLU, sigmoid output."""

    def __init__(self, width: int, hidden: Sequence[int] = (10, 4, 2)) -> None:
        super().__init__()
        self.net = mlp([width, *hidden, 1], act=nn.ReLU)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class TabularDecoder(nn.Module):
    """concat(z, z_u) -> (continuous values in [0,1], one logit block per categorical feature)."""

    def __init__(
        self, d_in: int, hidden: Sequence[int], n_numeric: int, cat_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.body = mlp([d_in, *hidden], last_act=True)
        self.n_numeric = n_numeric
        self.cat_sizes = list(cat_sizes)
        self.head = nn.Linear(hidden[-1], n_numeric + sum(cat_sizes))

    def raw(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """From the last hidden layer: continuous values and categorical logits."""
        out = self.head(h)
        cont = torch.sigmoid(out[..., : self.n_numeric])
        logits = (
            list(torch.split(out[..., self.n_numeric :], self.cat_sizes, dim=-1))
            if self.cat_sizes
            else []
        )
        return cont, logits

    def forward(self, zz: torch.Tensor) -> torch.Tensor:
        """Soft reconstruction in the model's input space (softmax probabilities for one-hots)."""
        cont, logits = self.raw(self.body(zz))
        return torch.cat([cont, *[torch.softmax(lg, dim=-1) for lg in logits]], dim=-1)


class GMCF(nn.Module):
    """Encoder, label-irrelevant encoder, decoder, adversary and the class-conditional Gaussians."""

    log_prior: torch.Tensor

    def __init__(
        self,
        width: int,
        n_numeric: int,
        cat_sizes: Sequence[int],
        latent_dim: int = 3,
        latent_u_dim: int = 3,
        encoder_hidden: Sequence[int] = (12, 24, 12, 6),
        decoder_hidden: Sequence[int] = (6, 12, 24),
        adversary_hidden: Sequence[int] = (16, 16),
        var_floor: float = 0.05,
        class_prior: Sequence[float] = (0.5, 0.5),
        networks: tuple[nn.Module, nn.Module, nn.Module] | None = None,
    ) -> None:
        """``networks``: (encoder, encoder_u, decoder) to use instead of the tabular MLPs, e.g.
        ``gmcf.trainer.images.image_networks``; the decoder keeps ``TabularDecoder``'s contract
        (``body`` starting with ``nn.Linear``, then ``raw``)."""
        super().__init__()
        if networks is None:
            networks = (
                mlp([width, *encoder_hidden, latent_dim]),
                mlp([width, *encoder_hidden, latent_u_dim]),
                TabularDecoder(latent_dim + latent_u_dim, decoder_hidden, n_numeric, cat_sizes),
            )
        self.encoder, self.encoder_u, self.decoder = networks
        self.adversary = mlp([latent_u_dim, *adversary_hidden, 1])
        # Two classes: means start apart on the first axis so the posterior is defined from step 0.
        mu = torch.zeros(2, latent_dim)
        mu[0, 0], mu[1, 0] = -1.0, 1.0
        self.mu = nn.Parameter(mu)
        self.var_raw = nn.Parameter(torch.zeros(2, latent_dim))
        self.var_floor = var_floor
        self.register_buffer(
            "log_prior", torch.log(torch.tensor(list(class_prior), dtype=torch.float32))
        )
        self.n_numeric = n_numeric
        self.cat_sizes = list(cat_sizes)
        self.latent_u_dim = latent_u_dim

    @property
    def var(self) -> torch.Tensor:
        return self.var_floor + F.softplus(self.var_raw)

    def gm_parameters(self) -> list[nn.Parameter]:
        return [self.mu, self.var_raw]

    def log_gauss(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_c, diag var_c) for both classes: [N, 2]."""
        var = self.var
        diff = z[:, None, :] - self.mu[None, :, :]
        return (
            -0.5 * ((diff**2) / var).sum(-1)
            - 0.5 * torch.log(var).sum(-1)
            - 0.5 * z.shape[1] * math.log(2 * math.pi)
        )

    def posterior_logits(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_c, Sigma_c) + log p(c); softmax of this is p(c | z) (eq. 3)."""
        return self.log_gauss(z) + self.log_prior


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-row weights that give both classes the same total weight (mean weight 1)."""
    n = y.numel()
    pos = y.sum().clamp(min=1.0)
    neg = (n - y.sum()).clamp(min=1.0)
    return torch.where(y > 0.5, n / (2 * pos), n / (2 * neg))


def weighted_mean(v: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return v.mean() if w is None else (v * w).sum() / w.sum()


def loss_cls(
    model: GMCF, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4: cross-entropy of the Gaussian-mixture posterior p(c|z) against y_hat."""
    logp = torch.log_softmax(model.posterior_logits(z), dim=1)
    nll = -logp.gather(1, y.long()[:, None]).squeeze(1)
    return weighted_mean(nll, w)


def loss_lkd(
    model: GMCF, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 5 (averaged over the batch): -log N(z_i; mu_{y_i}, Sigma_{y_i})."""
    lg = model.log_gauss(z).gather(1, y.long()[:, None]).squeeze(1)
    return weighted_mean(-lg, w)


def loss_adv(
    model: GMCF, zu: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 7: binary cross-entropy of the adversary A(z_u) against y_hat."""
    bce = F.binary_cross_entropy_with_logits(
        model.adversary(zu).squeeze(-1), y.float(), reduction="none"
    )
    return weighted_mean(bce, w)


def loss_rec(
    model: GMCF,
    x: torch.Tensor,
    xr: torch.Tensor,
    w: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Eq. 8: squared error per row, summed over the input vector (one-hots included), or with
    ``reduction="mean"`` averaged over it (images: the mean squared error over pixels)."""
    if reduction == "bce":
        err = F.binary_cross_entropy(xr.clamp(1e-6, 1 - 1e-6), x, reduction="none")
        return weighted_mean(err.mean(-1), w)
    err = (x - xr) ** 2
    return weighted_mean(err.mean(-1) if reduction == "mean" else err.sum(-1), w)
