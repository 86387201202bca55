"""Numeric features determined by a categorical one (education-num by education).

At training, a numeric feature whose training values map 1:1 to the categories of a categorical
feature (each category has exactly one value, and no two share one) is recorded as determined by
it, with its value per category (``Feature.lookup``); a schema may also declare one
(``"determined": {"education-num": "education"}``), which takes each category's most frequent
value. The search graphs decode the category and set the numeric value from the table, so f
scores, and the user receives, a consistent row; constraints on the numeric feature restrict the
categories whose value meets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.runtime import arrow, transforms

if TYPE_CHECKING:
    from gmcf.runtime.schema import Feature, Preprocessor


def _category_index(table: pa.Table, f: Feature) -> np.ndarray:
    col = table.column(f.name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    idx = pc.index_in(col.cast(pa.string()), value_set=arrow.strings(list(f.categories)))
    return np.asarray(arrow.values(idx, pa.int64(), -1))


def fit_determined(
    table: pa.Table, features: list[Feature], declared: Mapping[str, str], detect: bool
) -> list[Feature]:
    """``features`` (fitted) with ``determined_by``/``lookup`` set for the dependencies declared
    and, if ``detect``, those the training ``table`` holds exactly."""
    from gmcf.runtime.schema import _numeric_array

    by_name = {f.name: f for f in features}
    cats = [f for f in features if f.is_categorical]
    if not cats:
        return features
    index = {c.name: _category_index(table, c) for c in cats}
    out = []
    for f in features:
        if not f.is_numeric or f.kind == "image":
            out.append(f)
            continue
        v = _numeric_array(table.column(f.name), f.name)
        found: tuple[str, np.ndarray] | None = None
        if f.name in declared:
            c = by_name[declared[f.name]]
            ok = (index[c.name] >= 0) & np.isfinite(v)
            exact = transforms.exact_lookup(index[c.name][ok], v[ok], len(c.categories))
            found = (
                c.name,
                exact
                if exact is not None
                else transforms.modal_lookup(
                    index[c.name][ok], v[ok], len(c.categories), f.name, c.name
                ),
            )
        elif detect:
            for c in cats:
                ok = (index[c.name] >= 0) & np.isfinite(v)
                if len(c.categories) < 3 or not ok.any():
                    continue  # a two-valued category mapping to a two-valued number says little
                lut = transforms.exact_lookup(index[c.name][ok], v[ok], len(c.categories))
                if lut is not None:
                    found = (c.name, lut)
                    break
        if found is None:
            out.append(f)
        else:
            out.append(replace(f, determined_by=found[0], lookup=tuple(float(x) for x in found[1])))
    return out


def determined(pre: Preprocessor) -> list[tuple[int, int, np.ndarray]]:
    """Per determined feature: (its numeric column, the offset of its category block in the
    model-space row, its value per category in model space)."""
    offsets, off = {}, pre.n_numeric
    for f in pre.categorical:
        offsets[f.name] = off
        off += len(f.categories)
    out = []
    for j, f in enumerate(pre.numeric):
        if f.determined_by is not None:
            out.append(
                (j, offsets[f.determined_by], transforms.raw_to_model(f, np.array(f.lookup)))
            )
    return out


def lookup_matrix(pre: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
    """(keep [n_numeric], table [n_numeric, categorical width]): a hard row's numeric block is
    ``keep * decoded + table @ one_hots`` once its categories are chosen."""
    n = pre.n_numeric
    keep = np.ones(n, np.float32)
    table = np.zeros((n, pre.width - n), np.float32)
    for j, offset, values in determined(pre):
        keep[j] = 0.0
        table[j, offset - n : offset - n + values.size] = values
    return keep, table


def apply_lookup(pre: Preprocessor, x: np.ndarray) -> np.ndarray:
    """Rows ``x`` with every determined feature set from its category (numpy; a copy)."""
    x = np.array(x, dtype=np.float32, copy=True)
    for j, offset, values in determined(pre):
        x[:, j] = values[np.argmax(x[:, offset : offset + values.size], axis=1)]
    return x


def groups(pre: Preprocessor) -> list[list[int]]:
    """Features as the revert step changes them: per group, the model-space columns. A
    determined feature moves with the category that determines it."""
    cols: dict[str, list[int]] = {}
    for j, f in enumerate(pre.numeric):
        cols[f.name] = [j]
    off = pre.n_numeric
    for f in pre.categorical:
        cols[f.name] = list(range(off, off + len(f.categories)))
        off += len(f.categories)
    for f in pre.numeric:
        if f.determined_by is not None:
            cols[f.determined_by] = cols[f.determined_by] + cols.pop(f.name)
    return list(cols.values())
