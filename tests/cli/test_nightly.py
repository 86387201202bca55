"""A nightly job's run, as a scheduler sees it: `gmcf-batch explain` in a subprocess on a file of
millions of rows with two workers, stopped by signals, killed, run twice at once, or out of disk.

- SIGTERM, SIGINT, SIGHUP: one line, exit 143, 130, 129; no worker alive within 10 s; no output,
  no temporary file.
- kill -9 of the parent: no worker alive within 10 s; the temporary file it leaves is removed by
  the next run to the same output.
- Two runs to one output path without --force: never both succeed; the output is one whole file.
- A full disk (a small tmpfs): one line naming the cause, no output and no temporary file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import adult_queries, tmpfs

#: Subprocess runs on millions of rows: a few seconds each.
pytestmark = pytest.mark.slow

BIG_ROWS = 2_000_000
WORKERS_GONE_WITHIN = 10.0


# -- files ----------------------------------------------------------------------------------------
def repeated(rows: pa.Table, n: int) -> pa.Table:
    """``rows`` repeated up to ``n`` rows, with a fresh id 0..n-1: fast to make, real values."""
    reps = -(-n // rows.num_rows)
    table = pa.concat_tables([rows] * reps).slice(0, n).combine_chunks()
    return table.set_column(
        table.schema.get_field_index("id"), "id", pa.array(np.arange(n, dtype=np.int64))
    )


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two million real Adult rows (10,000 distinct ones repeated), in about a second."""
    path = tmp_path_factory.mktemp("big") / "queries.parquet"
    pq.write_table(repeated(adult_queries(10_000), BIG_ROWS), path)
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "queries.parquet"
    pq.write_table(adult_queries(2_000, seed=3), path)
    return path


# -- processes ------------------------------------------------------------------------------------
def explain_cmd(src: Path, dst: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gmcf.cli.main",
        "explain",
        str(src),
        "-o",
        str(dst),
        "--id-column",
        "id",
        *args,
    ]


def start(cmd: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "GMCF_PROGRESS"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, is not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == str(pid) and stat[0] != "Z":
                found.append(int(entry))
    return found


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def wait_until_writing(
    proc: subprocess.Popen[str], folder: Path, workers: int, timeout: float = 90.0
) -> list[int]:
    """Wait until the run has its workers and has written into its temporary file; its workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        kids = children(proc.pid)
        if len(kids) >= workers and any(t.stat().st_size > 0 for t in temps(folder)):
            return kids
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the run did not start writing within {timeout} s")


def wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the workers"
)


# -- signals --------------------------------------------------------------------------------------
@needs_proc
@pytest.mark.parametrize(
    ("sig", "code", "workers"),
    [
        (signal.SIGTERM, 143, 2),
        (signal.SIGINT, 130, 2),
        (signal.SIGHUP, 129, 2),
        (signal.SIGTERM, 143, 1),
    ],
)
def test_a_signal_stops_the_run_cleanly(
    big_file: Path, tmp_path: Path, sig: signal.Signals, code: int, workers: int
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    summary = tmp_path / "summary.json"
    proc = start(
        explain_cmd(
            big_file,
            out_dir / "explained.parquet",
            "--workers",
            str(workers),
            "--summary-json",
            str(summary),
        )
    )
    pids = wait_until_writing(proc, out_dir, workers if workers > 1 else 0)
    sent = time.monotonic()
    proc.send_signal(sig)
    rc, stdout, stderr = finish(proc, timeout=WORKERS_GONE_WITHIN)
    assert wait_gone(pids, WORKERS_GONE_WITHIN - (time.monotonic() - sent)) == []
    assert rc == code
    lines = stderr.strip().splitlines()
    assert lines == [f"error: stopped by {sig.name}; no output written"], stderr
    assert stdout == ""
    assert list(out_dir.iterdir()) == []  # no output, no temporary file
    record = json.loads(summary.read_text())
    assert (record["status"], record["exit_code"], record["output_written"]) == (
        "stopped",
        code,
        False,
    )


@needs_proc
def test_kill_9_takes_the_workers_along_and_the_next_run_removes_the_stale_temp(
    big_file: Path, small_file: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "explained.parquet"
    proc = start(explain_cmd(big_file, dst, "--workers", "2"))
    workers = wait_until_writing(proc, tmp_path, 2)
    proc.kill()
    finish(proc, timeout=5)
    assert wait_gone(workers, WORKERS_GONE_WITHIN) == []
    left = temps(tmp_path)
    assert len(left) == 1 and left[0].name.startswith(".explained.parquet.")  # what kill -9 leaves
    assert not dst.exists()

    rc, _stdout, stderr = finish(start(explain_cmd(small_file, dst)))
    assert rc == 0, stderr
    assert f"removed {left[0]}" in stderr
    assert temps(tmp_path) == []
    assert pq.read_metadata(dst).num_rows == 2_000


# -- two runs, one output -------------------------------------------------------------------------
def test_two_runs_to_one_path_never_both_succeed(tmp_path: Path) -> None:
    src = tmp_path / "queries.parquet"
    pq.write_table(repeated(adult_queries(5_000, seed=5), 200_000), src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / "explained.parquet"
    cmd = explain_cmd(src, dst, "--workers", "1", "--batch-size", "8192")
    procs = [start(cmd), start(cmd)]
    both_writing = False  # both past the check at the start: the race is decided at publication
    deadline = time.monotonic() + 60
    while not both_writing and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        both_writing = len(temps(out_dir)) == 2
        time.sleep(0.01)
    results = [finish(p, timeout=120) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    line = loser[2].strip().splitlines()
    assert len(line) == 1 and str(dst) in line[0], loser
    assert both_writing, "the two runs did not overlap; the test needs a larger file"
    assert "appeared while this run was writing it" in line[0] and "--force" in line[0], line
    assert temps(out_dir) == []
    out = pq.read_table(dst, columns=["id"])
    assert out.column("id").to_pylist() == list(range(200_000))


# -- a full disk ----------------------------------------------------------------------------------
@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for the test (root only)."""
    with tmpfs("size=1m") as folder:
        yield folder


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    src = tmp_path / "queries.parquet"
    pq.write_table(repeated(adult_queries(5_000, seed=7), 60_000), src)  # about 2 MB of output
    dst = small_disk / "explained.parquet"
    for workers in ("1", "2"):
        rc, _stdout, stderr = finish(
            start(explain_cmd(src, dst, "--workers", workers, "--batch-size", "8192"))
        )
        lines = stderr.strip().splitlines()
        assert rc == 1, stderr
        assert len(lines) == 1 and "Traceback" not in stderr, stderr
        assert lines[0] == f"error: cannot write {dst}: no space left on device", lines
        assert list(small_disk.iterdir()) == []
