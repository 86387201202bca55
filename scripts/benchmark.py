"""End-to-end benchmark of `gmcf-batch explain`: Parquet in, Parquet out.

Writes an N-row query file by resampling the shipped Adult rows with small noise, runs the CLI in
a subprocess (start-up and imports included), samples the resident memory of the whole process
tree, and prints rows/s, peak RSS and validity.

``--mode score`` runs a scoring-only pass of the same bundle's classifier over the same file
instead (read, encode, f, write id and score; one process, onnxruntime with workers x threads
intra-op threads): what scoring alone costs, next to explaining. ``--mode both`` alternates the
two (explain first) ``--repeat`` times and prints each one's median and their ratio.

    python scripts/benchmark.py --rows 1000000 --workers 2
    python scripts/benchmark.py --rows 1000000 -- \\
        --increase-only age --immutable education --num-cfs 3
    python scripts/benchmark.py --rows 1000000 --bundle my-bundle --mode both --repeat 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gmcf.datasets import load_dataset


def make_queries(n: int, path: Path, seed: int = 0) -> None:
    """Resample Adult rows; jitter each numeric feature by ~1% of its range (kept in range)."""
    ds = load_dataset("adult")
    rng = np.random.default_rng(seed)
    writer = None
    chunk = 500_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        idx = rng.integers(0, ds.table.num_rows, m)
        t = ds.table.take(pa.array(idx)).drop_columns([ds.schema.label])
        cols = {}
        for f in ds.schema.features:
            col = t.column(f.name)
            if f.kind == "categorical":
                cols[f.name] = col
                continue
            v = col.to_numpy().astype(np.float64)
            full = ds.table.column(f.name)
            lo, hi = pc.min(full).as_py(), pc.max(full).as_py()
            v = np.clip(v + rng.normal(0, 0.01 * (hi - lo), m), lo, hi)
            cols[f.name] = pa.array(np.rint(v).astype(np.int64) if f.kind == "integer" else v)
        cols["id"] = pa.array(np.arange(start, start + m, dtype=np.int64))
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=131072)
    assert writer is not None
    writer.close()


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (via /proc/PID/task/*/children, cheap to read)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(_children(p))
    return total


def run(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_kib(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, errs = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        sys.exit(f"benchmark: {' '.join(cmd[:3])} failed:\n{errs}")
    return wall, peak, out


def score_only(src: Path, dst: Path, bundle_path: Path | None, threads: int) -> None:
    """Read ``src`` one row group at a time, encode it, score it with the bundle's classifier and
    write id and score (null for a row the encoder rejects) to ``dst``."""
    import onnxruntime as ort

    from gmcf.runtime.bundle import load_bundle

    bundle = load_bundle(
        bundle_path or Path(__file__).resolve().parent.parent / "exported" / "adult"
    )
    pre = bundle.preprocessor
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        str(bundle.graph_path("classifier")), opts, providers=["CPUExecutionProvider"]
    )
    pf = pq.ParquetFile(src)
    schema = pa.schema([("id", pa.int64()), ("score", pa.float32())])
    rows = 0
    with pq.ParquetWriter(dst, schema) as writer:
        for g in range(pf.num_row_groups):
            batch = pf.read_row_group(g)
            x, reason = pre.transform(batch)
            score = np.asarray(sess.run(["score"], {"x": x})[0], dtype=np.float32)
            valid = reason == None  # noqa: E711 - elementwise on an object array
            writer.write_table(
                pa.table(
                    {
                        "id": batch.column("id"),
                        "score": pa.array(score, mask=~valid),
                    },
                    schema=schema,
                )
            )
            rows += batch.num_rows
    print(f"scored {rows:,} rows")


def report(label: str, args: argparse.Namespace, wall: float, peak: int, extra: str = "") -> None:
    print(
        f"{label:<8} rows {args.rows:,}  workers {args.workers}  threads {args.threads}  "
        f"wall {wall:.2f} s  {args.rows / wall:,.0f} rows/s  peak RSS {peak / 1024:,.0f} MiB{extra}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--score-only-worker":
        src, dst, bundle, threads = sys.argv[2:6]
        score_only(Path(src), Path(dst), Path(bundle) if bundle else None, int(threads))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="[default: explain's own]")
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--mode",
        choices=("explain", "score", "both"),
        default="explain",
        help="explain; score only (read, encode, f, write id and score); or both, alternating",
    )
    ap.add_argument(
        "--dir", type=Path, default=None, help="where to write the files [a temp folder]"
    )
    ap.add_argument("explain_args", nargs="*", help="more `gmcf-batch explain` options, after --")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="gmcf-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / f"queries_{args.rows}.parquet", folder / "explained.parquet"
    if not src.exists():
        t = time.perf_counter()
        make_queries(args.rows, src)
        print(f"wrote {args.rows:,} query rows to {src} in {time.perf_counter() - t:.1f} s")
    exe = Path(sys.executable).with_name("gmcf-batch")
    cmd = [
        str(exe),
        "explain",
        str(src),
        "-o",
        str(dst),
        "--force",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--id-column",
        "id",
    ]
    if args.batch_size is not None:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.bundle:
        cmd += ["--bundle", str(args.bundle)]
    cmd += args.explain_args
    score_cmd = [
        sys.executable,
        __file__,
        "--score-only-worker",
        str(src),
        str(folder / "scored.parquet"),
        str(args.bundle or ""),
        str(args.workers * args.threads),
    ]
    if args.mode != "score":
        print("command:", " ".join(cmd[1:]).replace(str(exe), "gmcf-batch"))
    if args.mode != "explain":
        print(
            f"scoring only: read, encode, f ({args.workers * args.threads} onnxruntime threads), "
            "write id and score"
        )
    walls: dict[str, list[float]] = {"explain": [], "score": []}
    out = ""
    for _ in range(args.repeat):
        if args.mode != "score":
            wall, peak, out = run(cmd)
            walls["explain"].append(wall)
            report("explain", args, wall, peak, f"  validity {validity(dst, args.rows)}")
        if args.mode != "explain":
            wall, peak, _ = run(score_cmd)
            walls["score"].append(wall)
            assert pq.read_metadata(folder / "scored.parquet").num_rows == args.rows
            report("score", args, wall, peak)
    if out:
        print(out.strip().splitlines()[0])
    if args.mode == "both":
        e, s_ = float(np.median(walls["explain"])), float(np.median(walls["score"]))
        print(
            f"medians of {args.repeat}: explain {e:.2f} s ({args.rows / e:,.0f} rows/s), scoring "
            f"only {s_:.2f} s ({args.rows / s_:,.0f} rows/s); explain takes {e / s_:.2f}x the time "
            "of scoring"
        )


def validity(dst: Path, rows: int) -> str:
    out_cols = pq.read_schema(dst).names
    cols = ["status"] + (["cf_rank"] if "cf_rank" in out_cols else [])
    table = pq.read_table(dst, columns=cols)
    status = table.column("status").to_pylist()
    if "cf_rank" in cols:  # K options: count each query once, by its first row
        ranks = table.column("cf_rank").to_pylist()
        status = [s for s, r in zip(status, ranks, strict=True) if r is None or r == 1]
    found, nf = status.count("found"), status.count("not_found")
    assert len(status) == rows, (len(status), rows)
    return f"{100 * found / max(found + nf, 1):.2f}%"


if __name__ == "__main__":
    main()
