"""Several worker processes for one Parquet file.

onnxruntime's second intra-op thread adds little on these small graphs, while separate processes
scale almost linearly. The parent runs the one explain loop (``runtime.run``): it reads record
batches and writes results in input order; each worker holds its own sessions and runs the
public ``Explainer.explain_batch`` on whole batches, sending back only the result columns (the
parent already holds the query's columns, so they never cross a pipe). At most ``2 * workers``
batches are in flight, so memory stays bounded by the batch size.

Workers die with their parent, even on kill -9, and a pool that ends early (an error, a stop) has
its workers killed at once rather than waiting for the batches in flight (``runtime.stops``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime import stops
from gmcf.runtime.decode import ExplainedBatch
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.read import count_batches
from gmcf.runtime.run import BatchMap, explain_file
from gmcf.runtime.settings import RunSettings, batch_size_for, check_workers
from gmcf.runtime.status import Summary

_worker: Explainer | None = None


def start_worker(
    parent: int,
    bundle: str,
    settings: RunSettings,
    threads: int,
    constraints: dict[str, Any],
    num_cfs: int,
    range_margin: float,
    revert: bool = True,
) -> None:
    """In a new worker: die with the parent (even on kill -9), then load the bundle with the
    parent's run settings."""
    global _worker
    stops.worker_setup(parent)
    _worker = Explainer.from_bundle(
        bundle,
        threads=threads,
        constraints=constraints,
        num_cfs=num_cfs,
        range_margin=range_margin,
        revert=revert,
        **settings.to_dict(),
    )


def explain_in_worker(batch: pa.RecordBatch) -> ExplainedBatch:
    """In a worker: the result columns of one batch (the parent holds the query's columns)."""
    if _worker is None:
        raise RuntimeError("explain_in_worker runs only in a worker started by start_worker")
    return _worker.explain_batch(batch)


def auto_workers(src: str | Path, batch_size: int) -> int:
    """One worker per available core, but no more than there are batches to share: a file of
    one batch is explained in-process, without the cost of starting workers."""
    try:
        rows = int(pq.read_metadata(src).num_rows)
    except (OSError, pa.ArrowInvalid):
        return 1  # the explain itself reports what is wrong with the file
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, min(cores, -(-rows // max(batch_size, 1))))


def process_pool(ex: Explainer, workers: int) -> Callable[[], AbstractContextManager[BatchMap]]:
    """A factory of the pool's batch map, for ``run.explain_file``."""

    @contextmanager
    def open_pool() -> Iterator[BatchMap]:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        features = ex.bundle.preprocessor.names
        pool = ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context(method),
            initializer=start_worker,
            initargs=(
                os.getpid(),
                str(ex.bundle.path),
                ex.settings,
                ex.threads,
                ex.constraints.to_dict(),
                ex.num_cfs,
                ex.range_margin,
                ex.revert,
            ),
        )
        try:

            def explain_batches(
                batches: Iterable[pa.RecordBatch],
            ) -> Iterator[tuple[pa.RecordBatch, ExplainedBatch]]:
                pending: deque[tuple[pa.RecordBatch, Future[ExplainedBatch]]] = deque()
                for batch in batches:
                    pending.append((batch, pool.submit(explain_in_worker, batch.select(features))))
                    del batch  # held by ``pending`` only: its memory goes when it is written
                    if len(pending) >= 2 * workers:
                        yield _collect(pending.popleft())
                while pending:
                    yield _collect(pending.popleft())

            yield explain_batches
        except BaseException:
            stops.end_pool(pool)  # no waiting for batches in flight whose results nobody wants
            raise
        pool.shutdown()

    return open_pool


def _collect(
    item: tuple[pa.RecordBatch, Future[ExplainedBatch]],
) -> tuple[pa.RecordBatch, ExplainedBatch]:
    batch, future = item
    return batch, future.result()


def explain_parquet_parallel(
    ex: Explainer,
    src: str | Path,
    dst: str | Path,
    workers: int,
    batch_size: int | None = None,
    id_column: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> Summary:
    """Like ``Explainer.explain_parquet``, with up to ``workers`` processes: no more than there
    are batches, and a file of one batch is explained in-process. Same output, same order."""
    check_workers(workers)
    workers = min(
        workers,
        max(1, count_batches(src, batch_size_for(batch_size, ex.bundle.preprocessor.width))),
    )
    pool = process_pool(ex, workers) if workers > 1 else None
    return explain_file(ex, src, dst, batch_size, id_column, progress, pool=pool, force=force)
