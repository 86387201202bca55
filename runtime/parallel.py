"""Several worker processes for one Parquet file.

onnxruntime's second intra-op thread adds little on these small graphs, while separate processes
scale almost linearly. The parent reads record batches and writes results in input order; each
worker holds its own sessions, explains whole batches and sends back only the result columns
(the parent already holds the query's columns, so they never cross a pipe). At most ``2 * workers`` batches are in
flight, so memory stays bounded by the batch size.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime.errors import InputError
from gmcf.runtime.explainer import (
    Explainer,
    Summary,
    atomic_parquet_writer,
    default_batch_size,
    read_batches,
)
from gmcf.runtime.output import output_batch

_worker: Explainer | None = None


def _init(
    bundle: str, settings: dict[str, object], threads: int, constraints: dict[str, object], num_cfs: int,
    revert: bool = True,
) -> None:
    global _worker
    _worker = Explainer.from_bundle(
        bundle, threads=threads, constraints=constraints, num_cfs=num_cfs, revert=revert, **settings
    )


def _run(batch: pa.RecordBatch) -> tuple[np.ndarray | None, list[pa.Array], np.ndarray]:
    """In a worker: the result columns only (the parent holds the query's columns)."""
    assert _worker is not None
    summary = Summary()
    src, results = _worker._results(batch, summary)
    counts = np.array([summary.rows, summary.found, summary.already_target, summary.not_found, summary.invalid])
    return src, results, counts


def auto_workers(src: str | Path, batch_size: int) -> int:
    """One worker per available core, but no more than there are batches to share: a file of
    one batch is explained in-process, without the cost of starting workers."""
    try:
        rows = int(pq.read_metadata(src).num_rows)
    except (OSError, pa.ArrowInvalid):
        return 1  # the explain itself reports what is wrong with the file
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, -(-rows // max(batch_size, 1))))


def explain_parquet_parallel(
    ex: Explainer,
    src: str | Path,
    dst: str | Path,
    workers: int,
    batch_size: int | None = None,
    id_column: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Like ``Explainer.explain_parquet``, with ``workers`` processes. Same output, same order."""
    src, dst = Path(src), Path(dst)
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    batch_size = default_batch_size(ex.bundle.preprocessor.width) if batch_size is None else batch_size
    pf, total, schema, columns = ex._open_input(src, batch_size, id_column)
    features = ex.bundle.preprocessor.names
    settings: dict[str, object] = ex.settings.to_dict()
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    summary = Summary(output=dst)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context(method), initializer=_init,
        initargs=(str(ex.bundle.path), settings, ex.threads, ex.constraints.to_dict(), ex.num_cfs, ex.revert),
    ) as pool, atomic_parquet_writer(dst, schema) as writer:
        pending: deque[tuple[pa.RecordBatch, Future[tuple[np.ndarray | None, list[pa.Array], np.ndarray]]]] = deque()
        pre = ex.bundle.preprocessor

        def drain_one() -> None:
            batch, future = pending.popleft()
            src, results, counts = future.result()
            writer.write_batch(output_batch(schema, pre, batch, id_column, src, results))
            summary.rows += int(counts[0])
            summary.found += int(counts[1])
            summary.already_target += int(counts[2])
            summary.not_found += int(counts[3])
            summary.invalid += int(counts[4])
            if progress:
                progress(summary.rows, total)

        for batch in read_batches(pf, src, batch_size, columns):
            pending.append((batch, pool.submit(_run, batch.select(features))))
            if len(pending) >= 2 * workers:
                drain_one()
        while pending:
            drain_one()
    summary.seconds = time.perf_counter() - t0
    return summary
