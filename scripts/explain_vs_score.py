"""Explain throughput against a scoring-only pass over the same file, one process, one thread.

Writes N Adult query rows (``benchmark.make_queries``), then alternates, ``--repeat`` times:

- **score**: read the file batch by batch, preprocess, score every row with the bundle's
  ``classifier.onnx``, write id, score and status to Parquet (what a scoring job does);
- **explain**: ``Explainer.explain_parquet`` with the bundle's defaults.

Prints each run's seconds, the medians, their ratio, the decoder evaluations per searched row and
the share of searched rows by search kind.

    python scripts/explain_vs_score.py /tmp/vl/b/adult-hgb --rows 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import make_queries

from gmcf.runtime import Explainer
from gmcf.runtime.read import read_batches
from gmcf.runtime.schema import usable_rows
from gmcf.runtime.write import atomic_parquet_writer


def score_only(ex: Explainer, src: Path, dst: Path, batch_size: int) -> float:
    pre = ex.bundle.preprocessor
    schema = pa.schema([("id", pa.int64()), ("score", pa.float32()), ("rejected", pa.bool_())])
    pf = pq.ParquetFile(src)
    t0 = time.perf_counter()
    with atomic_parquet_writer(dst, schema) as writer:
        for batch in read_batches(pf, src, batch_size, [*pre.names, "id"]):
            x, reason = pre.transform(batch)
            ok = usable_rows(reason)
            score = np.full(len(x), np.nan, np.float32)
            score[ok] = ex.engine.score(x[ok])
            writer.write_batch(
                pa.record_batch(
                    [batch.column("id"), pa.array(score), pa.array(score < ex.settings.threshold)],
                    schema=schema,
                )
            )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--search", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides = {}
    for item in args.search:
        k, _, v = item.partition("=")
        overrides[k] = (
            {"true": True, "false": False}.get(v.lower(), v)
            if not v.replace(".", "").isdigit()
            else (float(v) if "." in v else int(v))
        )
    ex = Explainer.from_bundle(args.bundle, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "q.parquet"
        make_queries(args.rows, src)
        times: dict[str, list[float]] = {"score": [], "explain": []}
        for _ in range(args.repeat):
            times["score"].append(score_only(ex, src, Path(tmp) / "s.parquet", args.batch_size))
            t0 = time.perf_counter()
            summary = ex.explain_parquet(
                src, Path(tmp) / "e.parquet", batch_size=args.batch_size, id_column="id"
            )
            times["explain"].append(time.perf_counter() - t0)
        out = pq.read_table(Path(tmp) / "e.parquet", columns=["status", "search", "evaluations"])
    status = np.asarray(out.column("status").to_pylist())
    searched = (status == "found") | (status == "not_found")
    kinds = np.asarray([k or "" for k in out.column("search").to_pylist()])
    evals = out.column("evaluations").to_numpy(zero_copy_only=False)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"bundle {args.bundle}, {args.rows:,} rows, search {ex.settings.to_dict()}")
    for k, v in times.items():
        print(f"  {k:8s} " + ", ".join(f"{t:.2f} s" for t in v) + f"  (median {med[k]:.2f} s)")
    print(
        f"  explain / score: {med['explain'] / med['score']:.2f}x; validity "
        f"{100 * summary.validity:.1f}% of {searched.sum():,} searched; "
        f"{evals[searched].mean():.1f} evaluations per searched row; "
        + ", ".join(
            f"{k} {100 * (kinds[searched] == k).mean():.1f}%"
            for k in ("grid", "refined", "extrapolated", "anchored")
        )
    )


if __name__ == "__main__":
    main()
