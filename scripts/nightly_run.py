"""A nightly job's run at scale: `gmcf-batch explain` on N rows (default 10 million) with two
workers, checked end to end.

Writes N query rows (Adult rows resampled with 1% noise, as scripts/benchmark.py does), runs the
CLI in a subprocess with ``--summary-json``, samples the resident memory of the whole process
tree every 0.2 s, then checks that the output holds every input row exactly once, in input order
(its ``id`` column is 0..N-1), and that the summary's counts are the output's. Prints the peak
RSS in each tenth of the run: flat means memory does not grow with the file.

    python scripts/nightly_run.py --rows 10000000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from benchmark import make_queries, tree_rss_kib


def run(
    cmd: list[str], every: float = 0.2
) -> tuple[float, list[tuple[float, int]], subprocess.CompletedProcess[str]]:
    """Run ``cmd``; (wall seconds, [(seconds since start, tree RSS KiB)], the finished process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, tree_rss_kib(proc.pid)))
            time.sleep(every)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    return wall, samples, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def check_every_row_once_in_order(dst: Path, rows: int) -> dict[str, int]:
    """Read the output one row group at a time: ids 0..rows-1 in order; the status counts."""
    pf = pq.ParquetFile(dst)
    assert pf.metadata.num_rows == rows, (pf.metadata.num_rows, rows)
    expect = 0
    counts: dict[str, int] = {}
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g, columns=["id", "status"])
        ids = t.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(expect, expect + len(ids))):
            bad = int(np.flatnonzero(ids != np.arange(expect, expect + len(ids)))[0])
            raise AssertionError(f"row {expect + bad}: id {ids[bad]}, expected {expect + bad}")
        expect += len(ids)
        status = t.column("status").combine_chunks()
        for value, n in zip(
            *np.unique(
                status.dictionary.take(status.indices).to_numpy(zero_copy_only=False),
                return_counts=True,
            ),
            strict=True,
        ):
            counts[str(value)] = counts.get(str(value), 0) + int(n)
    assert expect == rows
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--dir", type=Path, default=None, help="where to write the files [a temp folder]"
    )
    ap.add_argument(
        "--no-summary",
        action="store_true",
        help="without --summary-json (to compare with a version that lacks it)",
    )
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="gmcf-nightly-"))
    folder.mkdir(parents=True, exist_ok=True)
    src, dst, summary = (
        folder / f"queries_{args.rows}.parquet",
        folder / "explained.parquet",
        folder / "run.json",
    )
    if not src.exists():
        t = time.perf_counter()
        make_queries(args.rows, src)
        print(f"wrote {args.rows:,} query rows to {src} in {time.perf_counter() - t:.1f} s")
    dst.unlink(missing_ok=True)
    exe = Path(sys.executable).with_name("gmcf-batch")
    cmd = [
        str(exe),
        "explain",
        str(src),
        "-o",
        str(dst),
        "--workers",
        str(args.workers),
        "--id-column",
        "id",
    ]
    cmd += [] if args.no_summary else ["--summary-json", str(summary)]
    print("command:", " ".join(cmd).replace(str(exe), "gmcf-batch"))
    wall, samples, done = run(cmd)
    if done.returncode != 0:
        sys.exit(f"explain failed ({done.returncode}):\n{done.stderr}")
    print(done.stdout.strip().splitlines()[0])
    counts = check_every_row_once_in_order(dst, args.rows)
    print(f"every row once, in order: ids 0..{args.rows - 1:,}; statuses {counts}")
    if not args.no_summary:
        record = json.loads(summary.read_text())
        for name in ("found", "already_target", "not_found", "invalid"):
            assert record[name] == counts.get(name, 0), (name, record[name], counts.get(name, 0))
        print("the summary's counts are the output's")
    rss = np.array([kib for _, kib in samples], dtype=np.float64) / 1024
    times = np.array([t for t, _ in samples])
    tenths = [rss[(times >= wall * i / 10) & (times < wall * (i + 1) / 10)] for i in range(10)]
    peaks = [f"{part.max():.0f}" if part.size else "-" for part in tenths]
    print(
        f"rows {args.rows:,}  workers {args.workers}  wall {wall:.1f} s  {args.rows / wall:,.0f} "
        f"rows/s  peak RSS {rss.max():.0f} MiB"
    )
    print("peak RSS (MiB) in each tenth of the run:", " ".join(peaks))


if __name__ == "__main__":
    main()
