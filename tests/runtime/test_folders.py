"""Folders of Parquet parts in and out: one output part per input part, atomic publication,
``--resume`` after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import adult_queries, invoke

from gmcf.runtime import Explainer
from gmcf.runtime.folders import JOB_FILE, SUCCESS, list_parts, staging_path

#: Spark's part files, hive-style partitions, and what Spark and Hadoop leave beside them.
LAYOUT = {
    "year=2024/part-00000-5e1f-c000.snappy.parquet": (0, 700),
    "year=2024/part-00001-5e1f-c000.snappy.parquet": (700, 300),
    "year=2025/part-00000-5e1f-c000.snappy.parquet": (1000, 1000),
    "year=2025/part-00001-5e1f-c000.snappy.parquet": (2000, 0),
    "part-00000-loose.parquet": (2000, 500),
}


def make_folder(root: Path, table: pa.Table, layout: dict[str, tuple[int, int]]) -> Path:
    for rel, (start, n) in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(start, n), path)
    (root / "_SUCCESS").touch()
    (root / ".part-00000-5e1f-c000.snappy.parquet.crc").write_bytes(b"crc")
    (root / "_temporary").mkdir()
    (root / "_temporary" / "part-9.parquet").write_bytes(b"half written by a dead task")
    return root


def test_folder_in_folder_out(adult_bundle: Path, tmp_path: Path) -> None:
    table = adult_queries(2500, seed=5)
    src = make_folder(tmp_path / "in", table, LAYOUT)
    assert [p.rel for p in list_parts(src)] == sorted(LAYOUT)
    code, stdout, stderr = invoke("explain", str(src), "--id-column", "id", "--workers", "2")
    assert code == 0, stderr
    dst = tmp_path / "in.explained"
    assert "2,500 rows" in stdout and "5 parts: 5 explained, 0 kept" in stdout
    written = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.parquet"))
    assert written == sorted(LAYOUT)
    assert (dst / SUCCESS).exists() and (dst / JOB_FILE).exists()
    assert not staging_path(dst).exists()
    assert not [p for p in dst.rglob(".*") if p.is_file()]  # no temporary or lock file left
    ex = Explainer.from_bundle(adult_bundle)
    for rel in LAYOUT:
        got = pq.read_table(dst / rel)
        want = ex.explain(pq.read_table(src / rel), id_column="id")
        assert got.equals(want), rel
    # Read back as a dataset, the partition keys come from the folder names, as they went in.
    import pyarrow.dataset as ds

    back = ds.dataset(dst, format="parquet", partitioning="hive").to_table()
    assert back.num_rows == 2500
    assert sorted(back.column("id").to_pylist()) == sorted(table.column("id").to_pylist())
    # one worker, parts one after another: the same bytes
    code, _, stderr = invoke(
        "explain", str(src), "-o", str(tmp_path / "one"), "--id-column", "id", "--workers", "1"
    )
    assert code == 0, stderr
    for rel in LAYOUT:
        assert pq.read_table(tmp_path / "one" / rel).equals(pq.read_table(dst / rel))


def test_folder_refusals_are_one_line(tmp_path: Path) -> None:
    table = adult_queries(300)
    src = make_folder(tmp_path / "in", table, {"part-0.parquet": (0, 300)})
    (tmp_path / "empty").mkdir()
    code, _, stderr = invoke("explain", str(tmp_path / "empty"))
    assert (
        code == 1
        and stderr.strip()
        == f"error: input folder {tmp_path / 'empty'} has no Parquet files (*.parquet)"
    )
    bad = make_folder(
        tmp_path / "bad", table.drop_columns(["education"]), {"a/part-0.parquet": (0, 10)}
    )
    code, _, stderr = invoke("explain", str(bad), "-o", str(tmp_path / "bad-out"))
    assert code == 1 and "part-0.parquet" in stderr and "'education'" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad-out").exists() and not staging_path(tmp_path / "bad-out").exists()
    code, _, stderr = invoke(
        "explain", str(src), "--resume", "-o", str(tmp_path / "x"), "--id-column", "nope"
    )
    assert code == 1 and "id column 'nope'" in stderr
    code, _, stderr = invoke("explain", str(src / "part-0.parquet"), "--resume")
    assert code == 1 and "--resume needs a folder" in stderr
    assert invoke("explain", str(src))[0] == 0
    code, _, stderr = invoke("explain", str(src))
    assert code == 1 and "exists; pass --force" in stderr
    code, stdout, _ = invoke("explain", str(src), "--resume")  # already complete: nothing to do
    assert code == 0 and "1 parts: 0 explained, 1 kept" in stdout


def test_a_bad_part_stops_the_run_and_keeps_the_parts_done(tmp_path: Path) -> None:
    table = adult_queries(900, seed=9)
    src = make_folder(
        tmp_path / "in",
        table,
        {"a.parquet": (0, 300), "b.parquet": (300, 300), "c.parquet": (600, 300)},
    )
    data = bytearray((src / "b.parquet").read_bytes())
    data[8:1500] = b"\xab" * 1492  # damaged pages, intact footer: found only when read
    (src / "b.parquet").write_bytes(bytes(data))
    dst = tmp_path / "out"
    code, _, stderr = invoke("explain", str(src), "-o", str(dst), "--workers", "1")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "b.parquet: cannot read the Parquet data" in stderr and "--resume continues" in stderr
    assert not dst.exists()
    assert sorted(p.name for p in staging_path(dst).glob("*.parquet")) == ["a.parquet"]


def _run(args: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gmcf.cli.main", "explain", *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_then_resume_gives_the_clean_run(tmp_path: Path) -> None:
    table = adult_queries(24000, seed=6)
    layout = {
        f"day={d:02d}/part-{i:05d}.parquet": ((2 * d + i) * 2000, 2000)
        for d in range(6)
        for i in range(2)
    }
    src = make_folder(tmp_path / "in", table, layout)
    args = ["--id-column", "id", "--workers", "1", "--batch-size", "500"]
    clean, dst = tmp_path / "clean", tmp_path / "out"
    assert invoke("explain", str(src), "-o", str(clean), *args)[0] == 0
    stage = staging_path(dst)

    proc = _run([str(src), "-o", str(dst), *args])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if stage.exists() and len(list(stage.rglob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists()  # nothing published
    kept = {p.relative_to(stage).as_posix(): p.stat() for p in stage.rglob("part-*.parquet")}
    assert 3 <= len(kept) < len(layout)

    code, _, stderr = invoke(
        "explain", str(src), "-o", str(dst), *args
    )  # neither --resume nor --force
    assert code == 1 and "pass --resume" in stderr
    code, _, stderr = invoke("explain", str(src), "-o", str(dst), *args, "--resume", "--tol", "0.2")
    assert code == 1 and "different run (settings differ)" in stderr

    code, stdout, stderr = invoke("explain", str(src), "-o", str(dst), *args, "--resume")
    assert code == 0, stderr
    assert f"{len(kept)} kept from an earlier run ({2000 * len(kept):,} rows)" in stdout
    assert f"{24000 - 2000 * len(kept):,} rows in" in stdout
    assert not stage.exists() and (dst / SUCCESS).exists()
    for rel, st in kept.items():  # the parts done before the kill were not written again
        now = (dst / rel).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    for rel in layout:
        assert pq.read_table(dst / rel).equals(pq.read_table(clean / rel)), rel
    assert not [p for p in dst.rglob(".*") if p.is_file()]


def test_force_replaces_a_finished_folder_and_starts_over(tmp_path: Path) -> None:
    table = adult_queries(600, seed=7)
    src = make_folder(tmp_path / "in", table, {"a.parquet": (0, 300), "b.parquet": (300, 300)})
    dst = tmp_path / "out"
    assert invoke("explain", str(src), "-o", str(dst))[0] == 0
    (dst / "stale.parquet").write_bytes(b"old")
    stage = staging_path(dst)
    stage.mkdir()
    (stage / "b.parquet").write_bytes(b"not a parquet file")  # damaged: explained again
    code, stdout, stderr = invoke("explain", str(src), "-o", str(dst), "--force")
    assert code == 0, stderr
    assert sorted(p.name for p in dst.iterdir()) == [
        "_SUCCESS",
        "_gmcf_job.json",
        "a.parquet",
        "b.parquet",
    ]
    assert "2 parts: 2 explained" in stdout
    assert not stage.exists()


def test_engine_modules_import_no_engine_and_no_pandas(adult_bundle: Path, tmp_path: Path) -> None:
    """The engines' modules import pyspark, ray and pandas only when used; a folder is
    explained with pandas blocked."""
    src = make_folder(tmp_path / "in", adult_queries(200), {"p=1/a.parquet": (0, 200)})
    code = (
        "import sys; sys.modules['pandas'] = None; "
        "import gmcf.runtime.spark, gmcf.runtime.ray, gmcf.runtime.folders, gmcf.runtime.frames; "
        "assert not {'pyspark', 'ray'} & {m.split('.')[0] for m in sys.modules}; "
        "from gmcf.cli.main import app; "
        f'app(["explain", {str(src)!r}, "--bundle", {str(adult_bundle)!r}], standalone_mode=False)'
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "in.explained" / "p=1" / "a.parquet").exists()


def test_fewer_parts_than_workers_share_each_part(tmp_path: Path) -> None:
    """One large part and two workers: the part's batches go to both workers, same output."""
    src = make_folder(
        tmp_path / "in", adult_queries(3000, seed=10), {"only/part-0.parquet": (0, 3000)}
    )
    args = ["--id-column", "id", "--batch-size", "700"]
    assert invoke("explain", str(src), "-o", str(tmp_path / "two"), "--workers", "2", *args)[0] == 0
    assert invoke("explain", str(src), "-o", str(tmp_path / "one"), "--workers", "1", *args)[0] == 0
    rel = "only/part-0.parquet"
    assert pq.read_table(tmp_path / "two" / rel).equals(pq.read_table(tmp_path / "one" / rel))
    code, _, stderr = invoke("explain", str(src), "-o", str(src / "inside"))
    assert code == 1 and "outside the input folder" in stderr
