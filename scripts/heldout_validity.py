"""Validity of a bundle on the held-out rows of its own training split.

Rebuilds the bundle's 80/20 split from its manifest (seed, test size), explains the held-out
rows with the bundle's default search settings, and prints validity: the share of the rows f
rejects that get a counterfactual scored at or above the threshold (within tol).

    python scripts/heldout_validity.py exported/adult exported/lending-club
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from gmcf.datasets import load_dataset
from gmcf.runtime import Explainer
from gmcf.trainer.prepare import prepare

PAPER = {"adult": 90.3, "lending-club": 92.1}


def main(paths: list[str]) -> None:
    for path in paths:
        ex = Explainer.from_bundle(path)
        m = ex.bundle.manifest
        ds = load_dataset(m["dataset"])
        cfg = m["train_config"]
        p = prepare(ds, cfg["test_size"], cfg["seed"])
        held = ds.table.take(pa.array(p.test_rows))
        t = time.perf_counter()
        out = ex.explain(held)
        dt = time.perf_counter() - t
        st = Counter(out.column("status").to_pylist())
        searched = st["found"] + st["not_found"]
        kinds = Counter(k for k in out.column("search").to_pylist() if k)
        found = out.filter(pa.compute.equal(out.column("status"), "found"))
        print(
            f"{m['dataset']}: {held.num_rows:,} held-out rows, {searched:,} rejected by f; "
            f"validity {100 * st['found'] / searched:.1f}% (paper {PAPER.get(m['dataset'], float('nan'))}%); "
            f"found by {dict(kinds)}; mean proximity {np.mean(found.column('proximity_l2').to_numpy()):.3f}, "
            f"mean L0 {np.mean(found.column('sparsity_l0').to_numpy()):.2f}; {dt:.2f} s"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["exported/adult", "exported/lending-club"])
