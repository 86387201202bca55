"""What the evaluation measures GMCF against, trained on the same 80% split: the judge
autoencoder (an in-distribution yardstick trained apart from the explainer), the image judge (a
CNN that says whether a counterfactual reads as the target digit) and GDL, gradient descent in
the latent space of a VAE (paper appendix .4, Algorithm 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gmcf.runtime.metrics import reconstruction_mse
from gmcf.runtime.schema import Preprocessor
from gmcf.trainer.export import HardDecode
from gmcf.trainer.fit import _batches, seed_everything
from gmcf.trainer.model import TabularDecoder, mlp


@dataclass(frozen=True)
class AEConfig:
    """A plain or variational autoencoder with the sizes of the paper's Adult explainer (Table 7:
    z and z_u of 3 dims each, the same MLP widths), used for every dataset, MNIST included."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    latent_dim: int = 6
    """The Adult explainer's z and z_u together."""
    encoder_hidden: tuple[int, ...] = (12, 24, 12, 6)
    decoder_hidden: tuple[int, ...] = (6, 12, 24)
    beta: float = 1.0
    """Weight of the KL term (VAE only)."""


class Autoencoder(nn.Module):
    """Encoder width-...-d and the explainer's decoder type; ``variational`` adds the VAE's
    log-variance head and sampling."""

    def __init__(
        self, width: int, n_numeric: int, cat_sizes: list[int], cfg: AEConfig, variational: bool
    ) -> None:
        super().__init__()
        self.body = mlp([width, *cfg.encoder_hidden], last_act=True)
        self.mean = nn.Linear(cfg.encoder_hidden[-1], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.encoder_hidden[-1], cfg.latent_dim) if variational else None
        self.decoder = TabularDecoder(cfg.latent_dim, cfg.decoder_hidden, n_numeric, cat_sizes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


def train_autoencoder(
    x: np.ndarray, pre: Preprocessor, cfg: AEConfig, seed: int, variational: bool = False
) -> Autoencoder:
    """Fit on rows ``x`` (model space): squared error summed over the vector, plus
    ``beta`` x KL(q(z|x) || N(0, I)) for a VAE."""
    seed_everything(seed)
    model = Autoencoder(x.shape[1], pre.n_numeric, pre.cat_sizes, cfg, variational)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        for idx in _batches(len(xt), cfg.batch_size, gen):
            xb = xt[idx]
            h = model.body(xb)
            mean = model.mean(h)
            if model.logvar is not None:
                logvar = model.logvar(h).clamp(-10, 10)
                z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
                kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1).mean()
            else:
                z, kl = mean, torch.zeros(())
            loss = ((model.decoder(z) - xb) ** 2).sum(-1).mean() + cfg.beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def autoencoder_error(model: Autoencoder, x: np.ndarray) -> np.ndarray:
    """Per-row reconstruction error (mean squared error over the vector's entries)."""
    with torch.no_grad():
        rec = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return reconstruction_mse(x, rec)


class ImageJudge(nn.Module):
    """A small CNN that reads the class of an image: an observer of the counterfactuals that is not
    f (an MLP, Table 4) and was trained on the ground truth, not on f's labels. Two 5x5
    convolutions with max pooling, then 64 hidden units."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        h, w = shape
        self.shape = tuple(shape)
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, h, w)),
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (h // 4) * (w // 4), 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(target class) for flat images ``x`` [N, H*W] in [0, 1]."""
        with torch.no_grad():
            logits = self(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1))
            )
        return torch.sigmoid(logits).numpy()


def train_image_judge(
    x: np.ndarray,
    y: np.ndarray,
    shape: Sequence[int],
    seed: int = 0,
    epochs: int = 4,
    shift: int = 2,
) -> ImageJudge:
    """Fit ``ImageJudge`` on flat images ``x`` in [0, 1] and their true labels ``y`` (0/1), each
    batch shifted by up to ``shift`` pixels so that the judge reads a digit wherever it sits."""
    seed_everything(seed)
    judge = ImageJudge(shape)
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    h, w = shape
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), h, w)
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in _batches(len(xt), 128, gen):
            dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
            xb = torch.roll(xt[idx], (dy, dx), (1, 2)).reshape(len(idx), h * w)
            loss = nn.functional.binary_cross_entropy_with_logits(judge(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    judge.eval()
    return judge


@dataclass(frozen=True)
class GDLConfig:
    """Algorithm 3. The descent drives f(decoder(z)) toward ``T + band * tol``, inside the band
    [T, T + tol) that a counterfactual must reach (the paper's line 3 aims at T itself: the soft
    decoding then settles on the boundary while its hard-decoded row, whose score jumps when a
    category flips, stays below it). Categorical heads are softened with temperature
    ``temperature`` for the gradient (appendix .6: 0.5)."""

    lr: float = 0.05
    max_steps: int = 300
    band: float = 0.5
    temperature: float = 0.5


@dataclass
class GDLResult:
    cf: np.ndarray  # [n, F] hard rows (zeros where none)
    found: np.ndarray  # bool [n]: T <= f(row) < T + tol was reached
    steps: np.ndarray  # gradient steps taken per row


def gdl_search(
    vae: Autoencoder,
    classifier: nn.Module,
    pre: Preprocessor,
    x: np.ndarray,
    threshold: float,
    tol: float,
    cfg: GDLConfig = GDLConfig(),
    judge: Callable[[np.ndarray], np.ndarray] | None = None,
) -> GDLResult:
    """Gradient descent on the latent codes of the rows ``x`` (vectorised; each row stops at its
    first hard-decoded row with T <= f < T + tol, and Adam's update is per entry, so a row's path
    does not depend on the others in the batch).

    ``classifier`` gives the gradients; ``judge`` (scores of model-space rows), when given, is the
    f that decides when a row has arrived (a tree ensemble f has no gradient: ``classifier`` is
    then a differentiable stand-in fitted to it)."""
    hard_decode = HardDecode(pre)
    n, width = x.shape
    with torch.no_grad():
        z0 = vae.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    cf = np.zeros((n, width), np.float32)
    found = np.zeros(n, bool)
    steps = np.zeros(n, np.int32)
    active = torch.ones(n, dtype=torch.bool)
    goal = threshold + cfg.band * tol
    dec = vae.decoder
    for step in range(cfg.max_steps + 1):
        cont, logits = dec.raw(dec.body(z))
        with torch.no_grad():
            hard = hard_decode(cont, logits)
            score = classifier(hard) if judge is None else torch.from_numpy(judge(hard.numpy()))
            hit = active & (score >= threshold) & (score < threshold + tol)
            if hit.any():
                rows = hit.numpy()
                cf[rows] = hard[hit].numpy()
                found[rows] = True
                active &= ~hit
        if not bool(active.any()) or step == cfg.max_steps:
            break
        steps[active.numpy()] += 1
        soft = torch.cat(
            [cont, *[torch.softmax(lg / cfg.temperature, dim=-1) for lg in logits]], dim=-1
        )
        loss = (((goal - classifier(soft)) ** 2) * active).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return GDLResult(cf, found, steps)
