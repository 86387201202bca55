"""The output is never lost, overwritten or left half written, through the API as through the CLI.

- The input and the output are compared as files: the same path, a symlink, a hard link.
- An existing output is replaced only with --force / force=True, also when it appears during the
  run (exclusive publication, with renameat2 and with the hard-link fallback).
- Temporary files of runs that no longer run are recognised and removed; others are left alone.
- Every OS error around the output is one line naming the path and the cause: a missing folder,
  a folder given as output, permissions, a read-only file system.
- `--summary-json`: counts, validity, seconds, input and output, the bundle's id and checksum, the
  version; written atomically, also when the run fails.
- Workers are capped by the number of batches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import adult_queries, assert_clean_failure, invoke, tmpfs

from gmcf.runtime import Explainer, publish
from gmcf.runtime.bundle import sha256_file
from gmcf.runtime.errors import OutputError
from gmcf.runtime.parallel import count_batches, explain_parquet_parallel
from gmcf.runtime.run_summary import package_version


def explain(src: Path, dst: Path, bundle: Path, *args: str) -> tuple[int, str, str]:
    """``gmcf-batch explain SRC -o DST --bundle BUNDLE ARGS`` through typer's CliRunner."""
    return invoke("explain", str(src), "-o", str(dst), "--bundle", str(bundle), *args)


@pytest.fixture(scope="module")
def explainer(adult_bundle: Path) -> Explainer:
    return Explainer.from_bundle(adult_bundle)


@pytest.fixture
def query_file(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "queries.parquet"
    path.parent.mkdir()
    pq.write_table(adult_queries(300), path, row_group_size=100)
    return path


# -- input and output are one file ----------------------------------------------------------------
def _same_as_input(query_file: Path, how: str) -> Path:
    if how == "same path":
        return query_file
    if how == "another spelling":
        return query_file.parent / ".." / query_file.parent.name / query_file.name
    other = query_file.parent / "other.parquet"
    if how == "symlink":
        other.symlink_to(query_file)
    elif how == "symlinked folder":
        (query_file.parent.parent / "alias").symlink_to(query_file.parent)
        return query_file.parent.parent / "alias" / query_file.name
    else:
        os.link(query_file, other)
    return other


SAME = ["same path", "another spelling", "symlink", "symlinked folder", "hard link"]


@pytest.mark.parametrize("how", SAME)
def test_api_never_writes_over_its_input(how: str, explainer: Explainer, query_file: Path) -> None:
    before = query_file.read_bytes()
    dst = _same_as_input(query_file, how)
    for run in (
        lambda: explainer.explain_parquet(query_file, dst, force=True),
        lambda: explain_parquet_parallel(explainer, query_file, dst, 2, 100, force=True),
    ):
        with pytest.raises(OutputError, match="is the input file") as info:
            run()
        assert "\n" not in str(info.value)
    assert query_file.read_bytes() == before


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_cli_never_writes_over_its_input(how: str, query_file: Path, adult_bundle: Path) -> None:
    before = query_file.read_bytes()
    dst = _same_as_input(query_file, how)
    code, _stdout, stderr = invoke(
        "explain", str(query_file), "-o", str(dst), "--bundle", str(adult_bundle), "--force"
    )
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "is the input file" in stderr and "must differ" in stderr
    assert query_file.read_bytes() == before


# -- an existing output ---------------------------------------------------------------------------
def test_api_replaces_an_existing_output_only_with_force(
    explainer: Explainer, query_file: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out.parquet"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists; pass --force"):
        explainer.explain_parquet(query_file, dst)
    assert dst.read_bytes() == b"precious"
    explainer.explain_parquet(query_file, dst, force=True)
    assert pq.read_metadata(dst).num_rows == 300


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "hard link"])
def test_a_file_that_appears_during_the_run_is_kept(
    renameat2: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not renameat2:
        monkeypatch.setattr(publish, "_rename_noreplace", lambda src, dst: None)
    dst = tmp_path / "out.txt"
    with (
        pytest.raises(OutputError, match="appeared while this run was writing it") as info,
        publish.atomic_output(dst) as tmp,
    ):
        tmp.write_text("this run")
        dst.write_text("another run")
    assert "--force" in str(info.value)
    assert dst.read_text() == "another run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with publish.atomic_output(dst, force=True) as tmp:
        tmp.write_text("this run")
    assert dst.read_text() == "this run"
    with publish.atomic_output(tmp_path / "new.txt") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "new.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "out.txt"]


def test_a_failed_run_leaves_no_temporary_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), publish.atomic_output(dst) as tmp:
        tmp.write_text("half")
        raise RuntimeError("fails halfway")
    assert list(tmp_path.iterdir()) == []


# -- stale temporary files ------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_stale_temporary_files_are_recognised(tmp_path: Path) -> None:
    dst = tmp_path / "out.parquet"
    mine = publish.temp_path(dst)
    host, pid, start = mine.name[: -len(".tmp")].rsplit(".", 3)[1:]
    dead = _dead_pid()
    names = {
        "own": mine.name,  # this process: running
        "dead owner": f".out.parquet.gmcf.{host}.{dead}.{start}.tmp",
        # same pid, other start
        "reused pid": f".out.parquet.gmcf.{host}.{pid}.{int(start) + 1}.tmp",
        "other host": f".out.parquet.gmcf.elsewhere.{dead}.{start}.tmp",  # cannot be judged here
        "earlier version": f".out.parquet.{dead}.tmp",
        "other output": f".other.parquet.gmcf.{host}.{dead}.{start}.tmp",
        "not ours": ".out.parquet.notes.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    removed = publish.remove_stale_temps(dst)
    assert sorted(p.name for p in removed) == sorted(
        names[k] for k in ("dead owner", "reused pid", "earlier version")
    )
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(names[k] for k in ("own", "other host", "other output", "not ours"))


def test_a_long_output_name_gets_a_temporary_name_that_fits(tmp_path: Path) -> None:
    dst = tmp_path / ("x" * 240 + ".parquet")
    tmp = publish.temp_path(dst)
    assert len(tmp.name) < 255
    with publish.atomic_output(dst) as tmp:
        tmp.write_text("ok")
    assert dst.read_text() == "ok"


# -- OS errors around the output ------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_output_folder_is_one_line(
    workers: str, query_file: Path, adult_bundle: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "no" / "such" / "out.parquet"
    code, _stdout, stderr = explain(
        query_file, dst, adult_bundle, "--workers", workers, "--batch-size", "100"
    )
    lines = stderr.strip().splitlines()
    assert code == 1 and lines == [
        f"error: cannot write {dst}: the folder {dst.parent} does not exist"
    ], stderr
    assert not (tmp_path / "no").exists()


def test_api_a_missing_output_folder_is_one_line(
    explainer: Explainer, query_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        explainer.explain_parquet(query_file, tmp_path / "missing" / "out.parquet")


def test_an_output_that_is_a_folder_is_one_line(
    query_file: Path, adult_bundle: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "out.parquet"
    folder.mkdir()
    code, stdout, stderr = invoke(
        "explain", str(query_file), "-o", str(folder), "--bundle", str(adult_bundle), "--force"
    )
    assert_clean_failure(code, stdout, stderr, folder, str(folder), "is a folder")


@pytest.fixture
def read_only_folder() -> Iterator[Path]:
    """A read-only tmpfs (root only; skipped where it cannot be mounted)."""
    with tmpfs("ro,size=1m") as folder:
        yield folder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_read_only_file_system_is_one_line(
    workers: str, read_only_folder: Path, query_file: Path, adult_bundle: Path
) -> None:
    dst = read_only_folder / "out.parquet"
    code, stdout, stderr = explain(
        query_file, dst, adult_bundle, "--workers", workers, "--batch-size", "100"
    )
    assert_clean_failure(
        code, stdout, stderr, read_only_folder, f"cannot write {dst}: read-only file system"
    )


def _drop_dac_override() -> None:
    """In the child, before exec: root without CAP_DAC_OVERRIDE obeys file permissions."""
    import ctypes

    pr_capbset_drop, cap_dac_override = 24, 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap_dac_override, 0, 0, 0) != 0:
        os._exit(97)


def test_a_folder_without_write_permission_is_one_line(
    query_file: Path, adult_bundle: Path
) -> None:
    """As an ordinary user; root is not stopped by permissions, so as root the run is done
    without the capability that lets it ignore them."""
    base = Path(tempfile.mkdtemp(prefix="gmcf-perm-"))
    try:
        shutil.copy(query_file, base / "queries.parquet")
        locked = base / "locked"
        locked.mkdir()
        base.chmod(0o755)
        (base / "queries.parquet").chmod(0o644)
        locked.chmod(0o555)
        dst = locked / "out.parquet"
        cmd = [
            sys.executable,
            "-m",
            "gmcf.cli.main",
            "explain",
            str(base / "queries.parquet"),
            "-o",
            str(dst),
            "--bundle",
            str(adult_bundle),
        ]
        drop = _drop_dac_override if os.geteuid() == 0 else None
        if drop is not None:
            probe = subprocess.run(["true"], preexec_fn=drop)
            if probe.returncode != 0:
                pytest.skip("running as root, and cannot drop CAP_DAC_OVERRIDE to obey permissions")
        done = subprocess.run(cmd, preexec_fn=drop, capture_output=True, text=True, cwd=base)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert (
            lines[0]
            == f"error: cannot write {dst}: permission denied (cannot create files in {locked})"
        )
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_output_errors_name_the_cause() -> None:
    import errno

    dst = Path(tempfile.gettempdir()) / "out.parquet"
    assert publish.os_cause(OSError(errno.ENOSPC, "x")) == "no space left on device"
    # pyarrow's I/O errors carry the errno in their text only
    assert (
        publish.os_cause(
            OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
        )
        == "no space left on device"
    )
    assert (
        str(publish.output_error(OSError(errno.EROFS, "x"), dst))
        == f"cannot write {dst}: read-only file system"
    )
    assert (
        str(publish.output_error(OSError(errno.EDQUOT, "x"), dst))
        == f"cannot write {dst}: disk quota exceeded"
    )


# -- the run's summary ----------------------------------------------------------------------------
def test_summary_json_says_what_ran_and_how_it_ended(
    query_file: Path, adult_bundle: Path, tmp_path: Path
) -> None:
    dst, summary = tmp_path / "out.parquet", tmp_path / "reports" / "run.json"
    summary.parent.mkdir()
    code, stdout, stderr = explain(
        query_file,
        dst,
        adult_bundle,
        "--id-column",
        "id",
        "--workers",
        "2",
        "--batch-size",
        "100",
        "--summary-json",
        str(summary),
    )
    assert code == 0, stderr
    assert f"wrote {dst}" in stdout
    record = json.loads(summary.read_text())
    status = pq.read_table(dst, columns=["status"]).column("status").to_pylist()
    assert record["status"] == "ok" and record["exit_code"] == 0 and record["error"] is None
    assert record["output_written"] is True
    assert record["rows"] == len(status) == 300
    for name in ("found", "already_target", "not_found", "invalid"):
        assert record[name] == status.count(name), name
    assert record["searched"] == record["found"] + record["not_found"]
    assert record["validity"] == pytest.approx(record["found"] / record["searched"])
    assert record["seconds"] > 0 and record["wall_seconds"] >= record["seconds"]
    assert record["input"] == str(query_file.resolve()) and record["output"] == str(dst.resolve())
    manifest = json.loads((adult_bundle / "manifest.json").read_text())
    assert record["bundle"]["checksum"] == "sha256:" + sha256_file(adult_bundle / "manifest.json")
    assert record["bundle"]["id"] == f"adult@{manifest['created']}"
    assert record["version"] == package_version()
    assert record["settings"]["workers"] == 2 and record["settings"]["range_margin"] == 0.05
    assert sorted(p.name for p in summary.parent.iterdir()) == [
        "run.json"
    ]  # no temporary file left

    # a failed run says so, and replaces the previous summary
    code, _stdout, stderr = explain(query_file, dst, adult_bundle, "--summary-json", str(summary))
    assert code == 1
    record = json.loads(summary.read_text())
    assert record["status"] == "error" and record["exit_code"] == 1 and "exists" in record["error"]
    assert record["output_written"] is False and "rows" not in record


def test_summary_json_is_never_the_input_or_the_output(
    query_file: Path, adult_bundle: Path, tmp_path: Path
) -> None:
    before = query_file.read_bytes()
    for target, words in (
        (query_file, "is the input file"),
        (tmp_path / "out.parquet", "is the output file"),
    ):
        code, _stdout, stderr = explain(
            query_file, tmp_path / "out.parquet", adult_bundle, "--summary-json", str(target)
        )
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1, stderr
        assert lines[0].startswith(f"error: summary {target} ") and words in lines[0], lines
    assert query_file.read_bytes() == before
    assert not (tmp_path / "out.parquet").exists()


# -- workers --------------------------------------------------------------------------------------
def test_workers_are_capped_by_the_number_of_batches(
    explainer: Explainer,
    query_file: Path,
    tmp_path: Path,
    adult_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # three row groups of 100 rows: 3 batches of 100, 6 of 50, 1 of 1,000 per group (3)
    assert [count_batches(query_file, b) for b in (100, 50, 1000)] == [3, 6, 3]
    import gmcf.runtime.parallel as parallel

    started: list[int] = []

    class Recording(parallel.ProcessPoolExecutor):
        def __init__(self, workers: int, *args: object, **kwargs: object) -> None:
            started.append(workers)
            super().__init__(workers, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", Recording)
    explain_parquet_parallel(explainer, query_file, tmp_path / "a.parquet", 100, batch_size=100)
    assert started == [3]
    explain_parquet_parallel(explainer, query_file, tmp_path / "b.parquet", 100, batch_size=1000)
    assert started == [3, 3]
    one = tmp_path / "one.parquet"
    pq.write_table(adult_queries(50), one)
    explain_parquet_parallel(explainer, one, tmp_path / "c.parquet", 100)
    assert started == [3, 3]  # one batch: in-process, no pool at all
    summary = tmp_path / "run.json"
    code, _, stderr = explain(
        one,
        tmp_path / "d.parquet",
        adult_bundle,
        "--workers",
        "100",
        "--summary-json",
        str(summary),
    )
    assert code == 0, stderr
    assert json.loads(summary.read_text())["settings"]["workers"] == 1
    assert started == [3, 3]
