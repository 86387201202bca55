"""The CLI, Spark (local mode) and Ray (one node) on the same query file: same rows, and wall times.

Writes N query rows (Adult resampled with 1% noise, as scripts/benchmark.py does), then, in
alternation and each in a fresh subprocess so that start-up counts:

- ``gmcf-batch explain IN -o OUT --id-column id --workers W``;
- Spark ``local[W]``: read IN, ``explain_spark``, write a folder of Parquet parts;
- Ray with W CPUs: ``read_parquet``, ``explain_ray``, ``write_parquet`` to a folder.

Then checks, by id, that Spark's and Ray's rows are the CLI's: the same ids once each, and the
same status, reason and every ``cf_`` column exactly; the other numbers are compared to float32
rounding, and the largest difference is printed. Prints each run's wall time, the medians and
their ratios to the CLI's median.

    python scripts/engines_parity.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "exported" / "adult"


def run_spark(src: Path, dst: Path, cores: int) -> dict[str, float]:
    t0 = time.perf_counter()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from gmcf.runtime.spark import explain_spark

    # Row groups of 131,072 rows: partitions of about 1 MB give each core several row groups
    # (Spark's default packs a 1M-row file into two very uneven partitions).
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.files.maxPartitionBytes", str(1 << 20))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    t1 = time.perf_counter()
    df = spark.read.parquet(str(src))
    explain_spark(df, BUNDLE, id_column="id").write.mode("overwrite").parquet(str(dst))
    t2 = time.perf_counter()
    spark.stop()
    return {"start": t1 - t0, "job": t2 - t1}


def run_ray(src: Path, dst: Path, cores: int) -> dict[str, float]:
    t0 = time.perf_counter()
    import ray

    from gmcf.runtime.ray import explain_ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t1 = time.perf_counter()
    ds = ray.data.read_parquet(str(src))
    explain_ray(ds, BUNDLE, id_column="id").write_parquet(str(dst))
    t2 = time.perf_counter()
    ray.shutdown()
    return {"start": t1 - t0, "job": t2 - t1}


def timed(cmd: list[str]) -> tuple[float, list[str]]:
    """Wall seconds of ``cmd`` and the lines it printed."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, res.stdout.strip().splitlines()


def read_plain(path: Path) -> pa.Table:
    from gmcf.runtime.interop import to_plain

    table = (
        pads.dataset(path, format="parquet").to_table() if path.is_dir() else pq.read_table(path)
    )
    return to_plain(table).sort_by("id")


def compare(name: str, got: pa.Table, want: pa.Table) -> dict[str, object]:
    """Rows by id: ids, status, reason and every cf_ column exactly; other floats to rounding."""
    assert got.num_rows == want.num_rows, (name, got.num_rows, want.num_rows)
    assert got.column("id").equals(want.column("id")), f"{name}: ids differ"
    exact = ["status", "reason", "search", *[n for n in want.column_names if n.startswith("cf_")]]
    mismatched = [n for n in exact if not got.column(n).equals(want.column(n))]
    largest = {}
    for n in want.column_names:
        if n in exact or not pa.types.is_floating(want.schema.field(n).type):
            if n not in exact and not got.column(n).equals(want.column(n)):
                mismatched.append(n)
            continue
        a = got.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
        b = want.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            mismatched.append(n)
            continue
        ok = ~np.isnan(a)
        largest[n] = float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0
    return {"rows": got.num_rows, "mismatched": mismatched, "largest_float_difference": largest}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cores", type=int, default=2, help="CLI workers, Spark local[N], Ray CPUs")
    p.add_argument("--dir", type=Path, default=None, help="work folder [default: a temporary one]")
    p.add_argument("--run", choices=["spark", "ray"], help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:  # one engine run, in its own process
        fn = run_spark if a.run == "spark" else run_ray
        print(json.dumps(fn(a.paths[0], a.paths[1], a.cores)))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmark import make_queries

    work = a.dir or Path(tempfile.mkdtemp(prefix="gmcf-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "queries.parquet"
    if not src.exists() or pq.read_metadata(src).num_rows != a.rows:
        make_queries(a.rows, src)
    gmcf = str(Path(sys.executable).with_name("gmcf-batch"))
    outs = {"cli": work / "cli.parquet", "spark": work / "spark", "ray": work / "ray"}
    cmds = {
        "cli": [
            gmcf,
            "explain",
            str(src),
            "-o",
            str(outs["cli"]),
            "--id-column",
            "id",
            "--workers",
            str(a.cores),
            "--force",
            "--bundle",
            str(BUNDLE),
        ],
        "spark": [
            sys.executable,
            __file__,
            "--run",
            "spark",
            "--cores",
            str(a.cores),
            str(src),
            str(outs["spark"]),
        ],
        "ray": [
            sys.executable,
            __file__,
            "--run",
            "ray",
            "--cores",
            str(a.cores),
            str(src),
            str(outs["ray"]),
        ],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(a.repeat):
        for name, cmd in cmds.items():
            if name != "cli":
                shutil.rmtree(outs[name], ignore_errors=True)
            seconds, lines = timed(cmd)
            times[name].append(seconds)
            if name == "cli":
                detail = next(x for x in lines if " rows in " in x).split(":")[
                    0
                ]  # N rows in S s (R rows/s)
            else:
                parts = json.loads(lines[-1])
                detail = f"start-up {parts['start']:.1f} s, job {parts['job']:.1f} s"
            print(f"run {r + 1}: {name} {seconds:.1f} s ({detail})", flush=True)
    cli = read_plain(outs["cli"])
    report = {name: compare(name, read_plain(outs[name]), cli) for name in ("spark", "ray")}
    base = statistics.median(times["cli"])
    print(
        f"\n{a.rows:,} rows, {a.cores} cores ({os.uname().machine}); wall seconds per run, "
        "start-up included"
    )
    print("| engine | runs (s) | median (s) | vs CLI |")
    print("|---|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {med:.1f} | {med / base:.2f}x |")
    for name, res in report.items():
        verdict = "identical" if not res["mismatched"] else f"MISMATCH in {res['mismatched']}"
        print(
            f"{name}: {res['rows']:,} rows by id, status/reason/search/cf_* {verdict}; largest "
            f"float difference elsewhere: {max(res['largest_float_difference'].values()):.2e}"
        )
    if any(r["mismatched"] for r in report.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
