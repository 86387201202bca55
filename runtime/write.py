"""Step 5 of the data path, and every other file gmcf-batch writes: nothing half-written is ever
left where a reader could take it for a result.

``atomic_path`` is the one way to write a file or a folder: the content goes to a temporary
sibling that is renamed into place on success and removed on any failure. The runtime's Parquet
output, the trainer's bundle folder and the evaluation's result files all use it. A file is
published by ``runtime.publish``: a temporary name that the next run recognises when its owner is
gone, never over a file that appeared meanwhile unless asked to (``force``), OS errors as one
line naming the path and the cause.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime.publish import atomic_output, output_error


@contextmanager
def atomic_path(dst: Path, folder: bool = False, force: bool = True) -> Iterator[Path]:
    """A temporary path beside ``dst`` to write to; moved to ``dst`` when the block ends
    without error, removed when it raises. A file replaces what was there only with ``force``
    (the default here; the explain output passes False). With ``folder`` the temporary path is
    a new empty folder (mode 755) that replaces the old one."""
    if not folder:
        with atomic_output(dst, force) as tmp:
            yield tmp
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(dst: Path, text: str) -> Path:
    """``text`` as the file ``dst`` (its folder created), written atomically."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, dst) from exc
    with atomic_path(dst) as tmp:
        try:
            tmp.write_text(text)
        except OSError as exc:
            raise output_error(exc, dst) from exc
    return dst


class ParquetOutput:
    """A ``pq.ParquetWriter`` whose OS errors (disk full, I/O) are one-line ``OutputError``s."""

    def __init__(self, writer: pq.ParquetWriter, dst: Path) -> None:
        self._writer = writer
        self.dst = dst

    def write_batch(self, batch: pa.RecordBatch) -> None:
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise output_error(exc, self.dst) from exc


@contextmanager
def atomic_parquet_writer(
    dst: Path, schema: pa.Schema, force: bool = False
) -> Iterator[ParquetOutput]:
    """A lean Parquet writer whose file appears at ``dst`` only when the block ends without
    error, and not over an existing file unless ``force``."""
    dst = Path(dst)
    with atomic_path(dst, force=force) as tmp:
        try:
            writer = pq.ParquetWriter(tmp, schema, **writer_options(schema))
        except OSError as exc:
            raise output_error(exc, dst) from exc
        try:
            yield ParquetOutput(writer, dst)
        except BaseException:
            with contextlib.suppress(Exception):  # closing a broken file must not hide why
                writer.close()
            raise
        try:
            writer.close()
        except OSError as exc:
            raise output_error(exc, dst) from exc


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
