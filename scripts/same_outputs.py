"""Explain the same query files with two installs of gmcf-batch and compare the outputs exactly.

A change that should not alter behaviour (a refactoring) must give byte-identical Parquet files.
Step 1 writes query files from the shipped data (rows drawn with replacement, a few made bad on
purpose so that the invalid path runs too); step 2 runs a set of `explain` commands with one
install; step 3 compares two such runs, table by table and byte by byte.

    python scripts/same_outputs.py queries DIR
    python scripts/same_outputs.py run DIR/queries DIR/before \\
        --exe /path/to/old/.venv/bin/gmcf-batch
    python scripts/same_outputs.py run DIR/queries DIR/after --exe .venv/bin/gmcf-batch
    python scripts/same_outputs.py compare DIR/before DIR/after
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: (name, dataset, rows)
QUERIES = (
    ("adult", "adult", 100_000),
    ("lending-club", "lending-club", 100_000),
    ("mnist", "mnist-1-to-7", 3_000),
)

#: (name, query file, explain options); bundles are the shipped ones, found next to the package.
RUNS = (
    ("adult-2-workers", "adult", ["--workers", "2", "--id-column", "id"]),
    ("adult-in-process", "adult", ["--workers", "1", "--batch-size", "30000"]),
    ("adult-k3", "adult", ["--workers", "2", "--num-cfs", "3", "--id-column", "id"]),
    (
        "adult-constrained",
        "adult",
        [
            "--workers",
            "2",
            "--immutable",
            "education",
            "--increase-only",
            "age",
            "--range",
            "hours-per-week=20:60",
            "--id-column",
            "id",
        ],
    ),
    (
        "lending-club",
        "lending-club",
        ["--bundle", "{exported}/lending-club", "--workers", "2", "--id-column", "id"],
    ),
    (
        "mnist",
        "mnist",
        ["--bundle", "{exported}/mnist-1-to-7", "--workers", "2", "--id-column", "id"],
    ),
)


#: The Python API on the first 20,000 Adult queries: an Arrow table and, when pandas is there, a
#: DataFrame (with constraints and K = 2), each written with pyarrow's defaults.
API = """
import sys
import pyarrow as pa
import pyarrow.parquet as pq
from gmcf.runtime import Explainer
queries, out = sys.argv[1], sys.argv[2]
table = pq.read_table(queries).slice(0, 20_000)
pq.write_table(Explainer.from_bundle(sys.argv[3]).explain(table, id_column="id"), \
out + "/api-arrow.parquet")
ex = Explainer.from_bundle(sys.argv[3], num_cfs=2, constraints={"age": {"direction": "increase"}})
frame = ex.explain(table.to_pandas(), id_column="id")  # an Arrow table in older trees, \
a DataFrame since
if not isinstance(frame, pa.Table):
    frame = pa.Table.from_pandas(frame, preserve_index=False)
pq.write_table(frame, out + "/api-pandas.parquet")
"""


def write_queries(folder: Path) -> None:
    from gmcf.datasets import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    for name, dataset, n in QUERIES:
        ds = load_dataset(dataset)
        rng = np.random.default_rng(7)
        idx = np.sort(rng.integers(0, ds.table.num_rows, n))
        table = ds.table.take(pa.array(idx)).drop_columns([ds.schema.label])
        table = table.append_column("id", pa.array(np.arange(n, dtype=np.int64)))
        if not ds.schema.has_image:
            # One row in a hundred gets a missing value in its first feature: the invalid path.
            first = ds.schema.features[0].name
            col = table.column(first).combine_chunks()
            bad = np.zeros(n, bool)
            bad[rng.choice(n, n // 100, replace=False)] = True
            col = pa.array(
                [None if b else v for b, v in zip(bad, col.to_pylist(), strict=True)], col.type
            )
            table = table.set_column(table.schema.get_field_index(first), first, col)
        else:
            from gmcf.runtime.schema import ImagePreprocessor

            pre = ImagePreprocessor.fit_image(table, ds.schema.features)
            pix = pre.image.name
            table = table.set_column(
                table.schema.get_field_index(pix), pix, pre.echo(table.column(pix))
            )
        pq.write_table(table, folder / f"{name}.parquet", row_group_size=25_000)
        print(f"wrote {n:,} {dataset} rows to {folder / f'{name}.parquet'}")


def run_all(queries: Path, out: Path, exe: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    py = exe.with_name("python")
    exported = subprocess.run(
        [str(py), "-c", "from importlib import resources; print(resources.files('gmcf.exported'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    for name, query, options in RUNS:
        cmd = [
            str(exe),
            "explain",
            str(queries / f"{query}.parquet"),
            "-o",
            str(out / f"{name}.parquet"),
            "--force",
            *[o.format(exported=exported) for o in options],
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{name}: explain failed:\n{res.stderr}")
        print(f"{name}: {res.stdout.splitlines()[0]}")
    api = [str(py), "-c", API, str(queries / "adult.parquet"), str(out), f"{exported}/adult"]
    res = subprocess.run(api, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"Python API run failed:\n{res.stderr}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(a: Path, b: Path) -> int:
    failures = 0
    for name in [*(run[0] for run in RUNS), "api-arrow", "api-pandas"]:
        pa_, pb = a / f"{name}.parquet", b / f"{name}.parquet"
        ta, tb = pq.read_table(pa_), pq.read_table(pb)
        same_table = ta.schema.equals(tb.schema) and ta.equals(tb)
        same_bytes = sha256(pa_) == sha256(pb)
        status = dict(
            zip(
                *np.unique(ta.column("status").to_numpy(zero_copy_only=False), return_counts=True),
                strict=True,
            )
        )
        print(
            f"{name:18} rows {ta.num_rows:>7,}  same table {same_table}  same bytes {same_bytes}  "
            f"statuses {', '.join(f'{k} {v:,}' for k, v in sorted(status.items()))}"
        )
        failures += not (same_table and same_bytes)
    print("identical" if failures == 0 else f"{failures} output(s) differ")
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="step", required=True)
    q = sub.add_parser("queries")
    q.add_argument("folder", type=Path)
    r = sub.add_parser("run")
    r.add_argument("queries", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--exe", type=Path, default=Path(sys.executable).with_name("gmcf-batch"))
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.step == "queries":
        write_queries(args.folder)
    elif args.step == "run":
        run_all(args.queries, args.out, args.exe)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
