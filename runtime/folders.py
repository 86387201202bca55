"""A folder of Parquet parts in, a folder with one explained part per input part out.

**Input.** Every ``*.parquet`` (or ``*.parq``) file under the folder, in sorted order of its path
relative to the folder: Spark's ``part-*.parquet`` files, files in hive-style partition folders
(``year=2024/month=01/...``) or any mix. Names that start with ``_`` or ``.`` (``_SUCCESS``,
``_committed_*``, ``.crc`` files, ``_temporary/``) are skipped, as Spark and Hadoop skip them.
Each part must have the feature columns itself: partition keys live in folder names, and an
output part keeps them the same way, at the same relative path.

**Publication.** Parts are written into a staging folder beside the output,
``.<name>.partial/``; each part is written to a hidden temporary file there and renamed to its
final name only when complete, so a part that exists under its final name is complete. When every
part is done, ``_SUCCESS`` and ``_gmcf_job.json`` (what was run: bundle checksums, settings, the
input parts) are written and the staging folder is renamed to the output folder: the output
folder appears at once, complete, or not at all. With ``force`` an existing output folder is
moved aside first and removed after the rename.

**Resume.** A run that dies (killed, out of memory, a node lost) leaves its staging folder. The
next run with ``resume`` checks that the job is the same (bundle, settings, id column and the
input parts, by path, size and row count; otherwise it stops and says what differs), removes
the dead run's temporary files, keeps every complete part and explains only the others. Only one
run at a time can own a staging folder (an exclusive lock on ``.lock`` in it, released by the
operating system when the owner dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime.errors import GmcfError, InputError
from gmcf.runtime.explainer import Explainer, Summary
from gmcf.runtime.read import check_input
from gmcf.runtime.settings import batch_size_for
from gmcf.runtime.write import atomic_parquet_writer

SUFFIXES = (".parquet", ".parq")
JOB_FILE = "_gmcf_job.json"
SUCCESS = "_SUCCESS"
LOCK = ".lock"


@dataclass(frozen=True)
class Part:
    """One input part: its path relative to the input folder, size in bytes and rows."""

    rel: str
    size: int
    rows: int


@dataclass
class FolderSummary(Summary):
    """The counts of a folder run, and how many parts were explained or kept from an earlier run."""

    parts: int = 0
    skipped: int = 0
    skipped_rows: int = 0
    parts_done: list[str] = field(default_factory=list)


def cores() -> int:
    """Cores this process may run on."""
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def list_parts(folder: Path) -> list[Part]:
    """The input parts of ``folder`` (see the module's note), or an InputError."""
    if not folder.exists():
        raise InputError(f"input folder {folder} does not exist")
    parts = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if _hidden(name) or not name.endswith(SUFFIXES):
                continue
            path = Path(root) / name
            try:
                rows = pq.read_metadata(path).num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(
                    f"{path} is not a Parquet file ({str(exc).splitlines()[0]})"
                ) from exc
            parts.append(Part(path.relative_to(folder).as_posix(), path.stat().st_size, rows))
    if not parts:
        raise InputError(f"input folder {folder} has no Parquet files (*.parquet)")
    if not any(p.rows for p in parts):
        raise InputError(f"input folder {folder}: its Parquet files have no rows")
    parts.sort(key=lambda p: p.rel)
    return parts


def staging_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.partial")


def job_record(ex: Explainer, parts: list[Part], id_column: str | None) -> dict[str, Any]:
    """What a run is: equal records mean that a resumed run writes what the first would have."""
    record = {
        "bundle_files": dict(ex.bundle.manifest.files),
        "settings": ex.settings.to_dict(),
        "constraints": ex.constraints.to_dict(),
        "num_cfs": ex.num_cfs,
        "id_column": id_column,
        "parts": [p.__dict__ for p in parts],
    }
    return dict(json.loads(json.dumps(record, sort_keys=True, default=str)))  # as read back


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    names = {"bundle_files": "the bundle", "parts": "the input parts"}
    return [names.get(k, k) for k in new if old.get(k) != new[k]]


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another run is writing {folder}") from None
        yield
    finally:
        os.close(fd)


def _complete(path: Path) -> bool:
    """A part under its final name is complete (it was renamed there after its last byte); the
    footer is read all the same, so a file damaged since is explained again."""
    try:
        pq.read_metadata(path)
        return True
    except (pa.ArrowInvalid, OSError):
        return False


def _explain_part(
    ex: Explainer, src: Path, dst: Path, workers: int, batch_size: int, id_column: str | None
) -> Summary:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        from gmcf.runtime.parallel import explain_parquet_parallel

        return explain_parquet_parallel(ex, src, dst, workers, batch_size, id_column)
    return ex.explain_parquet(src, dst, batch_size=batch_size, id_column=id_column)


_pool_explainer: Explainer | None = None


def _pool_init(ex: Explainer) -> None:
    global _pool_explainer
    _pool_explainer = ex  # unpickled once per worker; its sessions open on first use


def _pool_part(src: Path, dst: Path, batch_size: int, id_column: str | None) -> Summary:
    assert _pool_explainer is not None
    return _explain_part(_pool_explainer, src, dst, 1, batch_size, id_column)


def explain_folder(
    ex: Explainer,
    src: str | Path,
    dst: str | Path,
    *,
    workers: int = 1,
    batch_size: int | None = None,
    id_column: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> FolderSummary:
    """Explain every part of the folder ``src`` into the folder ``dst`` (see the module's note).

    ``workers`` processes: when there are at least as many parts left as workers, each worker
    explains whole parts; otherwise the parts are explained one after another, each by all the
    workers. ``progress(done, total)`` counts rows, those of kept parts included."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise InputError(f"input {src} is not a folder")
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise InputError("the output folder must be outside the input folder")
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    batch_size = batch_size_for(batch_size, ex.bundle.preprocessor.width)
    parts = list_parts(src)
    for p in parts:  # a missing or mistyped column stops the run before any part is explained
        try:
            check_input(ex.bundle.preprocessor, pq.read_schema(src / p.rel), id_column)
        except InputError as exc:
            raise InputError(f"{src / p.rel}: {exc}") from None
    record = job_record(ex, parts, id_column)
    stage = staging_path(dst)
    if dst.exists() and not force:
        if resume and (dst / SUCCESS).exists() and _read_job(dst) == record:
            return FolderSummary(
                output=dst,
                parts=len(parts),
                skipped=len(parts),
                skipped_rows=sum(p.rows for p in parts),
            )
        raise InputError(f"output {dst} exists; pass --force to overwrite it")
    if stage.exists() and not (resume or force):
        raise InputError(
            f"an unfinished run left {stage}; pass --resume to continue it or --force to start "
            "again"
        )
    stage.mkdir(parents=True, exist_ok=True)
    with _locked(stage):
        if force and not resume:
            _clear(stage)
        old = _read_job(stage)
        if old is not None and old != record:
            raise InputError(
                f"{stage} was left by a different run ({', '.join(_differences(old, record))} "
                "differ); pass --force to start again"
            )
        for tmp in stage.rglob(".*.tmp"):  # a dead run's unfinished parts
            tmp.unlink()
        _write_json(stage / JOB_FILE, record)
        try:
            summary = _run_parts(ex, src, stage, parts, workers, batch_size, id_column, progress)
        except GmcfError as exc:
            raise type(exc)(
                f"{exc}; the parts done are kept in {stage}: --resume continues"
            ) from exc
        (stage / SUCCESS).touch()
        _publish(stage, dst, force)
    summary.output = dst
    return summary


def _run_parts(
    ex: Explainer,
    src: Path,
    stage: Path,
    parts: list[Part],
    workers: int,
    batch_size: int,
    id_column: str | None,
    progress: Callable[[int, int], None] | None,
) -> FolderSummary:
    summary = FolderSummary(parts=len(parts))
    total = sum(p.rows for p in parts)
    todo = []
    for p in parts:
        if (stage / p.rel).exists() and _complete(stage / p.rel):
            summary.skipped += 1
            summary.skipped_rows += p.rows
        else:
            todo.append(p)
    done = summary.skipped_rows
    t0 = time.perf_counter()

    def add(p: Part, s: Summary) -> None:
        nonlocal done
        for name in ("rows", "found", "already_target", "not_found", "invalid"):
            setattr(summary, name, getattr(summary, name) + getattr(s, name))
        summary.parts_done.append(p.rel)
        done += p.rows
        if progress:
            progress(done, total)

    if progress:
        progress(done, total)
    for p in [p for p in todo if not p.rows]:  # no rows: an empty part with the output's columns
        add(p, _empty_part(ex, src / p.rel, stage / p.rel, id_column))
    todo = [p for p in todo if p.rows]
    if workers > 1 and len(todo) >= workers:
        import multiprocessing as mp

        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with ProcessPoolExecutor(
            workers, mp_context=mp.get_context(method), initializer=_pool_init, initargs=(ex,)
        ) as pool:
            futures = [
                (p, pool.submit(_pool_part, src / p.rel, stage / p.rel, batch_size, id_column))
                for p in todo
            ]
            for p, future in futures:
                add(p, future.result())
    else:
        for p in todo:
            add(p, _explain_part(ex, src / p.rel, stage / p.rel, workers, batch_size, id_column))
    summary.seconds = time.perf_counter() - t0
    return summary


def _empty_part(ex: Explainer, src: Path, dst: Path, id_column: str | None) -> Summary:
    """A part with no rows gets an output part with no rows (and the output's columns)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    schema = ex.output_schema(pq.read_schema(src), id_column)
    with atomic_parquet_writer(dst, schema):
        pass
    return Summary()


def _clear(stage: Path) -> None:
    for child in stage.iterdir():
        if child.name == LOCK:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _read_job(folder: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((folder / JOB_FILE).read_text()))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _publish(stage: Path, dst: Path, force: bool) -> None:
    """Rename the complete staging folder to ``dst`` (moving an existing ``dst`` aside first
    when forced, and removing it after)."""
    (stage / LOCK).unlink(missing_ok=True)
    aside = None
    if dst.exists():
        if not force:  # appeared while this run worked
            raise InputError(f"output {dst} appeared during the run; its parts are kept in {stage}")
        aside = dst.with_name(f".{dst.name}.replaced.{os.getpid()}")
        os.replace(dst, aside)
    os.replace(stage, dst)
    if aside is not None:
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
