"""Handwriting style of digit images, measured on the stem: slant and stroke thickness.

The paper's MNIST claim is that a counterfactual keeps the query's slant and thickness. Both are
measured here on the lower 60% of the ink (rows between the topmost and the bottommost row that
hold ink): that part is the single stroke of a 1 and the stem of a 7, so a 1 and its 7 are
measured on the same stroke and the bar of the 7 does not count. numpy only, on grey levels in
[0, 1] (a blurry decoded image and a crisp query are measured alike: no binarisation).

- **slant**: the angle of the stem from vertical, in degrees, from a weighted least-squares line
  through the ink centroid of each row (positive: the bottom leans left, "/").
- **thickness**: the ink per row along the stem (the summed grey level, i.e. the horizontal width
  of the stroke) times the cosine of the slant, i.e. the stroke's width across it, in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: A row holds ink when its grey levels sum to at least this (in pixels of full ink).
INK_ROW = 0.5
#: The stem starts this far down the inked rows.
STEM_FROM = 0.4


def stem_style(
    images: np.ndarray, shape: Sequence[int] = (28, 28)
) -> tuple[np.ndarray, np.ndarray]:
    """(slant in degrees, thickness in pixels) of each image in ``images`` [N, H*W] or
    [N, H, W]. NaN for an image with fewer than two inked stem rows."""
    h, w = shape
    img = np.asarray(images, dtype=np.float64).reshape(-1, h, w)
    mass = img.sum(axis=2)  # [N, H]: ink per row
    inked = mass >= INK_ROW
    rows = np.arange(h, dtype=np.float64)
    any_ink = inked.any(axis=1)
    top = np.where(any_ink, inked.argmax(axis=1), 0)
    bottom = np.where(any_ink, h - 1 - inked[:, ::-1].argmax(axis=1), -1)
    start = top + STEM_FROM * (bottom - top)
    stem = inked & (rows[None, :] >= start[:, None]) & (rows[None, :] <= bottom[:, None])
    wgt = np.where(stem, mass, 0.0)
    total = wgt.sum(axis=1)
    n_rows = stem.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (img * np.arange(w, dtype=np.float64)[None, None, :]).sum(axis=2) / np.where(
            mass > 0, mass, 1.0
        )
        r_mean = (wgt * rows).sum(axis=1) / total
        c_mean = (wgt * cx).sum(axis=1) / total
        dr = rows[None, :] - r_mean[:, None]
        slope = (wgt * dr * (cx - c_mean[:, None])).sum(axis=1) / (wgt * dr**2).sum(axis=1)
        # x grows to the right, rows grow downwards: a bottom that lies left of the top ("/")
        # has a negative slope dx/drow; report it as a positive angle.
        slant = np.degrees(np.arctan(-slope))
        thickness = total / n_rows * np.cos(np.arctan(slope))
    bad = n_rows < 2
    slant[bad] = np.nan
    thickness[bad] = np.nan
    return slant, thickness


def style_agreement(
    query: np.ndarray, other: np.ndarray, shape: Sequence[int] = (28, 28)
) -> dict[str, float]:
    """How well ``other`` (e.g. the counterfactuals) keeps the style of ``query``, row by row:
    Pearson correlation and mean absolute difference of slant and of thickness, over the rows
    where both are measurable (r is NaN when either side does not vary)."""
    qs, qt = stem_style(query, shape)
    os_, ot = stem_style(other, shape)
    out: dict[str, float] = {}
    for name, a, b in (("slant", qs, os_), ("thickness", qt, ot)):
        ok = np.isfinite(a) & np.isfinite(b)
        both = ok.sum() > 2 and np.std(a[ok]) > 0 and np.std(b[ok]) > 0
        out[f"{name}_r"] = float(np.corrcoef(a[ok], b[ok])[0, 1]) if both else float("nan")
        out[f"{name}_mad"] = float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else float("nan")
        out[f"{name}_rows"] = int(ok.sum())
    return out


__all__ = ["stem_style", "style_agreement"]
