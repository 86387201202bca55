"""Convolutional networks for image data (the paper's MNIST experiment, Tables 4 and 5).

The model's input is the image flattened to one vector of pixels in [0, 1] (see
``gmcf.runtime.schema.ImagePreprocessor``); the networks reshape it inside, so every exported
graph takes ``x`` [N, pixels] like a tabular bundle and the runtime needs no change.

Our reading of Table 5, made leaner so that a bundle stays a few MB: strided 4x4 convolutions
instead of stride-1 2x2 ones (the paper's flatten to 22,912 units alone holds 2.9M weights), no
batch normalisation, and a decoder that starts at 7x7 feature maps and doubles them twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from gmcf.runtime.schema import DataSchema
from gmcf.trainer.fit import TrainConfig


def mnist_config(base: TrainConfig) -> TrainConfig:
    """The paper's MNIST settings (section 4.2) over ``base``; docs/design.md ("Images") gives
    the measurements behind the choices that are ours."""
    return replace(
        base,
        epochs=20,
        batch_size=100,
        lambda_adv=0.05,
        lambda_lkd=0.1,
        # Mean squared error over pixels (the scale of the paper's Table 1), and E_u driving the
        # adversary to 1/2: the paper's objective diverged on images and emptied z_u.
        rec_reduction="mean",
        adversarial_objective="confusion",
        latent_dim=15,
        latent_u_dim=25,
        # Table 4: the classifier f is an MLP 784-128-64-32-1 (ReLU, sigmoid output).
        classifier_hidden=(128, 64, 32),
        classifier_epochs=5,
        classifier_restarts=1,
        probe_epochs=10,
        # The paper's last epoch: z_u leaks the label at every checkpoint on MNIST, so selecting
        # the least leaky one only picks the earliest, blurriest model.
        select_every=0,
    )


#: The search defaults an image bundle ships with, over ``RunSettings`` (T = 0.5, tol = 0.5):
#: at f's boundary an image is one f finds ambiguous, so an image bundle asks f to be sure
#: (docs/design.md, docs/mnist.md). ``--threshold 0.5 --tol 0.5`` at explain time gives the
#: paper's boundary counterfactuals.
IMAGE_SEARCH: dict[str, float] = {"threshold": 0.99, "tol": 0.01}


def dataset_config(schema: DataSchema, base: TrainConfig) -> TrainConfig:
    """The training settings of a dataset: ``base`` for a table, MNIST's over it for any image
    schema."""
    return mnist_config(base) if schema.has_image else base


def default_search(schema: DataSchema) -> dict[str, float]:
    """Search defaults that differ from ``RunSettings``: ``IMAGE_SEARCH`` for an image schema."""
    return dict(IMAGE_SEARCH) if schema.has_image else {}


def _conv_out(n: int, kernel: int, stride: int = 2, padding: int = 1) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class ConvEncoder(nn.Sequential):
    """x [N, H*W] -> code [N, out_dim]: three strided convolutions, then two linear layers."""

    def __init__(
        self,
        shape: Sequence[int],
        out_dim: int,
        channels: Sequence[int] = (16, 32, 32),
        hidden: int = 64,
    ) -> None:
        h, w = shape
        c1, c2, c3 = channels
        hh, ww = (_conv_out(_conv_out(_conv_out(n, 4), 4), 3) for n in (h, w))  # 28 -> 14 -> 7 -> 4
        super().__init__(
            nn.Unflatten(1, (1, h, w)),
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Flatten(),
            nn.Linear(c3 * hh * ww, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, out_dim),
        )


class ImageDecoder(nn.Module):
    """concat(z, z_u) -> pixels in [0, 1] [N, H*W].

    ``body`` is the fully connected part (its first layer must be ``nn.Linear``: the fused search
    graph interpolates in it, see ``trainer/export.py``); ``raw`` maps its output to
    (pixels, []), the same contract as ``TabularDecoder.raw`` with no categorical heads.
    """

    def __init__(
        self, d_in: int, shape: Sequence[int], hidden: int = 64, channels: Sequence[int] = (64, 32)
    ) -> None:
        super().__init__()
        h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"image sides must be multiples of 4, got {h}x{w}")
        c1, c2 = channels
        self.start = (c1, h // 4, w // 4)
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, c1 * (h // 4) * (w // 4)),
            nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, 1, 4, stride=2, padding=1),
            nn.Flatten(),
        )
        self.n_numeric = h * w
        self.cat_sizes: list[int] = []

    def raw(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = h.reshape(-1, *self.start)
        return torch.sigmoid(self.up(maps)), []

    def forward(self, zz: torch.Tensor) -> torch.Tensor:
        return self.raw(self.body(zz))[0]


def image_networks(
    shape: Sequence[int], latent_dim: int, latent_u_dim: int
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Encoder, label-irrelevant encoder and decoder for images of ``shape``."""
    return (
        ConvEncoder(shape, latent_dim),
        ConvEncoder(shape, latent_u_dim),
        ImageDecoder(latent_dim + latent_u_dim, shape),
    )
