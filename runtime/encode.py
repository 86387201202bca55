"""Step 2 of the data path: raw query columns -> the model's input vectors.

``encode`` applies the bundle's fitted preprocessing (``schema.Preprocessor``) to a batch; a row
it cannot use keeps zeros and a reason, and is never searched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import Preprocessor, usable_rows


@dataclass
class Encoded:
    """A batch in model space: ``x`` float32 [n, width] and ``reason`` [n], None for a usable
    row, else a short text naming its first problem (such rows hold zeros)."""

    x: np.ndarray
    reason: np.ndarray

    def usable(self) -> np.ndarray:
        """Indices of the rows that can be searched."""
        return np.nonzero(usable_rows(self.reason))[0]


def encode(pre: Preprocessor, batch: pa.RecordBatch | pa.Table) -> Encoded:
    x, reason = pre.transform(batch)
    return Encoded(x, reason)


def as_arrow(data: Any) -> pa.Table | pa.RecordBatch:
    """An Arrow table or batch as it is; a pandas DataFrame converted (pandas is an optional
    extra: without it no DataFrame can be passed, and the runtime never imports it otherwise)."""
    if isinstance(data, pa.Table | pa.RecordBatch):
        return data
    try:
        import pandas as pd
    except ImportError:
        raise InputError(
            f"expected a pyarrow Table or RecordBatch, got {type(data).__name__}"
        ) from None
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise InputError(f"expected a pyarrow Table or pandas DataFrame, got {type(data).__name__}")
