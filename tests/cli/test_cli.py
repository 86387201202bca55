"""`gmcf-batch` commands through typer's CliRunner: sample, explain, inspect."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import invoke

from gmcf.runtime import load_bundle
from gmcf.runtime.bundle import FORMAT_VERSION
from gmcf.runtime.parallel import auto_workers
from gmcf.runtime.search import STATUSES
from gmcf.runtime.settings import RunSettings

FEATURES = ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week", "education"]


def one_line_error(code: int, stderr: str, *words: str) -> None:
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "queries.parquet"
    code, _, stderr = invoke("sample", str(path), "--rows", "300")
    assert code == 0, stderr
    return path


# -- sample ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 257])
def test_sample_writes_the_requested_rows(tmp_path: Path, rows: int) -> None:
    path = tmp_path / "q.parquet"
    code, stdout, stderr = invoke("sample", str(path), "--rows", str(rows), "--seed", "3")
    assert code == 0, stderr
    table = pq.read_table(path)
    assert table.num_rows == rows
    assert table.column_names == [*FEATURES, "id"]  # no label
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == rows
    assert table.column("age").null_count == 0
    assert f"wrote {rows:,} adult rows to {path}" in stdout


def test_sample_is_seeded(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    for path, seed in ((a, "1"), (b, "1"), (c, "2")):
        assert invoke("sample", str(path), "--rows", "50", "--seed", seed)[0] == 0
    assert pq.read_table(a).equals(pq.read_table(b))
    assert not pq.read_table(a).equals(pq.read_table(c))


def test_sample_rejects_bad_arguments(tmp_path: Path) -> None:
    code, _, stderr = invoke("sample", str(tmp_path / "q.parquet"), "--rows", "0")
    one_line_error(code, stderr, "rows")
    code, _, stderr = invoke("sample", str(tmp_path / "q.parquet"), "--dataset", "mnist")
    one_line_error(code, stderr, "mnist")
    assert list(tmp_path.iterdir()) == []


# -- explain --------------------------------------------------------------------------------------
def test_explain_happy_path(sample_file: Path, adult_bundle: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.parquet"
    code, stdout, stderr = invoke(
        "explain",
        str(sample_file),
        "-o",
        str(dst),
        "--bundle",
        str(adult_bundle),
        "--id-column",
        "id",
    )
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    summary = next(line for line in lines if "rows in" in line)
    assert summary.startswith("300 rows in ")
    assert "found" in summary and "already target" in summary and "invalid" in summary
    assert re.search(r"validity \d+\.\d% of [\d,]+ searched$", summary), summary
    assert lines[-1] == f"wrote {dst}"
    out = pq.read_table(dst)
    assert out.num_rows == 300
    assert out.column("id").to_pylist() == pq.read_table(sample_file).column("id").to_pylist()
    assert set(out.column("status").to_pylist()) <= set(STATUSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_explain_default_output_and_bundle(
    sample_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adult_bundle: Path
) -> None:
    monkeypatch.setenv("GMCF_BUNDLE", str(adult_bundle))
    src = tmp_path / "mine.parquet"
    src.write_bytes(sample_file.read_bytes())
    code, _, stderr = invoke(
        "explain", str(src), "--threshold", "0.6", "--no-refine", "--steps", "8"
    )
    assert code == 0, stderr
    dst = tmp_path / "mine.explained.parquet"
    assert dst.exists()
    out = pq.read_table(dst)
    assert out.num_rows == 300
    assert "id" not in out.column_names  # passed through only when asked
    found = [
        s
        for s, st in zip(
            out.column("cf_score").to_pylist(), out.column("status").to_pylist(), strict=True
        )
        if st == "found"
    ]
    assert all(s >= 0.6 for s in found)
    assert set(out.column("search").drop_null().to_pylist()) <= {"grid", "extrapolated", "anchored"}


def test_explain_with_workers_matches_one_process(
    sample_file: Path, adult_bundle: Path, tmp_path: Path
) -> None:
    outs = {}
    for workers in ("1", "2"):
        dst = tmp_path / f"w{workers}.parquet"
        code, _, stderr = invoke(
            "explain",
            str(sample_file),
            "-o",
            str(dst),
            "--bundle",
            str(adult_bundle),
            "--workers",
            workers,
            "--batch-size",
            "64",
            "--id-column",
            "id",
        )
        assert code == 0, stderr
        outs[workers] = pq.read_table(dst)
    for name in ("id", "status", "alpha", "search", "evaluations", "cf_age", "cf_education"):
        assert outs["1"].column(name).to_pylist() == outs["2"].column(name).to_pylist(), name


def test_auto_workers_one_per_core_at_most_one_per_batch(sample_file: Path, tmp_path: Path) -> None:
    rows = pq.read_metadata(sample_file).num_rows
    cores = len(os.sched_getaffinity(0))
    assert auto_workers(sample_file, rows) == 1  # one batch: explained in-process
    assert auto_workers(sample_file, max(1, rows // 2)) == min(cores, 2 if rows % 2 == 0 else 3)
    assert auto_workers(sample_file, 1) == min(cores, rows)
    assert auto_workers(tmp_path / "missing.parquet", 10) == 1  # the explain reports the error


def test_explain_negative_workers(sample_file: Path, adult_bundle: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.parquet"
    code, _, stderr = invoke(
        "explain",
        str(sample_file),
        "-o",
        str(dst),
        "--bundle",
        str(adult_bundle),
        "--workers",
        "-1",
    )
    one_line_error(code, stderr, "workers")
    assert not dst.exists()


def test_explain_missing_id_column(sample_file: Path, adult_bundle: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.parquet"
    code, _, stderr = invoke(
        "explain",
        str(sample_file),
        "-o",
        str(dst),
        "--bundle",
        str(adult_bundle),
        "--id-column",
        "customer",
    )
    one_line_error(code, stderr, "'customer'")
    assert list(tmp_path.iterdir()) == []


def test_explain_refuses_to_overwrite_without_force(
    sample_file: Path, adult_bundle: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out.parquet"
    dst.write_bytes(b"precious")
    code, _, stderr = invoke(
        "explain", str(sample_file), "-o", str(dst), "--bundle", str(adult_bundle)
    )
    one_line_error(code, stderr, str(dst), "--force")
    assert dst.read_bytes() == b"precious"
    code, _, stderr = invoke(
        "explain", str(sample_file), "-o", str(dst), "--bundle", str(adult_bundle), "--force"
    )
    assert code == 0, stderr
    assert pq.read_table(dst).num_rows == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_explain_refuses_to_write_over_its_input(sample_file: Path, adult_bundle: Path) -> None:
    before = sample_file.read_bytes()
    code, _, stderr = invoke(
        "explain",
        str(sample_file),
        "-o",
        str(sample_file),
        "--bundle",
        str(adult_bundle),
        "--force",
    )
    one_line_error(code, stderr, "differ")
    assert sample_file.read_bytes() == before


# -- inspect --------------------------------------------------------------------------------------
def test_inspect_prints_manifest_and_report(adult_bundle: Path) -> None:
    code, stdout, stderr = invoke("inspect", str(adult_bundle))
    assert code == 0, stderr
    assert "checksums ok" in stdout
    assert f"format {FORMAT_VERSION}" in stdout
    for name in FEATURES:
        assert name in stdout
    assert "search defaults" in stdout
    if load_bundle(adult_bundle).report:
        assert "classifier: accuracy" in stdout
        assert "z_u probe" in stdout


def test_inspect_json_is_valid_json(adult_bundle: Path) -> None:
    code, stdout, stderr = invoke("inspect", str(adult_bundle), "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    bundle = load_bundle(adult_bundle)
    on_disk = json.loads((adult_bundle / "manifest.json").read_text())
    assert data["manifest"] == bundle.manifest.to_dict()
    # run settings newer than the bundle are filled in with their defaults; the rest round-trips
    search, saved = data["manifest"].pop("search"), on_disk.pop("search")
    defaults = RunSettings().to_dict()
    assert search == defaults | saved
    assert data["manifest"] == on_disk
    assert data["report"] == bundle.report
    assert data["manifest"]["format"] == "gmcf-bundle"


def test_inspect_a_folder_that_is_no_bundle(tmp_path: Path) -> None:
    code, _, stderr = invoke("inspect", str(tmp_path))
    one_line_error(code, stderr, "manifest.json")
    code, _, stderr = invoke("inspect", str(tmp_path / "nope"))
    one_line_error(code, stderr, "not a folder")


def test_default_bundle_is_the_shipped_adult_bundle(
    adult_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gmcf.cli.main import default_bundle

    monkeypatch.delenv("GMCF_BUNDLE", raising=False)
    assert default_bundle().resolve() == adult_bundle.resolve()
    monkeypatch.setenv("GMCF_BUNDLE", "/somewhere/else")
    assert default_bundle() == Path("/somewhere/else")


def test_default_batch_size_tabular_and_images() -> None:
    from gmcf.runtime.explainer import DEFAULT_BATCH_SIZE, default_batch_size

    assert default_batch_size(21) == DEFAULT_BATCH_SIZE == 65536
    assert default_batch_size(784) == (1 << 21) // 784  # 2,674 images of 784 pixels
    assert default_batch_size(10**7) == 1024
