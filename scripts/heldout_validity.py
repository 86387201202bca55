"""Validity of a bundle on the held-out rows of its own training split.

Rebuilds the bundle's 80/20 split from its manifest (seed, test size), explains the held-out
rows, and prints, per setting, validity (the share of rows f rejects that get a counterfactual),
mean proximity and sparsity of the counterfactuals, the share that satisfy the constraints, and
with K options per query, their diversity (``gmcf.runtime.metrics.option_diversity``).

    python scripts/heldout_validity.py exported/adult exported/lending-club
    python scripts/heldout_validity.py exported/adult --tols 0.1,0.2,0.3,0.5 --constrained
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.datasets import load_dataset
from gmcf.runtime import Explainer
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.metrics import option_diversity
from gmcf.trainer.paper import PAPER_VALIDITY
from gmcf.trainer.prepare import prepare

ADULT_CONSTRAINTS = {"age": {"direction": "increase"}, "education": {"immutable": True}}


def evaluate(path: str, held: pa.Table, label: str, **kw: Any) -> None:
    ex = Explainer.from_bundle(path, **kw)
    t = time.perf_counter()
    out = ex.explain(held)
    dt = time.perf_counter() - t
    status = out.column("status").to_numpy(zero_copy_only=False).astype(str)
    rank = (
        out.column("cf_rank").to_numpy(zero_copy_only=False)
        if "cf_rank" in out.column_names
        else None
    )
    first = np.ones(len(status), bool) if rank is None else (np.isnan(rank) | (rank == 1))
    found = (status == "found") & first
    searched = found.sum() + ((status == "not_found") & first).sum()
    f = out.filter(pc.equal(out.column("status"), "found"))
    pre = ex.bundle.preprocessor
    x, _ = pre.transform(f.select(pre.names))
    cf_cols = f.select([f"cf_{n}" for n in pre.names]).rename_columns(pre.names)
    x_cf, _ = pre.transform(cf_cols)
    sat = ex.constraints.satisfied(pre, x, x_cf).mean() if ex.constraints else float("nan")
    options = diversity = ""
    if rank is not None:
        qid = np.cumsum(first) - 1
        per_query = np.bincount(qid, weights=(status == "found"))[found[first]]
        options = f"{per_query.mean():.2f}"
        l2, l0, multi = option_diversity(pre, qid[status == "found"], x_cf)
        diversity = f"{l2:.3f} / {l0:.2f} ({multi:,} queries)"
    print(
        f"| {label} | {searched:,} | {100 * found.sum() / searched:.1f}% | "
        f"{np.mean(f.column('proximity_l2').to_numpy()):.3f} | "
        f"{np.mean(f.column('sparsity_l1').to_numpy()):.3f} | "
        f"{np.mean(f.column('sparsity_l0').to_numpy()):.2f} | "
        f"{'' if np.isnan(sat) else f'{100 * sat:.1f}%'} | {options} | {diversity} | {dt:.2f} s |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundles", nargs="*", default=["exported/adult", "exported/lending-club"])
    ap.add_argument("--tols", default="", help="comma-separated tolerances to compare")
    ap.add_argument(
        "--constrained",
        action="store_true",
        help="also run Adult with age increase-only, education immutable, and K = 3",
    )
    args = ap.parse_args()
    print(
        "| bundle / setting | rejected by f | validity | proximity L2 | sparsity L1 | L0 | satisfy "
        "constraints | options per query | diversity L2 / features (queries with >= 2) | time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.bundles:
        ex = Explainer.from_bundle(path)
        m = ex.bundle.manifest
        ds = load_dataset(str(m.dataset))
        cfg = m.train_config
        p = prepare(ds, cfg["test_size"], cfg["seed"])
        held = ds.table.take(pa.array(p.test_rows))
        name = str(m.dataset)
        evaluate(path, held, f"{name}, defaults (paper: {PAPER_VALIDITY.get(name, float('nan'))}%)")
        for tol in [float(t) for t in args.tols.split(",") if t]:
            evaluate(path, held, f"{name}, tol {tol:g}", tol=tol)
        if args.constrained and name == "adult":
            c = Constraints.from_dict(ADULT_CONSTRAINTS)
            evaluate(path, held, f"{name}, age increase-only, education immutable", constraints=c)
            evaluate(path, held, f"{name}, K = 3", num_cfs=3)
            evaluate(path, held, f"{name}, constrained, K = 3", constraints=c, num_cfs=3)


if __name__ == "__main__":
    main()
