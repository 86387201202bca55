"""Actionability constraints on the returned counterfactual.

Per feature: immutable (keeps the query's value), a direction (may only increase or only
decrease), an allowed range in raw units, and for a categorical feature an allowed set of
values. They become per-row bounds ``lower``/``upper`` on the model-space row, which the search
graph applies to every candidate before f scores it: every returned counterfactual satisfies
them by construction.

A constraints file (TOML or JSON) maps feature names to settings::

    [age]
    direction = "increase"
    [education]
    immutable = true
    [hours - per - week]
    range = [20, 60]
    [purpose]
    allowed = ["credit_card", "debt_consolidation"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gmcf.runtime import dependencies, transforms
from gmcf.runtime.errors import ConstraintError
from gmcf.runtime.schema import IMAGE, Feature, Preprocessor

DIRECTIONS = ("increase", "decrease")


@dataclass(frozen=True)
class Constraint:
    feature: str
    immutable: bool = False
    direction: str | None = None
    lo: float | None = None
    hi: float | None = None
    allowed: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.immutable:
            out["immutable"] = True
        if self.direction:
            out["direction"] = self.direction
        if self.lo is not None or self.hi is not None:
            out["range"] = [self.lo, self.hi]
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        return out


@dataclass(frozen=True)
class Constraints:
    """A set of per-feature constraints; empty means the paper's unconstrained search."""

    items: dict[str, Constraint] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.items)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraints:
        if not isinstance(data, Mapping):
            raise ConstraintError(
                "constraints: expected a table of features and their settings, got "
                f"{type(data).__name__}"
            )
        items: dict[str, Constraint] = {}
        for name, spec in data.items():
            if not isinstance(spec, Mapping):
                raise ConstraintError(
                    f"constraint for {name!r}: expected a table of settings, got {spec!r}"
                )
            unknown = set(spec) - {"immutable", "direction", "range", "allowed"}
            if unknown:
                raise ConstraintError(
                    f"constraint for {name!r}: unknown setting(s) {sorted(unknown)}; "
                    "use immutable, direction, range, allowed"
                )
            if not isinstance(spec.get("immutable", False), bool):
                raise ConstraintError(f"constraint for {name!r}: immutable must be true or false")
            if "allowed" in spec and not isinstance(spec["allowed"], list | tuple):
                raise ConstraintError(
                    f"constraint for {name!r}: allowed must be a list of categories"
                )
            direction = spec.get("direction")
            if direction is not None and direction not in DIRECTIONS:
                raise ConstraintError(
                    f"constraint for {name!r}: direction must be 'increase' or 'decrease', got "
                    f"{direction!r}"
                )
            lo = hi = None
            if "range" in spec:
                rng = spec["range"]
                if not isinstance(rng, list | tuple) or len(rng) != 2:
                    raise ConstraintError(
                        f"constraint for {name!r}: range must be [lo, hi], got {rng!r}"
                    )
                try:
                    lo, hi = (None if v is None else float(v) for v in rng)
                except (TypeError, ValueError) as exc:
                    raise ConstraintError(
                        f"constraint for {name!r}: range ends must be numbers, got {rng!r}"
                    ) from exc
            allowed = spec.get("allowed")
            items[str(name)] = Constraint(
                str(name),
                bool(spec.get("immutable", False)),
                direction,
                lo,
                hi,
                None if allowed is None else tuple(str(a) for a in allowed),
            )
        return cls(items)

    @classmethod
    def from_file(cls, path: Path) -> Constraints:
        if not path.exists():
            raise ConstraintError(f"constraints file {path} does not exist")
        try:
            if path.suffix == ".toml":
                from gmcf.runtime import toml

                data = toml.loads(path.read_text())
            else:
                data = json.loads(path.read_text())
        except Exception as exc:
            raise ConstraintError(f"constraints file {path}: cannot parse: {exc}") from exc
        if not isinstance(data, dict):
            raise ConstraintError(
                f"constraints file {path}: expected a table of features and their settings, got "
                f"{type(data).__name__}"
            )
        return cls.from_dict(data)

    @classmethod
    def from_options(
        cls,
        immutable: Iterable[str] = (),
        increase_only: Iterable[str] = (),
        decrease_only: Iterable[str] = (),
        ranges: Iterable[str] = (),
        allowed: Iterable[str] = (),
    ) -> Constraints:
        """From CLI flags: ``--range feature=lo:hi`` (either end may be empty),
        ``--allow feature=a,b,c``."""
        out = cls()
        for name in immutable:
            out = out.merge({name: {"immutable": True}})
        for name in increase_only:
            out = out.merge({name: {"direction": "increase"}})
        for name in decrease_only:
            out = out.merge({name: {"direction": "decrease"}})
        for text in ranges:
            name, sep, rest = text.partition("=")
            lo_s, sep2, hi_s = rest.partition(":")
            if not sep or not sep2:
                raise ConstraintError(f"--range {text!r}: expected feature=lo:hi")
            try:
                lo = float(lo_s) if lo_s.strip() else None
                hi = float(hi_s) if hi_s.strip() else None
            except ValueError as exc:
                raise ConstraintError(f"--range {text!r}: lo and hi must be numbers") from exc
            out = out.merge({name: {"range": [lo, hi]}})
        for text in allowed:
            name, sep, rest = text.partition("=")
            if not sep or not rest:
                raise ConstraintError(f"--allow {text!r}: expected feature=value,value,...")
            out = out.merge({name: {"allowed": [v.strip() for v in rest.split(",")]}})
        return out

    def merge(self, other: Constraints | Mapping[str, Any]) -> Constraints:
        """Settings of ``other`` override this set's, feature by feature and setting by setting."""
        extra = other if isinstance(other, Constraints) else Constraints.from_dict(other)
        items = dict(self.items)
        for name, c in extra.items.items():
            base = items.get(name, Constraint(name))
            items[name] = replace(
                base,
                immutable=base.immutable or c.immutable,
                direction=c.direction or base.direction,
                lo=c.lo if c.lo is not None else base.lo,
                hi=c.hi if c.hi is not None else base.hi,
                allowed=c.allowed if c.allowed is not None else base.allowed,
            )
        return Constraints(items)

    def to_dict(self) -> dict[str, Any]:
        return {name: c.to_dict() for name, c in self.items.items()}

    # -- checks against a bundle -----------------------------------------------------------------
    def validate(self, pre: Preprocessor) -> None:
        """Raise ConstraintError on the first constraint that does not fit the features."""
        feats = {f.name: f for f in pre.features}
        if self.items and any(f.kind == IMAGE for f in pre.features):
            raise ConstraintError("constraints are not supported for image bundles")
        for name, c in self.items.items():
            f = feats.get(name)
            if f is None:
                raise ConstraintError(
                    f"constraint names unknown feature {name!r}; features: {', '.join(feats)}"
                )
            if f.is_numeric:
                if c.allowed is not None:
                    raise ConstraintError(
                        f"feature {name!r} is numeric: use a range, not an allowed set"
                    )
                lo_t, hi_t = float(f.lo or 0.0), float(f.hi or 0.0)
                lo = lo_t if c.lo is None else c.lo
                hi = hi_t if c.hi is None else c.hi
                if lo > hi:
                    raise ConstraintError(f"range for {name!r}: lo {lo:g} > hi {hi:g}")
                if lo < lo_t or hi > hi_t:
                    raise ConstraintError(
                        f"range for {name!r}: [{lo:g}, {hi:g}] lies outside the training range "
                        f"[{lo_t:g}, {hi_t:g}]"
                    )
                if f.kind == "integer" and np.ceil(lo) > np.floor(hi):
                    raise ConstraintError(
                        f"range for {name!r}: [{lo:g}, {hi:g}] holds no integer value"
                    )
            else:
                if c.direction is not None:
                    raise ConstraintError(f"feature {name!r} is categorical: it has no direction")
                if c.lo is not None or c.hi is not None:
                    raise ConstraintError(f"feature {name!r} is categorical: it has no range")
                if c.allowed is not None:
                    unknown = sorted(set(c.allowed) - set(f.categories))
                    if unknown:
                        raise ConstraintError(
                            f"allowed values for {name!r} include unknown categories "
                            f"{unknown[:5]}; known: {', '.join(f.categories[:10])}"
                            f"{' ...' if len(f.categories) > 10 else ''}"
                        )
                    if not c.allowed:
                        raise ConstraintError(f"allowed set for {name!r} is empty")

    # -- bounds ----------------------------------------------------------------------------------
    def bounds(self, pre: Preprocessor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row bounds [n, F] on the model-space row for queries ``x`` [n, F]."""
        n = len(x)
        lower = np.zeros((n, pre.width), np.float32)
        upper = np.ones((n, pre.width), np.float32)
        for j, f in enumerate(pre.numeric):
            c = self.items.get(f.name)
            if c is None:
                continue
            lo, hi = _raw_range(f, c)
            if c.lo is not None:
                lower[:, j] = transforms.raw_to_model(f, np.float64(lo))
            if c.hi is not None:
                upper[:, j] = transforms.raw_to_model(f, np.float64(hi))
            if c.immutable:
                lower[:, j] = upper[:, j] = x[:, j]
            elif c.direction == "increase":
                lower[:, j] = np.maximum(lower[:, j], x[:, j])
                upper[:, j] = np.maximum(upper[:, j], x[:, j])
            elif c.direction == "decrease":
                upper[:, j] = np.minimum(upper[:, j], x[:, j])
                lower[:, j] = np.minimum(lower[:, j], x[:, j])
        offset = pre.n_numeric
        for f in pre.categorical:
            k = len(f.categories)
            c = self.items.get(f.name)
            if c is not None:
                blk = slice(offset, offset + k)
                if c.immutable:
                    upper[:, blk] = x[:, blk]
                elif c.allowed is not None:
                    mask = np.array([cat in c.allowed for cat in f.categories], np.float32)
                    upper[:, blk] = mask
            offset += k
        # A determined feature follows its category: only categories whose value meets the
        # feature's bounds may be chosen.
        for j, off, values in dependencies.determined(pre):
            blk = slice(off, off + values.size)
            meets = (values[None, :] >= lower[:, j : j + 1] - 1e-6) & (
                values[None, :] <= upper[:, j : j + 1] + 1e-6
            )
            upper[:, blk] *= meets
        return lower, upper

    def unmeetable(self, pre: Preprocessor, x: np.ndarray) -> np.ndarray:
        """Per query row (object array): why no row can satisfy the constraints, else None.

        ``bounds`` keeps lower <= upper for the search graph; a query whose constraints
        contradict each other (age may only increase from 60 but must lie in [20, 50]) gets
        bounds that break one of them, so its search result must not be returned."""
        reason = np.full(len(x), None, dtype=object)
        lo_all, hi_all = pre.lo_hi()
        span = np.where(hi_all > lo_all, hi_all - lo_all, 1.0)
        raw_all = pre.raw_values(x)
        for j, f in enumerate(pre.numeric):
            c = self.items.get(f.name)
            if c is None or (c.lo is None and c.hi is None):
                continue
            raw = raw_all[:, j]
            if f.kind == "integer":
                raw = np.rint(raw)
            lo, hi = _raw_range(f, c)
            lo, hi = (-np.inf if c.lo is None else lo), (np.inf if c.hi is None else hi)
            least = (
                np.maximum(lo, raw)
                if c.immutable or c.direction == "increase"
                else np.full_like(raw, lo)
            )
            most = (
                np.minimum(hi, raw)
                if c.immutable or c.direction == "decrease"
                else np.full_like(raw, hi)
            )
            bad = (least > most + 1e-6 * span[j]) & (reason == None)  # noqa: E711
            rule = "immutable" if c.immutable else f"{c.direction} only"
            for i in np.nonzero(bad)[0]:
                reason[i] = (
                    f"constraints on {f.name!r} cannot be met: {rule}, range [{lo:g}, {hi:g}], "
                    f"query value {raw[i]:g}"
                )
        offset = pre.n_numeric
        for f in pre.categorical:
            k = len(f.categories)
            c = self.items.get(f.name)
            if c is not None and c.immutable and c.allowed is not None:
                mask = np.array([cat in c.allowed for cat in f.categories])
                idx = np.argmax(x[:, offset : offset + k], axis=1)
                bad = ~mask[idx] & (reason == None)  # noqa: E711
                for i in np.nonzero(bad)[0]:
                    reason[i] = (
                        f"constraints on {f.name!r} cannot be met: immutable, and the query's "
                        f"value {f.categories[idx[i]]!r} is not allowed"
                    )
            offset += k
        if any(f.determined_by is not None for f in pre.numeric):
            _, upper = self.bounds(pre, x)
            for j, off, values in dependencies.determined(pre):
                none = ~(upper[:, off : off + values.size] > 0.5).any(axis=1) & (reason == None)  # noqa: E711
                name = pre.numeric[j].name
                for i in np.nonzero(none)[0]:
                    reason[i] = (
                        f"constraints on {name!r} cannot be met: no category of "
                        f"{pre.numeric[j].determined_by!r} gives a value they allow"
                    )
        return reason

    def satisfied(self, pre: Preprocessor, x: np.ndarray, cf: np.ndarray) -> np.ndarray:
        """Boolean per row: does ``cf`` satisfy every constraint relative to query ``x``?"""
        lower, upper = self.bounds(pre, x)
        eps = 1e-6
        n_num = pre.n_numeric
        ok = (
            (cf[:, :n_num] >= lower[:, :n_num] - eps) & (cf[:, :n_num] <= upper[:, :n_num] + eps)
        ).all(axis=1)
        cat = cf[:, n_num:] > 0.5
        ok &= ~(cat & (upper[:, n_num:] < 0.5)).any(axis=1)
        ok &= self.unmeetable(pre, x) == None  # noqa: E711
        return np.asarray(ok, dtype=bool)


def _raw_range(f: Feature, c: Constraint) -> tuple[float, float]:
    """The constraint's range in raw units (the training range where an end is open); an
    integer feature's ends are rounded inward to the integers the range holds."""
    lo = float(f.lo or 0.0) if c.lo is None else c.lo
    hi = float(f.hi or 0.0) if c.hi is None else c.hi
    if f.kind == "integer":
        lo, hi = float(np.ceil(lo)), float(np.floor(hi))
    return lo, hi
