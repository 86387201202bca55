"""Feature schema and the preprocessing between raw columns and the model's input vector.

The model's input vector is laid out as every numeric feature (min-max scaled to [0, 1] over the
training split), in schema order, followed by one one-hot block per categorical feature, in schema
order. The same object fits the scaling (trainer), applies it to query batches and inverts it
(runtime), so both sides agree exactly.

An image schema has exactly one feature of kind ``image`` (e.g. ``pixels``, shape 28x28): one
Parquet column holding each image as a list of pixel values, which ``ImagePreprocessor`` turns
into the model's input vector (one entry per pixel, scale 0..1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.runtime import arrow, transforms
from gmcf.runtime.errors import InputError, SchemaError

KINDS = ("continuous", "integer", "categorical", "image")
IMAGE = "image"
#: How far beyond its training range [lo, hi] a query's numeric value may lie, as a share of
#: hi - lo, before its row is invalid (explain's default; ``--range-margin``). A declared domain
#: (``"domain": {"capital-gain": [0, null]}`` in the schema) is a hard limit within that.
DEFAULT_RANGE_MARGIN = 0.05


@dataclass(frozen=True)
class Feature:
    """One input feature. ``lo``/``hi`` (numeric) or ``categories`` (categorical) are fitted."""

    name: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    categories: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    """Image features only: the image's shape, e.g. (28, 28)."""
    domain: tuple[float | None, float | None] = (None, None)
    """Numeric features only: the values that can exist at all (e.g. (0, None): non-negative),
    as declared in the schema; None is no limit."""
    transform: str = transforms.AUTO
    """Numeric features: ``minmax`` or ``log`` once fitted (see ``gmcf.runtime.transforms``);
    ``auto`` when declared: chosen from the training data."""
    band_lo: float | None = None
    band_hi: float | None = None
    """Numeric features: the training distribution's [p0.5, p99.5], which counterfactuals keep
    to."""
    determined_by: str | None = None
    lookup: tuple[float, ...] = ()
    """A numeric feature determined by a categorical one: its value for each category."""

    @property
    def is_numeric(self) -> bool:
        """A tabular number: continuous or integer (not an image, not a category)."""
        return self.kind in ("continuous", "integer")

    @property
    def is_categorical(self) -> bool:
        return self.kind == "categorical"

    @property
    def size(self) -> int:
        """Entries of the model's input vector this feature takes (pixels for an image)."""
        return int(np.prod(self.shape)) if self.kind == IMAGE else 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == IMAGE:
            out["shape"] = list(self.shape)
        if not self.is_categorical:
            out["lo"], out["hi"] = self.lo, self.hi
            if self.kind != IMAGE and self.transform != "minmax":
                out["transform"] = self.transform  # absent: min-max (as bundles before transforms)
            if self.band_lo is not None:
                out["band"] = [self.band_lo, self.band_hi]
            if self.determined_by is not None:
                out["determined_by"], out["lookup"] = self.determined_by, list(self.lookup)
        else:
            out["categories"] = list(self.categories)
        if self.domain != (None, None):
            out["domain"] = list(self.domain)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Feature:
        kind = d.get("kind")
        if kind not in KINDS:
            raise SchemaError(
                f"feature {d.get('name')!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}"
            )
        if kind == IMAGE:
            return _image_feature(d)
        fitted = d.get("lo") is not None
        band = d.get("band") or (None, None)
        by = d.get("determined_by")
        return cls(
            name=str(d["name"]),
            kind=str(kind),
            lo=None if d.get("lo") is None else float(d["lo"]),
            hi=None if d.get("hi") is None else float(d["hi"]),
            categories=tuple(str(c) for c in d.get("categories", ())),
            domain=_domain(d.get("name"), kind, d.get("domain")),
            # a bundle written before transforms existed scaled every numeric feature min-max
            transform=transforms.check_transform(
                str(d.get("name")), str(d.get("transform", "minmax" if fitted else transforms.AUTO))
            ),
            band_lo=None if band[0] is None else float(band[0]),
            band_hi=None if band[1] is None else float(band[1]),
            determined_by=None if by is None else str(by),
            lookup=tuple(float(v) for v in d.get("lookup", ())),
        )


def _domain(name: object, kind: object, value: object) -> tuple[float | None, float | None]:
    """A declared domain: [lo, hi] with null for no limit, e.g. [0, null] for non-negative."""
    if value is None:
        return (None, None)
    if kind not in ("continuous", "integer"):
        raise SchemaError(
            f"feature {name!r}: a domain applies to numeric features only, not {kind}"
        )
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v))
            for v in value
        )
    ):
        raise SchemaError(
            f"feature {name!r}: domain must be [lo, hi] with numbers or null, got {value!r}"
        )
    lo, hi = (None if v is None else float(v) for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"feature {name!r}: domain [{lo:g}, {hi:g}] has lo > hi")
    return (lo, hi)


def _image_feature(d: Mapping[str, Any]) -> Feature:
    """An image feature from its declaration: a shape of positive sizes; the scale is 0..1."""
    shape = d.get("shape")
    if (
        not isinstance(shape, list | tuple)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise SchemaError(
            f"image feature {d.get('name')!r}: needs a shape of positive integers, e.g. [28, 28]; "
            f"got {shape!r}"
        )
    lo, hi = float(d.get("lo", 0.0)), float(d.get("hi", 1.0))
    if (lo, hi) != (0.0, 1.0):
        raise SchemaError(
            f"image feature {d.get('name')!r}: the pixel scale is 0..1, got {lo:g}..{hi:g}"
        )
    return Feature(str(d["name"]), IMAGE, 0.0, 1.0, shape=tuple(shape))


def _check_image_schema(feats: Sequence[Feature]) -> None:
    if any(f.kind == IMAGE for f in feats) and len(feats) > 1:
        raise SchemaError(
            "schema: an image feature must be the only feature (images and tabular columns "
            "cannot be mixed in one schema)"
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
    determined: Mapping[str, str] = field(default_factory=dict)
    """Declared dependencies: numeric feature -> the categorical feature that determines it."""
    detect_determined: bool = True
    """Also detect, at training, numeric features that map 1:1 to a categorical one."""

    @property
    def has_image(self) -> bool:
        return any(f.kind == IMAGE for f in self.features)

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
                    f"schema: unknown feature kind(s) {sorted(unknown)}; expected "
                    f"{', '.join(KINDS)}"
                )
            if raw.get(IMAGE):
                raise SchemaError(
                    "schema: declare an image feature in list form with its shape, e.g. "
                    '"features": [{"name": "pixels", "kind": "image", "shape": [28, 28]}]'
                )
            for kind in KINDS:
                feats += [Feature(name=str(n), kind=kind) for n in raw.get(kind, [])]
        else:
            feats = [Feature.from_dict(f) for f in raw]
        if not feats:
            raise SchemaError("schema: no features declared")
        feats = _with_domains(feats, d.get("domain"))
        names = [f.name for f in feats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"schema: duplicate feature names {dup}")
        if d["label"] in names:
            raise SchemaError(f"schema: label {d['label']!r} is also declared as a feature")
        _check_image_schema(feats)
        declared = d.get("transforms", {})
        if not isinstance(declared, Mapping):
            raise SchemaError("schema: 'transforms' must map feature names to a transform")
        by_name = {f.name: f for f in feats}
        for name, t in declared.items():
            if name not in by_name or not by_name[name].is_numeric:
                raise SchemaError(
                    f"schema: 'transforms' names {name!r}, which is not a numeric feature"
                )
            by_name[name] = replace(
                by_name[name], transform=transforms.check_transform(name, str(t))
            )
        feats = [by_name[f.name] for f in feats]
        determined = d.get("determined", {})
        if not isinstance(determined, Mapping):
            raise SchemaError(
                "schema: 'determined' must map a numeric feature to the categorical one that "
                "determines it"
            )
        determined = {str(k): str(v) for k, v in determined.items()}
        transforms.check_determined(determined, feats)
        return cls(
            tuple(feats),
            str(d["label"]),
            str(d["positive_class"]),
            determined,
            bool(d.get("detect_determined", True)),
        )

    @classmethod
    def from_file(cls, path: Path) -> DataSchema:
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                from gmcf.runtime import toml

                data = toml.loads(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise SchemaError(f"schema {path}: cannot parse: {exc}") from exc
        return cls.from_dict(data)


def _with_domains(feats: list[Feature], domains: object) -> list[Feature]:
    """Apply the schema's ``"domain": {"feature": [lo, hi]}`` to its features."""
    if domains is None:
        return feats
    if not isinstance(domains, Mapping):
        raise SchemaError(f"schema: domain must map feature names to [lo, hi], got {domains!r}")
    kinds = {f.name: f.kind for f in feats}
    unknown = sorted(set(domains) - set(kinds))
    if unknown:
        raise SchemaError(f"schema: domain names unknown feature(s) {unknown}")
    return [
        replace(f, domain=_domain(f.name, f.kind, domains[f.name])) if f.name in domains else f
        for f in feats
    ]


def usable_rows(reason: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows ``Preprocessor.transform`` found no problem in."""
    return np.asarray(reason == None, dtype=bool)  # noqa: E711 - elementwise on an object array


def _numeric_array(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_boolean(col.type)
        or pa.types.is_decimal(col.type)
        or pa.types.is_null(col.type)
    ):
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
            if not f.is_categorical and (f.lo is None or f.hi is None):
                raise SchemaError(f"feature {f.name!r}: preprocessing is not fitted (no lo/hi)")
            if f.is_categorical and not f.categories:
                raise SchemaError(
                    f"feature {f.name!r}: preprocessing is not fitted (no categories)"
                )
        self._cat_values = {f.name: arrow.strings(list(f.categories)) for f in self.categorical}

    # -- layout -------------------------------------------------------------------------------
    @property
    def numeric(self) -> list[Feature]:
        return [f for f in self.features if not f.is_categorical]

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if f.is_categorical]

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
    def fit(
        cls,
        table: pa.Table,
        features: Sequence[Feature],
        determined: Mapping[str, str] | None = None,
        detect: bool = True,
    ) -> Preprocessor:
        """Fit the scaling (transform, range and band of each numeric feature), the categories,
        and the features determined by others (``determined``, and detected ones if ``detect``)."""
        if any(f.kind == IMAGE for f in features):
            return ImagePreprocessor.fit_image(table, features)
        fitted: list[Feature] = []
        for f in features:
            if f.name not in table.column_names:
                raise InputError(
                    f"column {f.name!r} is declared in the schema but missing from the data"
                )
            col = table.column(f.name)
            if not f.is_categorical:
                v = _numeric_array(col, f.name)
                finite = v[np.isfinite(v)]
                if finite.size == 0:
                    raise InputError(f"column {f.name!r}: no finite values to fit the scaling on")
                if f.kind == "integer" and not np.array_equal(finite, np.round(finite)):
                    raise InputError(
                        f"column {f.name!r} is declared integer but holds non-integer values"
                    )
                dlo, dhi = f.domain
                if (dlo is not None and finite.min() < dlo) or (
                    dhi is not None and finite.max() > dhi
                ):
                    raise InputError(
                        f"column {f.name!r}: training values {finite.min():g}..{finite.max():g} "
                        f"lie outside the declared domain {_domain_text(f.domain)}"
                    )
                transform = (
                    transforms.choose_transform(finite)
                    if f.transform == transforms.AUTO
                    else f.transform
                )
                band = transforms.fit_band(finite)
                fitted.append(
                    Feature(
                        f.name,
                        f.kind,
                        float(finite.min()),
                        float(finite.max()),
                        domain=f.domain,
                        transform=transform,
                        band_lo=band[0],
                        band_hi=band[1],
                    )
                )
            else:
                cats = pc.unique(pc.drop_null(col.cast(pa.string()))).to_pylist()
                if not cats:
                    raise InputError(f"column {f.name!r}: no categories to fit on")
                fitted.append(Feature(f.name, f.kind, categories=tuple(sorted(cats))))
        from gmcf.runtime.dependencies import fit_determined

        return cls(tuple(fit_determined(table, fitted, dict(determined or {}), detect)))

    # -- apply --------------------------------------------------------------------------------
    def check_columns(self, schema: pa.Schema) -> None:
        """Raise an InputError naming every missing feature column (sklearn style, capped at 5),
        a column named twice, or a feature column whose type does not fit its kind."""
        check_unique_names(schema)
        missing = [n for n in self.names if n not in schema.names]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            lists = [f.name for f in schema if _is_list(f.type)]
            hint = (
                f" (list column {lists[0]!r} looks like images; this bundle explains tabular rows)"
                if lists
                else ""
            )
            raise InputError(
                f"input lacks {len(missing)} feature column(s) the bundle expects: {shown}{hint}"
            )
        for f in self.features:
            t = schema.field(f.name).type
            if _is_list(t):
                raise InputError(
                    f"column {f.name!r}: expected a "
                    f"{'number' if not f.is_categorical else 'string category'}, got {t} (a list "
                    "column: this bundle explains tabular rows, not images)"
                )
            if pa.types.is_dictionary(t):
                t = t.value_type
            if not f.is_categorical and not (
                pa.types.is_integer(t)
                or pa.types.is_floating(t)
                or pa.types.is_decimal(t)
                or pa.types.is_boolean(t)
                or pa.types.is_null(t)
            ):
                raise InputError(f"column {f.name!r}: expected a number, got {t}")
            if f.is_categorical and not (
                pa.types.is_string(t)
                or pa.types.is_large_string(t)
                or pa.types.is_null(t)
                or (pa.types.is_integer(t) and _integer_categories(f))
            ):
                example = f" such as {f.categories[0]!r}" if f.categories else ""
                raise InputError(
                    f"column {f.name!r}: expected a string category{example}, got {t}"
                    + (
                        " (the bundle's categories are text, so numbers cannot match them)"
                        if pa.types.is_integer(t) or pa.types.is_floating(t)
                        else ""
                    )
                )

    def transform(self, table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
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
            dlo, dhi = f.domain
            if dlo is not None or dhi is not None:
                out = (v < (-np.inf if dlo is None else dlo)) | (
                    v > (np.inf if dhi is None else dhi)
                )
                if out.any():
                    flag(
                        out & np.isfinite(v),
                        f"{f.name}: value outside the declared domain {_domain_text(f.domain)}",
                    )
            far = (v < lo - self.range_margin * span) | (v > hi + self.range_margin * span)
            if far.any():
                flag(
                    far & np.isfinite(v),
                    f"{f.name}: value far outside the training range [{lo:g}, {hi:g}] "
                    f"(more than {100 * self.range_margin:g}% of its width beyond it)",
                )
            scaled = transforms.raw_to_model(f, np.where(np.isfinite(v), v, lo))
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
    def raw_values(self, x: np.ndarray) -> np.ndarray:
        """The numeric entries of model-space rows ``x`` [n, >= n_numeric] in raw units, float64
        [n, n_numeric] (integers not rounded): the exact inverse of the scaling."""
        u = np.asarray(x[:, : self.n_numeric], dtype=np.float64)
        return (
            np.stack(
                [transforms.model_to_raw(f, u[:, j]) for j, f in enumerate(self.numeric)], axis=1
            )
            if self.n_numeric
            else u
        )

    def model_values(self, raw: np.ndarray) -> np.ndarray:
        """Raw numeric values [n, n_numeric] -> model space (float64): the scaling."""
        raw = np.asarray(raw, dtype=np.float64)
        return (
            np.stack(
                [transforms.raw_to_model(f, raw[:, j]) for j, f in enumerate(self.numeric)], axis=1
            )
            if self.n_numeric
            else raw
        )

    def bands(self) -> tuple[np.ndarray, np.ndarray]:
        """Per numeric feature, the band [p0.5, p99.5] of training in model space."""
        b = np.array([transforms.band_of(f) for f in self.numeric], dtype=np.float64).reshape(-1, 2)
        return b[:, 0], b[:, 1]

    def inverse_values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Decode model-space rows (already hard: one-hot blocks) to raw values: float64 for a
        continuous feature, int64 for an integer one, the category's index for a categorical."""
        out: dict[str, np.ndarray] = {}
        raw = self.raw_values(x)
        for j, f in enumerate(self.numeric):
            out[f.name] = np.rint(raw[:, j]).astype(np.int64) if f.kind == "integer" else raw[:, j]
        offset = self.n_numeric
        for f in self.categorical:
            k = len(f.categories)
            out[f.name] = np.argmax(x[:, offset : offset + k], axis=1).astype(np.int32)
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
            if not f.is_categorical:
                out[f.name] = arrow.numeric(v, pa.int64() if f.kind == "integer" else pa.float64())
            else:
                out[f.name] = arrow.dictionary(v, self._cat_values[f.name])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"range_margin": self.range_margin, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        feats = tuple(Feature.from_dict(f) for f in d["features"])
        _check_image_schema(feats)
        kind = ImagePreprocessor if feats and feats[0].kind == IMAGE else cls
        return kind(feats, range_margin=float(d.get("range_margin", 0.5)))


def check_unique_names(schema: pa.Schema) -> None:
    """Refuse a table that names a column twice: which of the two is the feature?"""
    seen: set[str] = set()
    dup: list[str] = []
    for name in schema.names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    if dup:
        shown = ", ".join(repr(n) for n in dup[:5]) + (" ..." if len(dup) > 5 else "")
        raise InputError(
            f"input has duplicate column names: {shown}; each column must have its own name"
        )


def _integer_categories(f: Feature) -> bool:
    """True when every category is an integer written plainly ('0', '12'): then a column of
    integers can name them."""
    return bool(f.categories) and all(
        c.lstrip("-").isdigit() and str(int(c)) == c for c in f.categories
    )


def _domain_text(domain: tuple[float | None, float | None]) -> str:
    lo, hi = domain
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


#: Arrow type of an image column in the output (query echo and ``cf_<name>``): float32 in [0, 1].
def image_type(f: Feature) -> pa.DataType:
    return pa.list_(pa.float32(), f.size)


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def image_column(values: np.ndarray, keep: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """Rows of ``values`` [n, size] as a fixed-size list column; rows where ``keep`` is False
    null."""
    flat = arrow.numeric(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return fixed_size_lists(flat, values.shape[1], keep)


def fixed_size_lists(
    flat: pa.Array, size: int, keep: np.ndarray | None = None
) -> pa.FixedSizeListArray:
    """``flat`` cut into lists of ``size`` values; rows where ``keep`` is False are null.
    (Built from buffers: ``FixedSizeListArray.from_arrays`` takes no mask in older pyarrow.)"""
    validity, nulls = arrow.validity_buffer(keep, len(flat) // size)
    if not nulls:
        return pa.FixedSizeListArray.from_arrays(flat, size)
    out = pa.Array.from_buffers(
        pa.list_(flat.type, size), len(flat) // size, [validity], null_count=nulls, children=[flat]
    )
    assert isinstance(out, pa.FixedSizeListArray)
    return out


@dataclass
class ImagePreprocessor(Preprocessor):
    """One image feature: a list column of pixels <-> the model's input vector (one entry per
    pixel, scale 0..1).

    Accepted input columns: ``fixed_size_list`` or ``list`` of float values in [0, 1], or of
    integer values in 0..255 (8-bit pixels, divided by 255). A column of any other type, or a
    fixed-size list of another length, is refused as a whole; a row of the wrong length, a
    missing image or pixel, or values outside the scale make that row invalid.
    """

    @property
    def image(self) -> Feature:
        return self.features[0]

    @property
    def n_numeric(self) -> int:
        return self.image.size

    def integer_mask(self) -> np.ndarray:
        return np.zeros(self.image.size, dtype=bool)

    def lo_hi(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.image.size), np.ones(self.image.size)

    def raw_values(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x[:, : self.n_numeric], dtype=np.float64)

    def model_values(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64)

    def bands(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.image.size), np.ones(self.image.size)

    @classmethod
    def fit_image(cls, table: pa.Table, features: Sequence[Feature]) -> ImagePreprocessor:
        _check_image_schema(features)
        pre = cls(tuple(features))
        pre.check_columns(table.schema)
        return pre

    def _describe(self) -> str:
        f = self.image
        return (
            f"{f.size} pixels ({'x'.join(map(str, f.shape))}), fixed_size_list<float32>[{f.size}] "
            "in [0, 1] or 8-bit integers 0..255"
        )

    def check_columns(self, schema: pa.Schema) -> None:
        check_unique_names(schema)
        f = self.image
        if f.name not in schema.names:
            shown = ", ".join(repr(n) for n in schema.names[:5]) + (
                " ..." if len(schema.names) > 5 else ""
            )
            raise InputError(
                f"input lacks the image column {f.name!r} ({self._describe()}) that this image "
                f"bundle expects; input columns: {shown}"
            )
        t = schema.field(f.name).type
        if not _is_list(t):
            raise InputError(f"column {f.name!r}: expected a list of {self._describe()}; got {t}")
        if pa.types.is_fixed_size_list(t) and t.list_size != f.size:
            raise InputError(
                f"column {f.name!r}: fixed-size lists of {t.list_size} values, but the bundle "
                f"expects {f.size}"
            )
        v = t.value_type
        if not (pa.types.is_floating(v) or pa.types.is_integer(v)):
            raise InputError(f"column {f.name!r}: pixel values must be numbers, got {v}")

    def pixels(self, col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read an image column: (values float32 [n, size] scaled to 0..1, readable [n],
        reason [n]).

        ``readable`` is False for rows with no values (missing image, wrong length); ``reason``
        names the first problem of every unusable row (None for a usable one)."""
        f = self.image
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        n, size = len(col), f.size
        scale = 255.0 if pa.types.is_integer(col.type.value_type) else 1.0
        reason = np.full(n, None, dtype=object)
        values = np.zeros((n, size), dtype=np.float32)
        present = arrow.valid_mask(col)
        if pa.types.is_fixed_size_list(col.type):
            length = np.where(present, size, -1)
        else:
            length = arrow.values(pc.list_value_length(col), pa.int64(), -1)
        reason[~present] = f"{f.name}: missing image"
        wrong = present & (length != size)
        for i in np.nonzero(wrong)[0]:
            reason[i] = f"{f.name}: {int(length[i])} pixel values, expected {size}"
        readable = present & ~wrong
        if readable.any():
            rows = col.filter(arrow.boolean(readable))
            flat = arrow.values(rows.flatten(), pa.float32(), np.nan)
            values[readable] = flat.reshape(-1, size) / np.float32(scale)
            sub = values[readable]
            nan = np.isnan(sub).any(axis=1)
            out = ~nan & ((sub < 0.0) | (sub > 1.0)).any(axis=1)
            idx = np.nonzero(readable)[0]
            reason[idx[nan]] = f"{f.name}: missing or non-finite pixel value"
            hi = "255 (8-bit integers)" if scale == 255.0 else "1"
            reason[idx[out]] = f"{f.name}: pixel values outside the scale 0..{hi}"
        return values, readable, reason

    def transform(self, table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        values, _, reason = self.pixels(table.column(self.image.name))
        values[~usable_rows(reason)] = 0.0
        return values, reason

    def echo(self, col: pa.ChunkedArray | pa.Array) -> pa.FixedSizeListArray:
        """The query column as it goes back to the user: float32 in 0..1, null if unreadable."""
        values, readable, _ = self.pixels(col)
        return image_column(values, readable)

    def inverse_values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Hard decoding of an image is clipping to [0, 1] (pixels are continuous: no rounding)."""
        return {self.image.name: np.clip(x, 0.0, 1.0).astype(np.float32)}

    def inverse(self, x: np.ndarray) -> dict[str, pa.Array]:
        return {self.image.name: image_column(self.inverse_values(x)[self.image.name])}
