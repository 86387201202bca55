"""The README a newcomer reads: short, and every command in it works as written.

The shell blocks are run line by line in a fresh folder (the files they name are made from the
README's own JSON and TOML blocks and the shipped data); the Python block is run as it is;
``make demo`` is run as make would run it. Only installs (pip) are left to CI
(.ci/base-install), and training gets one epoch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gmcf.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MAX_WORDS = 1600
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def run(words: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = BIN / words[0] if (BIN / words[0]).exists() else Path(words[0])
    proc = subprocess.run(
        [str(exe), *words[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GMCF_BUNDLE": ""},
        timeout=600,
    )
    assert proc.returncode == 0, f"{shlex.join(words)} failed:\n{proc.stderr}"
    return proc


def test_readme_is_short() -> None:
    words = len(README.split())
    assert words <= MAX_WORDS, f"README has {words} words, more than {MAX_WORDS}"


def test_readme_opens_with_make_demo_and_make_test_and_both_are_make_targets() -> None:
    first = commands(blocks("bash")[0])
    assert first == [["make", "demo"], ["make", "test"]]
    dry = subprocess.run(
        ["make", "-n", "test", f"VENV={sys.prefix}"], cwd=ROOT, capture_output=True, text=True
    )
    assert dry.returncode == 0 and "pytest -q" in dry.stdout, dry.stderr


@pytest.mark.slow
def test_make_demo_runs(tmp_path: Path) -> None:
    """The commands ``make demo`` runs (its install step aside), run in a fresh folder."""
    dry = subprocess.run(
        ["make", "-n", "demo", f"VENV={sys.prefix}"], cwd=ROOT, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    demo = [
        shlex.split(line)
        for line in dry.stdout.splitlines()
        if line.split()[0].endswith("gmcf-batch")
    ]
    assert [words[1] for words in demo] == ["sample", "explain"]
    for words in demo:
        run(words, tmp_path)
    assert pq.read_metadata(tmp_path / "queries.explained.parquet").num_rows == 10_000


@pytest.mark.slow
def test_every_readme_command_works(tmp_path: Path) -> None:
    # The files the README's commands name, from its own blocks and the shipped data.
    (tmp_path / "policy.toml").write_text(blocks("toml")[0])
    (tmp_path / "schema.json").write_text(blocks("json")[0])
    (tmp_path / "exported").symlink_to(ROOT / "exported")
    loans = load_dataset("lending-club").table
    pacsv.write_csv(loans, tmp_path / "loans.csv")
    idx = np.random.default_rng(0).choice(loans.num_rows, 500, replace=False)
    pq.write_table(loans.take(pa.array(idx)), tmp_path / "my-queries.parquet")

    ran = []
    for block in blocks("bash")[1:]:
        for words in commands(block):
            if words[0] == "pip":
                continue  # the installs are CI's (.ci/base-install)
            assert words[0] == "gmcf-batch", words
            if words[1] == "train":
                words = [*words, "--epochs", "1"]
            run(words, tmp_path)
            ran.append(words[1])
    assert ran.count("explain") >= 3 and "sample" in ran and "train" in ran, ran
    for out in ("explained.parquet", "constrained.parquet", "policy.parquet"):
        assert pq.read_metadata(tmp_path / out).num_rows == 10_000, out
    constrained = pq.read_table(tmp_path / "constrained.parquet")
    found = constrained.filter(pc.equal(constrained.column("status"), "found"))
    assert found.num_rows > 0
    assert found.column("cf_education").cast(pa.string()).equals(found.column("education"))

    (python,) = blocks("python")
    proc = subprocess.run(
        [sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    rows, found_n, validity, _ = proc.stdout.split()
    assert int(rows) == 10_000 and 0 < int(found_n) < 10_000 and 0.0 < float(validity) <= 1.0
