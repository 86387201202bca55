"""`scripts/benchmark.py`'s scoring-only pass: read, encode, f, write id and score."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime import Explainer

ROOT = Path(__file__).resolve().parents[2]


def test_scoring_only_writes_every_id_with_the_bundles_score(
    adult_bundle: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    src, dst = tmp_path / "q.parquet", tmp_path / "scored.parquet"
    benchmark.make_queries(3000, src)
    table = pq.read_table(src)
    # One row the encoder rejects: its score must be null, and its id kept.
    age = table.column("age").to_numpy().astype(np.float64)
    age[5] = np.nan
    table = table.set_column(table.schema.get_field_index("age"), "age", pa.array(age))
    pq.write_table(table, src, row_group_size=1000)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchmark.py"),
            "--score-only-worker",
            str(src),
            str(dst),
            str(adult_bundle),
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = pq.read_table(dst)
    assert out.column("id").to_pylist() == table.column("id").to_pylist()
    score = out.column("score").to_numpy(zero_copy_only=False)
    want = (
        Explainer.from_bundle(adult_bundle, threads=1)
        .explain(table)
        .column("score")
        .to_numpy(zero_copy_only=False)
    )
    assert np.isnan(score[5]) and np.isnan(want[5])
    ok = ~np.isnan(want)
    assert ok.sum() == 2999
    assert np.abs(score[ok] - want[ok]).max() <= 1e-6
