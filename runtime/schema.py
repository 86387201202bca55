"""Feature schema and the preprocessing between raw columns and the model's input vector.

The model's input vector is laid out as every numeric feature (min-max scaled to [0, 1] over the
training split), in schema order, followed by one one-hot block per categorical feature, in schema
order. The same object fits the scaling (trainer), applies it to query batches and inverts it
(runtime), so both sides agree exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.runtime import arrow
from gmcf.runtime.errors import InputError, SchemaError

KINDS = ("continuous", "integer", "categorical")


@dataclass(frozen=True)
class Feature:
    """One input feature. ``lo``/``hi`` (numeric) or ``categories`` (categorical) are fitted."""

    name: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    categories: tuple[str, ...] = ()

    @property
    def is_numeric(self) -> bool:
        return self.kind != "categorical"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.is_numeric:
            out["lo"], out["hi"] = self.lo, self.hi
        else:
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Feature:
        kind = d.get("kind")
        if kind not in KINDS:
            raise SchemaError(
                f"feature {d.get('name')!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}"
            )
        return cls(
            name=str(d["name"]),
            kind=str(kind),
            lo=None if d.get("lo") is None else float(d["lo"]),
            hi=None if d.get("hi") is None else float(d["hi"]),
            categories=tuple(str(c) for c in d.get("categories", ())),
        )


@dataclass(frozen=True)
class DataSchema:
    """What a user declares about a table: its features, label column and positive class.

    The positive class is the favourable outcome that counterfactuals aim for (the paper's
    target class, y_hat = 1).
    """

    features: tuple[Feature, ...]
    label: str
    positive_class: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSchema:
        for key in ("features", "label", "positive_class"):
            if key not in d:
                raise SchemaError(f"schema: missing key {key!r}")
        raw = d["features"]
        feats: list[Feature] = []
        if isinstance(raw, Mapping):
            # {"continuous": [...], "integer": [...], "categorical": [...]}
            unknown = set(raw) - set(KINDS)
            if unknown:
                raise SchemaError(
                    f"schema: unknown feature kind(s) {sorted(unknown)}; expected {', '.join(KINDS)}"
                )
            for kind in KINDS:
                feats += [Feature(name=str(n), kind=kind) for n in raw.get(kind, [])]
        else:
            feats = [Feature.from_dict(f) for f in raw]
        if not feats:
            raise SchemaError("schema: no features declared")
        names = [f.name for f in feats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"schema: duplicate feature names {dup}")
        if d["label"] in names:
            raise SchemaError(f"schema: label {d['label']!r} is also declared as a feature")
        return cls(tuple(feats), str(d["label"]), str(d["positive_class"]))

    @classmethod
    def from_file(cls, path: Path) -> DataSchema:
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise SchemaError(f"schema {path}: cannot parse: {exc}") from exc
        return cls.from_dict(data)


def usable_rows(reason: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows ``Preprocessor.transform`` found no problem in."""
    return np.asarray(reason == None, dtype=bool)  # noqa: E711 - elementwise on an object array


def _numeric_array(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type) or pa.types.is_decimal(col.type)
            or pa.types.is_null(col.type)):
        raise InputError(f"column {name!r}: expected a number, got {col.type}")
    return np.asarray(arrow.values(col, pa.float64(), np.nan), dtype=np.float64)


@dataclass
class Preprocessor:
    """Fitted min-max and one-hot encoding, with its exact inverse."""

    features: tuple[Feature, ...]
    range_margin: float = 0.5
    _cat_values: dict[str, pa.Array] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for f in self.features:
            if f.is_numeric and (f.lo is None or f.hi is None):
                raise SchemaError(f"feature {f.name!r}: preprocessing is not fitted (no lo/hi)")
            if not f.is_numeric and not f.categories:
                raise SchemaError(f"feature {f.name!r}: preprocessing is not fitted (no categories)")
        self._cat_values = {
            f.name: arrow.strings(list(f.categories)) for f in self.categorical
        }

    # -- layout -------------------------------------------------------------------------------
    @property
    def numeric(self) -> list[Feature]:
        return [f for f in self.features if f.is_numeric]

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if not f.is_numeric]

    @property
    def n_numeric(self) -> int:
        return len(self.numeric)

    @property
    def cat_sizes(self) -> list[int]:
        return [len(f.categories) for f in self.categorical]

    @property
    def width(self) -> int:
        return self.n_numeric + sum(self.cat_sizes)

    @property
    def code_width(self) -> int:
        """Columns of a row in compact code: numeric values, then one category index each."""
        return self.n_numeric + len(self.cat_sizes)

    def expand_code(self, code: np.ndarray) -> np.ndarray:
        """Compact code [m, code_width] (as the search graphs return it) -> model-space rows."""
        m, n = len(code), self.n_numeric
        x = np.zeros((m, self.width), np.float32)
        x[:, :n] = code[:, :n]
        offset = n
        for j, k in enumerate(self.cat_sizes):
            x[np.arange(m), offset + code[:, n + j].astype(np.int64)] = 1.0
            offset += k
        return x

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def integer_mask(self) -> np.ndarray:
        return np.array([f.kind == "integer" for f in self.numeric], dtype=bool)

    def lo_hi(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([f.lo for f in self.numeric], dtype=np.float64)
        hi = np.array([f.hi for f in self.numeric], dtype=np.float64)
        return lo, hi

    # -- fit ----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, table: pa.Table, features: Sequence[Feature]) -> Preprocessor:
        fitted: list[Feature] = []
        for f in features:
            if f.name not in table.column_names:
                raise InputError(f"column {f.name!r} is declared in the schema but missing from the data")
            col = table.column(f.name)
            if f.is_numeric:
                v = _numeric_array(col, f.name)
                finite = v[np.isfinite(v)]
                if finite.size == 0:
                    raise InputError(f"column {f.name!r}: no finite values to fit the scaling on")
                if f.kind == "integer" and not np.array_equal(finite, np.round(finite)):
                    raise InputError(
                        f"column {f.name!r} is declared integer but holds non-integer values"
                    )
                fitted.append(Feature(f.name, f.kind, float(finite.min()), float(finite.max())))
            else:
                cats = pc.unique(pc.drop_null(col.cast(pa.string()))).to_pylist()
                if not cats:
                    raise InputError(f"column {f.name!r}: no categories to fit on")
                fitted.append(Feature(f.name, f.kind, categories=tuple(sorted(cats))))
        return cls(tuple(fitted))

    # -- apply --------------------------------------------------------------------------------
    def check_columns(self, schema: pa.Schema) -> None:
        """Raise an InputError naming every missing feature column (sklearn style, capped at 5)."""
        missing = [n for n in self.names if n not in schema.names]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise InputError(
                f"input lacks {len(missing)} feature column(s) the bundle expects: {shown}"
            )
        for f in self.features:
            t = schema.field(f.name).type
            if pa.types.is_dictionary(t):
                t = t.value_type
            if f.is_numeric and not (pa.types.is_integer(t) or pa.types.is_floating(t)
                                     or pa.types.is_decimal(t) or pa.types.is_boolean(t)
                                     or pa.types.is_null(t)):
                raise InputError(f"column {f.name!r}: expected a number, got {t}")
            if not f.is_numeric and not (pa.types.is_string(t) or pa.types.is_large_string(t)
                                         or pa.types.is_integer(t) or pa.types.is_null(t)):
                raise InputError(f"column {f.name!r}: expected a string category, got {t}")

    def transform(
        self, table: pa.Table | pa.RecordBatch
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode raw columns. Returns (X float32 [n, width], reason object array [n]).

        ``reason[i]`` is None for a usable row, else a short text naming the first problem;
        such rows get zeros in X and must not be searched.
        """
        n = table.num_rows
        x = np.zeros((n, self.width), dtype=np.float32)
        reason = np.full(n, None, dtype=object)
        bad = np.zeros(n, dtype=bool)

        def flag(mask: np.ndarray, text: str) -> None:
            hit = mask & ~bad
            reason[hit] = text
            bad[hit] = True

        for j, f in enumerate(self.numeric):
            v = _numeric_array(table.column(f.name), f.name)
            lo, hi = float(f.lo), float(f.hi)  # type: ignore[arg-type]
            span = hi - lo if hi > lo else 1.0
            flag(np.isnan(v), f"{f.name}: missing value")
            flag(np.isinf(v), f"{f.name}: infinite value")
            far = (v < lo - self.range_margin * span) | (v > hi + self.range_margin * span)
            if far.any():
                flag(far & np.isfinite(v), f"{f.name}: value far outside the training range [{lo:g}, {hi:g}]")
            scaled = (v - lo) / span
            x[:, j] = np.where(np.isfinite(scaled), scaled, 0.0)
        offset = self.n_numeric
        for f in self.categorical:
            col = table.column(f.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            col = col.cast(pa.string())
            idx = pc.index_in(col, value_set=self._cat_values[f.name])
            valid = arrow.valid_mask(idx)
            isnull = ~arrow.valid_mask(col)
            flag(isnull, f"{f.name}: missing value")
            flag(~valid & ~isnull, f"{f.name}: unknown category")
            ii = arrow.values(idx, pa.int64())
            rows = np.nonzero(valid)[0]
            x[rows, offset + ii[rows]] = 1.0
            offset += len(f.categories)
        if bad.any():
            x[bad] = 0.0
        return x, reason

    # -- invert -------------------------------------------------------------------------------
    def inverse_values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Decode model-space rows (already hard: one-hot blocks) to raw values: float64 for a
        continuous feature, int64 for an integer one, the category's index for a categorical."""
        out: dict[str, np.ndarray] = {}
        lo, hi = self.lo_hi()
        span = np.where(hi > lo, hi - lo, 1.0)
        raw = lo + x[:, : self.n_numeric].astype(np.float64) * span
        for j, f in enumerate(self.numeric):
            out[f.name] = np.rint(raw[:, j]).astype(np.int64) if f.kind == "integer" else raw[:, j]
        offset = self.n_numeric
        for f in self.categorical:
            k = len(f.categories)
            out[f.name] = np.argmax(x[:, offset: offset + k], axis=1).astype(np.int32)
            offset += k
        return out

    def category_values(self, name: str) -> pa.Array:
        """The categories of a categorical feature, in index order."""
        return self._cat_values[name]

    def inverse(self, x: np.ndarray) -> dict[str, pa.Array]:
        """Decode model-space rows (already hard: one-hot blocks) to raw feature columns."""
        out: dict[str, pa.Array] = {}
        values = self.inverse_values(x)
        for f in self.features:
            v = values[f.name]
            if f.is_numeric:
                out[f.name] = arrow.numeric(v, pa.int64() if f.kind == "integer" else pa.float64())
            else:
                out[f.name] = arrow.dictionary(v, self._cat_values[f.name])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"range_margin": self.range_margin, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        return cls(
            tuple(Feature.from_dict(f) for f in d["features"]),
            range_margin=float(d.get("range_margin", 0.5)),
        )
