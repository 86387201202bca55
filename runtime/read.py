"""Step 1 of the data path: a Parquet file of queries, checked before any row is read, then read
in record batches of bounded size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import Preprocessor


@dataclass
class QueryFile:
    """An opened query file: its rows, its schema and the columns an explain reads."""

    path: Path
    file: pq.ParquetFile
    rows: int
    columns: list[str]
    batch_size: int

    @property
    def schema(self) -> pa.Schema:
        return self.file.schema_arrow

    def batches(self) -> Iterator[pa.RecordBatch]:
        return read_batches(self.file, self.path, self.batch_size, self.columns)


def open_queries(src: Path, pre: Preprocessor, id_column: str | None, batch_size: int) -> QueryFile:
    """Open ``src`` and check it has rows and the bundle's feature columns (and the id column)."""
    pf = open_parquet(src)
    total = pf.metadata.num_rows
    if total == 0:
        raise InputError(f"{src}: the file has no rows")
    check_input(pre, pf.schema_arrow, id_column)
    names = pre.names
    columns = names + ([id_column] if id_column and id_column not in names else [])
    return QueryFile(src, pf, total, columns, batch_size)


def check_input(pre: Preprocessor, schema: pa.Schema, id_column: str | None) -> None:
    pre.check_columns(schema)
    if id_column is not None and id_column not in schema.names:
        raise InputError(f"id column {id_column!r} is not in the input")


def open_parquet(src: Path) -> pq.ParquetFile:
    if not src.exists():
        raise InputError(f"input file {src} does not exist")
    if src.is_dir():
        raise InputError(f"input {src} is a folder, not a Parquet file")
    try:
        return pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{src} is not a Parquet file ({str(exc).splitlines()[0]})") from exc


def read_batches(
    pf: pq.ParquetFile, src: Path, batch_size: int, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_size`` rows, one row group at a time.

    A single ``iter_batches`` over the whole file lets pyarrow's resident memory creep up with
    the file's length (docs/design.md); a fresh iterator per row group stays flat. A corrupt data
    page is reported as an InputError naming the file."""
    for group in range(pf.num_row_groups):
        batches = pf.iter_batches(batch_size=batch_size, columns=columns, row_groups=[group])
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(
                    f"{src}: cannot read the Parquet data ({str(exc).splitlines()[0]})"
                ) from exc
            yield batch
