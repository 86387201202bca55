"""Step 5 of the data path, and every other file gmcf-batch writes: nothing half-written is ever
left where a reader could take it for a result.

``atomic_path`` is the one way to write a file or a folder: the content goes to a temporary
sibling that is renamed into place on success and removed on any failure. The runtime's Parquet
output, the trainer's bundle folder and the evaluation's result files all use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(dst: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``dst`` to write to; renamed to ``dst`` when the block ends
    without error (replacing what was there), removed when it raises. With ``folder`` the
    temporary path is a new empty folder (mode 755)."""
    if folder:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    else:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if folder:
            tmp.chmod(0o755)
            if dst.exists():
                shutil.rmtree(dst)
            tmp.rename(dst)
        else:
            os.replace(tmp, dst)
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(dst: Path, text: str) -> Path:
    """``text`` as the file ``dst`` (its folder created), written atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        tmp.write_text(text)
    return dst


@contextmanager
def atomic_parquet_writer(dst: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A lean Parquet writer whose file appears at ``dst`` only when the block ends without error."""
    with atomic_path(dst) as tmp, pq.ParquetWriter(tmp, schema, **writer_options(schema)) as writer:
        yield writer


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Lean Parquet writer: dictionary encoding only where it pays, no column statistics."""
    dict_cols = [
        f.name
        for f in schema
        if pa.types.is_dictionary(f.type)
        or pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
    ]
    return {"compression": "snappy", "use_dictionary": dict_cols, "write_statistics": False}
