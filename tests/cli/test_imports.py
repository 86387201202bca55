"""The runtime and the CLI work without torch and onnx; only `train` needs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
from helpers import adult_queries

BLOCKED = ("torch", "onnx")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "GMCF_BUNDLE")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_runtime_and_cli_explain_with_torch_and_onnx_blocked(
    adult_bundle: Path, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["onnx"] = None

        import numpy as np
        import pyarrow as pa

        import gmcf.cli.main
        import gmcf.runtime
        from gmcf.datasets import load_dataset

        ds = load_dataset("adult")
        idx = np.random.default_rng(0).choice(ds.table.num_rows, size=40, replace=False)
        table = ds.table.take(pa.array(idx)).drop_columns([ds.schema.label])
        out = gmcf.runtime.Explainer.from_bundle(sys.argv[1]).explain(table)
        assert out.num_rows == 40, out.num_rows
        statuses = out.column("status").to_pylist()
        assert set(statuses) <= {"found", "already_target", "not_found"}, statuses
        assert "found" in statuses, statuses
        loaded = sorted(
            m for m, mod in sys.modules.items()
            if mod is not None and m.split(".")[0] in ("torch", "onnx")
        )
        assert not loaded, loaded
        print("explained", out.num_rows)
        """
    )
    proc = run_python(["-c", code, str(adult_bundle)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "explained 40" in proc.stdout


def test_import_time_lists_neither_torch_nor_onnx(tmp_path: Path) -> None:
    proc = run_python(
        ["-X", "importtime", "-c", "import gmcf.runtime, gmcf.cli.main"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    ]
    roots = {m.split(".")[0] for m in modules}
    # The parsing works: the runtime and onnxruntime are in the list ...
    assert "gmcf.runtime" in modules
    assert "onnxruntime" in roots
    # ... and neither torch nor onnx (exact names: "onnxruntime" is not "onnx").
    assert not roots & set(BLOCKED), sorted(m for m in modules if m.split(".")[0] in BLOCKED)


def test_train_without_torch_says_what_to_install(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from gmcf.cli.main import app; "
        f"sys.argv = ['gmcf-batch', 'train', 'adult', '-o', {str(dest)!r}]; app()"
    )
    proc = run_python(["-c", code], cwd=tmp_path)
    assert proc.returncode != 0
    err = ANSI.sub("", proc.stderr).strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "torch" in err
    assert "pip install 'gmcf-batch[trainer]'" in err
    assert not dest.exists()


def test_explain_never_imports_pandas(adult_bundle: Path, tmp_path: Path) -> None:
    """pyarrow's pa.array imports pandas on first use (~0.3 s of start-up); the CLI's explain,
    sequential and with workers, builds its arrays from buffers and runs with pandas blocked."""
    src = tmp_path / "q.parquet"
    pq.write_table(adult_queries(300), src)
    for workers in ("1", "2"):
        dst = tmp_path / f"out{workers}.parquet"
        code = (
            "import sys; sys.modules['pandas'] = None; from gmcf.cli.main import app; sys.argv = "
            f"['gmcf-batch', 'explain', {str(src)!r}, '-o', {str(dst)!r}, '--bundle', "
            f"{str(adult_bundle)!r}, '--workers', {workers!r}, '--batch-size', '100']; app()"
        )
        proc = run_python(["-c", code], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert pq.read_metadata(dst).num_rows == 300
