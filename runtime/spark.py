"""Spark: ``explain_spark(df, bundle)`` explains a Spark DataFrame with ``mapInArrow``.

The driver opens the bundle once (checksums, settings, constraints and the input's columns are
checked before any task runs) and declares the output schema from it, in plain Spark types
(strings, not Arrow dictionaries; arrays, not fixed-size lists). Each Python worker opens the
bundle once and keeps its explainer for every later task and partition of the job
(``gmcf.runtime.interop.cached_explainer``); the batches Spark hands over are joined into
batches of the explainer's size. Rows keep their partition and their order in it, and the id
column, if named, is passed through unchanged.

The bundle is read by the workers from the same path as the driver (a shared or local path in
local mode, on every node of a cluster), or, with ``ship_bundle=True``, shipped with the job
(``SparkContext.addFile``) and read from each node's copy. pyspark is needed only here: install
the ``spark`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from gmcf.runtime.errors import GmcfError, InputError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.interop import Plan, batch_rows, cached_explainer, plain_schema, rebatch, to_plain


def _spark_type(t: pa.DataType) -> Any:
    """The Spark SQL type of a plain Arrow type of the output schema."""
    from pyspark.sql import types as T

    simple = {
        pa.float64(): T.DoubleType(),
        pa.float32(): T.FloatType(),
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.int16(): T.ShortType(),
        pa.int8(): T.ByteType(),
        pa.string(): T.StringType(),
        pa.bool_(): T.BooleanType(),
    }
    if t in simple:
        return simple[t]
    if pa.types.is_list(t):
        return T.ArrayType(_spark_type(t.value_type), containsNull=True)
    raise GmcfError(f"no Spark type for the output type {t}")  # pragma: no cover - schema is fixed


def spark_schema(ex: Explainer, df: Any, id_column: str | None = None) -> Any:
    """The StructType that ``explain_spark`` returns for ``df``: the id column as in ``df``,
    then the output columns of ``gmcf.runtime.output_schema`` in plain types."""
    from pyspark.sql import types as T

    arrow = plain_schema(ex.output_schema(_arrow_schema(ex, df)))
    fields = [df.schema[id_column]] if id_column is not None else []
    fields += [T.StructField(f.name, _spark_type(f.type), nullable=True) for f in arrow]
    return T.StructType(fields)


def _arrow_schema(ex: Explainer, df: Any) -> pa.Schema:
    """The Arrow schema of ``df``'s feature columns, as the workers will receive them; a missing
    or mistyped column is refused here, before any task runs."""
    from pyspark.sql import types as T

    def arrow(t: Any) -> pa.DataType:
        if isinstance(t, T.StringType):
            return pa.string()
        if isinstance(t, T.DoubleType | T.DecimalType):  # decimals are cast to double
            return pa.float64()
        if isinstance(t, T.FloatType):
            return pa.float32()
        if isinstance(t, T.LongType):
            return pa.int64()
        if isinstance(t, T.IntegerType):
            return pa.int32()
        if isinstance(t, T.ShortType | T.ByteType):
            return pa.int16()
        if isinstance(t, T.ArrayType):
            return pa.list_(arrow(t.elementType))
        if isinstance(t, T.NullType):
            return pa.null()
        return pa.binary()  # any other type: check_columns names it as the wrong type

    names = set(df.columns)
    fields = [pa.field(f.name, arrow(f.dataType)) for f in df.schema.fields if f.name in names]
    schema = pa.schema(fields)
    ex.bundle.preprocessor.check_columns(schema)
    return schema


class SparkTask:
    """The function ``mapInArrow`` runs on each partition (pickled by reference to this module)."""

    def __init__(
        self, plan: Plan, id_column: str | None, rows: int, schema: pa.Schema, shipped: str | None
    ):
        self.plan, self.id_column, self.rows, self.schema, self.shipped = (
            plan,
            id_column,
            rows,
            schema,
            shipped,
        )

    def _explainer(self) -> Explainer:
        if self.shipped is None:
            return cached_explainer(self.plan)
        from pyspark import SparkFiles

        return cached_explainer(self.plan, SparkFiles.get(self.shipped))

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ex = self._explainer()
        for table in rebatch(batches, self.rows):
            out = ex.explain(table, id_column=self.id_column)
            schema = self.schema
            if self.id_column is not None:  # the id comes back in the type Spark sent it
                schema = schema.set(
                    0, pa.field(self.id_column, table.schema.field(self.id_column).type)
                )
            yield from to_plain(out, schema).to_batches()


def explain_spark(
    df: Any,
    bundle: str | Path,
    id_column: str | None = None,
    *,
    batch_size: int | None = None,
    ship_bundle: bool = False,
    **settings: Any,
) -> Any:
    """Explain every row of the Spark DataFrame ``df``; returns a Spark DataFrame (lazy, like
    any transformation) with the columns of ``gmcf.runtime.output_schema`` in plain types.

    ``settings`` are those of ``Explainer.from_bundle`` (threads, constraints, num_cfs,
    threshold, tol, ...). ``batch_size``: rows explained at a time per worker (default: the
    explainer's). ``ship_bundle``: send the bundle folder with the job instead of reading it
    from ``bundle`` on every node."""
    ex = Explainer.from_bundle(bundle, **settings)
    if id_column is not None and id_column not in df.columns:
        raise InputError(f"id column {id_column!r} is not in the input")
    schema = spark_schema(ex, df, id_column)
    arrow_out = plain_schema(ex.output_schema(_arrow_schema(ex, df)))
    if id_column is not None:
        arrow_out = arrow_out.insert(0, pa.field(id_column, pa.null()))  # replaced per batch
    shipped = None
    if ship_bundle:
        path = Path(bundle).resolve()
        df.sparkSession.sparkContext.addFile(str(path), recursive=True)
        shipped = path.name
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    # Decimals reach Python as Arrow decimals: read them as doubles, as Parquet readers do.
    kinds = {f.name: f.dataType for f in df.schema.fields}
    features = [
        F.col(n).cast("double").alias(n) if isinstance(kinds[n], T.DecimalType) else F.col(n)
        for n in ex.bundle.preprocessor.names
    ]
    id_col = (
        [] if id_column is None or id_column in ex.bundle.preprocessor.names else [F.col(id_column)]
    )
    task = SparkTask(Plan.of(ex), id_column, batch_rows(ex, batch_size), arrow_out, shipped)
    return df.select(*id_col, *features).mapInArrow(task, schema)
