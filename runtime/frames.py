"""pandas in, pandas out: ``Explainer.explain(df)`` for a DataFrame.

pandas is imported only when a DataFrame is given. The result has the input's index (for
``num_cfs > 1`` a query's index repeats once per option), the id column exactly as given, and
the documented output columns with types that do not depend on the rows: nullable integers
(``Int64``, ``Int32``: null where the Arrow output is null), ``float64``/``float32`` with NaN for
null, nullable strings (``string``) for every string column, dictionary-encoded or not. So the
same bundle always gives the same dtypes, which Dask's ``meta`` and ``to_parquet`` rely on:
``ex.explain(df.head(0))`` is an empty frame with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gmcf.runtime.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from gmcf.runtime.explainer import Explainer


def is_frame(data: Any) -> bool:
    """True for a pandas DataFrame, without importing pandas."""
    return any(
        c.__module__.startswith("pandas") and c.__name__ == "DataFrame" for c in type(data).__mro__
    )


def frame_to_arrow(df: pd.DataFrame) -> pa.Table:
    """The DataFrame's columns as an Arrow table (its index is not a column)."""
    if not df.columns.is_unique:
        dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise InputError(f"the DataFrame has duplicate column names: {', '.join(dup)}")
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputError(
            f"the DataFrame cannot be read as a table ({str(exc).splitlines()[0]})"
        ) from exc


def _dtype(t: pa.DataType) -> Any:
    import pandas as pd

    if pa.types.is_dictionary(t):
        return _dtype(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pd.StringDtype()
    return {
        pa.int8(): pd.Int8Dtype(),
        pa.int16(): pd.Int16Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(),
    }.get(t)


def table_to_frame(
    out: pa.Table, df: pd.DataFrame, id_column: str | None, ranked: bool
) -> pd.DataFrame:
    """The explanation of ``df`` as a DataFrame: ``df``'s index and id column, the rest typed
    as the module says."""
    import pandas as pd

    columns = {}
    for name, col in zip(out.column_names, out.columns, strict=True):
        if name == id_column:
            continue
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        dtype = _dtype(col.type)
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
            values = col.to_pylist()
            columns[name] = pd.Series(
                [None if v is None else np.asarray(v, np.float32) for v in values], dtype=object
            )
        elif dtype is not None:
            columns[name] = pd.Series(
                col.to_pandas(types_mapper={col.type: dtype}.get), dtype=dtype
            )
        else:
            columns[name] = pd.Series(col.to_numpy(zero_copy_only=False))
    frame = pd.DataFrame(columns)
    # Output row i belongs to query row src[i]: itself, or for ranked options the query whose
    # first option (rank 1 or no rank) it follows.
    if ranked:
        rank = out.column("cf_rank").to_numpy(zero_copy_only=False)
        first = np.isnan(rank.astype(np.float64)) | (rank == 1)
        src = np.cumsum(first) - 1
    else:
        src = np.arange(len(frame))
    frame.index = df.index[src]
    if id_column is not None:
        frame.insert(0, id_column, df[id_column].iloc[src].to_numpy())
        frame[id_column] = frame[id_column].astype(df[id_column].dtype)
    return frame


def explain_frame(ex: Explainer, df: pd.DataFrame, id_column: str | None = None) -> pd.DataFrame:
    out = ex.explain(frame_to_arrow(df), id_column=id_column)
    return table_to_frame(out, df, id_column, ranked=ex.num_cfs > 1)
