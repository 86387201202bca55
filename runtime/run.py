"""The explain loop over a Parquet file, shared by the in-process run and the process pool:
read -> (encode -> search -> decode, in this process or in workers) -> write, batch by batch, in
input order, with memory bounded by the batch size."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from gmcf.runtime.decode import ExplainedBatch
from gmcf.runtime.output import output_batch
from gmcf.runtime.read import open_queries
from gmcf.runtime.settings import batch_size_for
from gmcf.runtime.status import Summary
from gmcf.runtime.write import atomic_parquet_writer

if TYPE_CHECKING:
    from gmcf.runtime.explainer import Explainer

#: Explains a stream of query batches: yields each batch with its result, in input order.
BatchMap = Callable[[Iterable[pa.RecordBatch]], Iterator[tuple[pa.RecordBatch, ExplainedBatch]]]


def explain_file(
    ex: Explainer,
    src: str | Path,
    dst: str | Path,
    batch_size: int | None = None,
    id_column: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    pool: Callable[[], AbstractContextManager[BatchMap]] | None = None,
) -> Summary:
    """Stream ``src`` through the explainer into ``dst``. ``pool`` opens the batch map of a
    process pool (``runtime.parallel``); without it every batch is explained in this process.
    The output appears at ``dst`` only when complete; ``progress(done, total)`` is called after
    each batch."""
    src, dst = Path(src), Path(dst)
    pre = ex.bundle.preprocessor
    queries = open_queries(src, pre, id_column, batch_size_for(batch_size, pre.width))
    schema = ex.output_schema(queries.schema, id_column)
    summary = Summary(output=dst)
    t0 = time.perf_counter()
    opened: AbstractContextManager[BatchMap] = (
        pool() if pool is not None else nullcontext(in_process(ex))
    )
    with opened as explain_batches, atomic_parquet_writer(dst, schema) as writer:
        for batch, explained in explain_batches(queries.batches()):
            writer.write_batch(output_batch(schema, pre, batch, id_column, explained))
            summary.add(explained.counted)
            # Let go of the written batch before the next is read and explained (a loop variable
            # would hold it until then): memory stays bounded by the batches in flight.
            del batch, explained
            if progress:
                progress(summary.rows, queries.rows)
    summary.seconds = time.perf_counter() - t0
    return summary


def in_process(ex: Explainer) -> BatchMap:
    def explain_batches(
        batches: Iterable[pa.RecordBatch],
    ) -> Iterator[tuple[pa.RecordBatch, ExplainedBatch]]:
        for batch in batches:
            yield batch, ex.explain_batch(batch)

    return explain_batches
