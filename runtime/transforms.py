"""Per-feature scaling of numeric features, its exact inverse, and features determined by others.

A numeric feature's value ``r`` enters the model as ``u = (T(r) - T(lo)) / (T(hi) - T(lo))``,
with ``lo``/``hi`` the training minimum and maximum, so that the training range maps to [0, 1]:

- ``minmax``: ``T(r) = r`` (the paper's min-max scaling).
- ``log``: ``T(r) = sign(d) log(1 + |d|)`` with ``d = r - a`` and ``a = min(lo, 0)``: for a
  non-negative feature, ``log1p(r)``. Heavy-tailed amounts (incomes, balances, capital gains)
  get it by default: under min-max scaling over [$3,000, $7.1M] every ordinary income sits next
  to 0 and a decoder's small error is a change of thousands of dollars.

``inverse_raw`` is the exact inverse in float64 (``raw_to_model`` then ``model_to_raw`` gives
the value back to float64 rounding); the search graphs compute the same arithmetic in float32.

``band`` is the training distribution's central range [p0.5, p99.5] of a feature: a
counterfactual stays inside it unless the query itself lies outside.

A numeric feature may be **determined** by a categorical one (education-num by education): it
has exactly one value per category, so the decoder produces the category and the numeric value
follows by a lookup table. Detected at training where the data holds a 1:1 map, or declared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gmcf.runtime.errors import InputError, SchemaError

if TYPE_CHECKING:
    from gmcf.runtime.schema import Feature

TRANSFORMS = ("minmax", "log")
#: Declared value meaning "choose from the training data".
AUTO = "auto"
#: Sample skewness above which ``auto`` picks ``log`` for a feature with more than two values.
HEAVY_TAIL_SKEW = 2.0
#: The training distribution's central range a counterfactual keeps to (quantiles).
BAND = (0.005, 0.995)


def check_transform(name: str, transform: str) -> str:
    if transform not in (*TRANSFORMS, AUTO):
        raise SchemaError(
            f"feature {name!r}: transform must be one of {', '.join((*TRANSFORMS, AUTO))}, got "
            f"{transform!r}"
        )
    return transform


def skewness(v: np.ndarray) -> float:
    """Sample skewness (0 for a constant feature)."""
    sd = float(v.std())
    return 0.0 if sd == 0.0 else float(((v - v.mean()) ** 3).mean() / sd**3)


def choose_transform(v: np.ndarray) -> str:
    """``log`` for a right-skewed feature (skewness above ``HEAVY_TAIL_SKEW``) with more than
    two distinct values, else ``minmax``."""
    if np.unique(v[:200_000]).size <= 2:
        return "minmax"
    return "log" if skewness(v) > HEAVY_TAIL_SKEW else "minmax"


def log_offset(lo: float) -> float:
    """``a`` of the log transform: 0 for a non-negative feature, else its minimum."""
    return min(float(lo), 0.0)


def _t(transform: str, r: np.ndarray | float, a: float) -> np.ndarray:
    r = np.asarray(r, np.float64)
    if transform == "log":
        d = r - a
        return np.asarray(np.sign(d) * np.log1p(np.abs(d)))
    return r


def _t_inv(transform: str, t: np.ndarray, a: float) -> np.ndarray:
    t = np.asarray(t, np.float64)
    if transform == "log":
        return np.asarray(a + np.sign(t) * np.expm1(np.abs(t)))
    return t


def t_range(f: Feature) -> tuple[float, float]:
    """(T(lo), T(hi) - T(lo)) of a fitted feature; the span is 1 for a constant feature."""
    a = log_offset(f.lo or 0.0)
    t_lo = float(_t(f.transform, float(f.lo or 0.0), a))
    t_hi = float(_t(f.transform, float(f.hi or 0.0), a))
    return t_lo, (t_hi - t_lo if t_hi > t_lo else 1.0)


def raw_to_model(f: Feature, raw: np.ndarray) -> np.ndarray:
    """Raw values (float64) -> model space of feature ``f``."""
    t_lo, t_span = t_range(f)
    return (_t(f.transform, np.asarray(raw, np.float64), log_offset(f.lo or 0.0)) - t_lo) / t_span


def model_to_raw(f: Feature, u: np.ndarray) -> np.ndarray:
    """Model space -> raw values (float64), the exact inverse of ``raw_to_model``."""
    t_lo, t_span = t_range(f)
    return _t_inv(f.transform, t_lo + np.asarray(u, np.float64) * t_span, log_offset(f.lo or 0.0))


def band_of(f: Feature) -> tuple[float, float]:
    """The feature's band [p0.5, p99.5] in model space ([0, 1] when not fitted)."""
    if f.band_lo is None or f.band_hi is None:
        return 0.0, 1.0
    lo, hi = raw_to_model(f, np.array([f.band_lo, f.band_hi]))
    return float(lo), float(hi)


def fit_band(v: np.ndarray) -> tuple[float, float]:
    """[p0.5, p99.5] of training values (values that occur in the data)."""
    lo, hi = np.quantile(v, BAND, method="inverted_cdf")
    return float(lo), float(hi)


# -- determined features -----------------------------------------------------------------------
def exact_lookup(cats: np.ndarray, values: np.ndarray, n_cats: int) -> np.ndarray | None:
    """The value of each category if the numeric ``values`` hold exactly one value per category
    (``cats`` are category indices 0..n_cats-1, every category present) and distinct categories
    have distinct values; else None."""
    lut = np.full(n_cats, np.nan)
    order = np.argsort(cats, kind="stable")
    c, v = cats[order], values[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    if starts.size != n_cats:
        return None
    lo = np.minimum.reduceat(v, starts)
    hi = np.maximum.reduceat(v, starts)
    if not np.array_equal(lo, hi) or np.unique(lo).size != n_cats:
        return None
    lut[c[starts]] = lo
    return lut


def modal_lookup(
    cats: np.ndarray, values: np.ndarray, n_cats: int, name: str, by: str
) -> np.ndarray:
    """The most frequent value per category (a declared dependency that the data does not hold
    exactly); a category with no rows is an error."""
    lut = np.full(n_cats, np.nan)
    for k in range(n_cats):
        vk = values[cats == k]
        if vk.size == 0:
            raise InputError(
                f"feature {name!r} is declared determined by {by!r}, but a category has no rows"
            )
        vals, counts = np.unique(vk, return_counts=True)
        lut[k] = vals[np.argmax(counts)]
    return lut


def check_determined(declared: Mapping[str, str], features: Sequence[Feature]) -> None:
    """A declared dependency names a numeric feature and a categorical one of the schema."""
    kinds = {f.name: f for f in features}
    for num, cat in declared.items():
        if num not in kinds or cat not in kinds:
            missing = num if num not in kinds else cat
            raise SchemaError(f"schema: 'determined' names unknown feature {missing!r}")
        if not kinds[num].is_numeric or kinds[num].kind == "image":
            raise SchemaError(
                f"schema: determined feature {num!r} must be numeric (it follows a category)"
            )
        if not kinds[cat].is_categorical:
            raise SchemaError(
                f"schema: {num!r} can only be determined by a categorical feature, not {cat!r}"
            )
