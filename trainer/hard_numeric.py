"""The numeric part of hard decoding, in the exported graphs: the training band, the integer grid
in raw units under each feature's transform, and features determined by a category.

Model space holds ``u = (T(r) - T(lo)) / (T(hi) - T(lo))`` (``gmcf.runtime.transforms``). In the
graph a decoded ``u`` is

1. kept in the training band [p0.5, p99.5] (in model space: T is monotone), widened per query to
   include the query's own value;
2. kept in the constraints' bounds;
3. for an integer feature, taken to raw units, rounded, and taken back (``to_raw``/``from_raw``:
   the same arithmetic as the runtime's ``model_to_raw``/``raw_to_model``, in float32). A
   min-max integer feature rounds on its grid ``k / span`` directly;
4. after the categories are chosen, a determined feature is set from its category's value.

``to_raw`` is the inverse of the scaling as a torch function (any layout: features on the axis
the module was built for), for graphs that need raw values of a model-space row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gmcf.runtime import dependencies, transforms
from gmcf.runtime.schema import Preprocessor


class NumericHard(nn.Module):
    """Hard decoding of the numeric block. ``columns``: features on the first axis ([n, ...]),
    else on the last ([..., n])."""

    scale: torch.Tensor
    inv_scale: torch.Tensor
    t_lo: torch.Tensor
    t_span: torch.Tensor
    offset: torch.Tensor
    is_log: torch.Tensor
    is_int: torch.Tensor
    band_lo: torch.Tensor
    band_hi: torch.Tensor
    keep: torch.Tensor
    table: torch.Tensor

    def __init__(self, pre: Preprocessor, columns: bool = False) -> None:
        super().__init__()
        self.columns = columns
        feats = pre.numeric if pre.n_numeric == len(pre.numeric) else []
        n = pre.n_numeric
        lo, hi = pre.lo_hi()
        span = np.where(hi > lo, hi - lo, 1.0)
        is_int = pre.integer_mask()
        is_log = np.array([f.transform == "log" for f in feats] or [False] * n, dtype=bool)
        # Raw-unit rounding only where a log-scaled integer feature needs it; otherwise every
        # integer feature rounds on its grid k / span (its training minimum is an integer), and
        # a continuous one gets scale 2^24, which leaves a float32 value in [0, 1] as it is.
        self.raw_rounding = bool((is_int & is_log).any())
        scale = np.where(is_int, span, 2.0**24)
        self._buffer("scale", scale)
        self._buffer("inv_scale", 1.0 / scale)
        # The scaling's inverse for ``to_raw``/``from_raw`` (identity for an image's pixels).
        t = np.array(
            [transforms.t_range(f) for f in feats] or [(0.0, 1.0)] * n, dtype=np.float64
        ).reshape(-1, 2)
        self._buffer("t_lo", t[:, 0])
        self._buffer("t_span", t[:, 1])
        self._buffer(
            "offset", np.array([transforms.log_offset(f.lo or 0.0) for f in feats] or [0.0] * n)
        )
        self.register_buffer("is_log", self._shape(torch.tensor(is_log)))
        self.register_buffer("is_int", self._shape(torch.tensor(is_int)))
        band_lo, band_hi = pre.bands()
        self.banded = bool(((band_lo > 0) | (band_hi < 1)).any())
        self._buffer("band_lo", band_lo)
        self._buffer("band_hi", band_hi)
        keep, table = dependencies.lookup_matrix(pre)
        self.lookup = bool((keep == 0).any())
        # (numeric column, first and last column of its category block in the categorical part)
        self.deps = [(j, off - n, off - n + len(v)) for j, off, v in dependencies.determined(pre)]
        self._buffer("keep", keep)
        # [n, categorical width]: rows of the columns layout; transposed for the row layout
        self.register_buffer(
            "table", torch.tensor(table if columns else table.T.copy(), dtype=torch.float32)
        )

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, None, None] if self.columns else t

    def _buffer(self, name: str, values: np.ndarray) -> None:
        self.register_buffer(
            name, self._shape(torch.tensor(np.asarray(values), dtype=torch.float32))
        )

    def to_raw(self, u: torch.Tensor) -> torch.Tensor:
        """Model space -> raw units (float32), every feature by its transform."""
        t = self.t_lo + u * self.t_span
        # exp(|t|) - 1 and log(1 + |d|): ONNX has no expm1/log1p; for |t| >= 0.7 (|d| >= 1, where
        # integers are rounded) the float32 difference is below the rounding's reach
        log = self.offset + torch.sign(t) * (torch.exp(torch.abs(t)) - 1.0)
        return torch.where(self.is_log, log, t)

    def from_raw(self, r: torch.Tensor) -> torch.Tensor:
        """Raw units -> model space, the inverse of ``to_raw``."""
        d = r - self.offset
        t = torch.where(self.is_log, torch.sign(d) * torch.log(1.0 + torch.abs(d)), r)
        return (t - self.t_lo) / self.t_span

    def forward(
        self,
        cont: torch.Tensor,
        x: torch.Tensor | None = None,
        lower: torch.Tensor | None = None,
        upper: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``cont``: decoded numeric values in model space; ``x``: the query's (broadcastable),
        which widens the band; ``lower``/``upper``: the constraints' bounds."""
        if x is not None and self.banded:
            cont = torch.minimum(
                torch.maximum(cont, torch.minimum(x, self.band_lo)), torch.maximum(x, self.band_hi)
            )
        if lower is not None and upper is not None:
            cont = torch.minimum(torch.maximum(cont, lower), upper)
        if self.raw_rounding:
            u = self.from_raw(torch.round(self.to_raw(cont)))
            cont = torch.where(self.is_int, u, cont)
        else:
            cont = torch.round(cont * self.scale) * self.inv_scale
        if lower is not None and upper is not None:
            cont = torch.minimum(torch.maximum(cont, lower), upper)
        return cont

    def category_mask(
        self, lower: torch.Tensor, upper: torch.Tensor, width: int
    ) -> torch.Tensor | None:
        """1 for a category that a determined feature's bounds allow, else 0, over the
        categorical part of the row (``lower``/``upper``: the numeric block's bounds); None
        without determined features."""
        if not self.deps:
            return None
        mask = None
        for j, start, end in self.deps:
            if self.columns:
                values, lo, hi = (
                    self.table[j, start:end].reshape(-1, 1, 1),
                    lower[j : j + 1],
                    upper[j : j + 1],
                )
                ones, dim = torch.ones_like(upper[:1]), 0
            else:
                values, lo, hi = (
                    self.table[start:end, j],
                    lower[..., j : j + 1],
                    upper[..., j : j + 1],
                )
                ones, dim = torch.ones_like(upper[..., :1]), -1
            parts = [ones] * start + [
                ((values >= lo - 1e-6) & (values <= hi + 1e-6)).to(torch.float32)
            ]
            parts += [ones] * (width - end)
            part = torch.cat(parts, dim=dim)
            mask = part if mask is None else mask * part
        return mask

    def follow(self, cont: torch.Tensor, one_hots: torch.Tensor) -> torch.Tensor:
        """Determined features set from their categories' one-hots (same layout as ``cont``)."""
        if not self.lookup:
            return cont
        if self.columns:
            shape = cont.shape
            return (
                cont.reshape(shape[0], -1) * self.keep.reshape(-1, 1)
                + self.table @ one_hots.reshape(one_hots.shape[0], -1)
            ).reshape(shape)
        return cont * self.keep + one_hots @ self.table
