"""Helpers shared by the runtime and CLI tests: real query rows, CLI calls, error checks."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from gmcf.cli.main import app
from gmcf.datasets import load_dataset
from gmcf.runtime.schema import Preprocessor

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def adult_queries(n: int, seed: int = 0) -> pa.Table:
    """n real Adult rows in random (not sorted) order, label dropped, with their row id."""
    ds = load_dataset("adult")
    idx = np.random.default_rng(seed).choice(ds.table.num_rows, size=n, replace=False)
    table = ds.table.take(pa.array(idx)).drop_columns([ds.schema.label])
    return table.append_column("id", pa.array(idx, pa.int64()))


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``gmcf-batch ARGS``: (exit code, stdout, stderr) without colour codes."""
    result = CliRunner().invoke(app, list(args))
    # a crash (not a clean exit) would show as an exception other than SystemExit
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


def assert_clean_failure(code: int, stdout: str, stderr: str, out_dir: Path, *words: str) -> None:
    """A non-zero exit with one `error:` line naming ``words``, and nothing left in ``out_dir``."""
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr + stdout
    for w in words:
        assert w in lines[0], (w, lines[0])
    left = sorted(p.name for p in out_dir.iterdir())
    assert left == [], left  # no output file, no .*.tmp


def cf_table(out: pa.Table, pre: Preprocessor, rows: np.ndarray) -> pa.Table:
    """The counterfactuals of ``rows`` as a query table (cf_<name> renamed to <name>)."""
    sub = out.take(pa.array(rows))
    cols = {}
    for f in pre.features:
        col = sub.column(f"cf_{f.name}")
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols[f.name] = col
    return pa.table(cols)


@contextmanager
def tmpfs(options: str) -> Iterator[Path]:
    """A tmpfs mounted with ``options`` (e.g. ``size=1m``) for the test; the test is skipped,
    with the reason, where it cannot be mounted (mounting needs root)."""
    folder = Path(tempfile.mkdtemp(prefix="gmcf-tmpfs-"))
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        folder.rmdir()
        pytest.skip(f"cannot run mount: {exc}")
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        folder.rmdir()
