"""Why a bundle's counterfactuals are missing: validity on the held-out rows of its own split at
the defaults and with the walk extrapolated to alpha 4, how many misses never crossed the
threshold, and the training report's z_u leakage and GM agreement. One Markdown row per bundle.

    python scripts/validity_misses.py WORK/rep0/bundle WORK/rep1/bundle ...

(`gmcf-batch evaluate --work-dir WORK` keeps each repetition's bundle.) Adult bundles only.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

from gmcf.datasets import load_dataset
from gmcf.runtime import Explainer
from gmcf.trainer.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundles", nargs="+", help="bundle folders of Adult evaluation repetitions")
    args = ap.parse_args()
    ds = load_dataset("adult")
    print(
        "| rep (seed) | rejected by f | validity | misses: path never crossed T | validity, "
        "extrapolating to alpha 4 | z_u probe balanced accuracy (majority rate) | GM posterior "
        "agrees with f | checkpoint kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for b in args.bundles:
        ex = Explainer.from_bundle(b)
        cfg = ex.bundle.manifest.train_config
        p = prepare(ds, cfg["test_size"], cfg["seed"])
        held = ds.table.take(pa.array(p.test_rows)).drop_columns(["income"])
        row = []
        for kw in ({}, {"max_alpha": 4.0}):
            out = Explainer.from_bundle(b, **kw).explain(held)
            st = np.array(out.column("status").to_pylist())
            rs = np.array([r or "" for r in out.column("reason").to_pylist()])
            searched = (st == "found").sum() + (st == "not_found").sum()
            row.append(
                (
                    (st == "found").sum() / searched,
                    (
                        (st == "not_found") & np.char.startswith(rs.astype(str), "the path never")
                    ).sum(),
                    (st == "not_found").sum(),
                    searched,
                )
            )
        r = ex.bundle.report
        pr = r["z_u_probe"]
        print(
            f"| {cfg['seed']} | {row[0][3]:,} | {100 * row[0][0]:.1f}% | {row[0][1]:,} of "
            f"{row[0][2]:,} | {100 * row[1][0]:.1f}% | {pr['balanced_accuracy']:.3f} "
            f"({pr['majority_rate']:.3f}) | {100 * r['gm_posterior_agreement']:.1f}% | "
            f"{r['model_selection']['selected_epoch']} |"
        )


if __name__ == "__main__":
    main()
