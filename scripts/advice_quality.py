"""Would a loan officer accept the advice? Counterfactual quality of a bundle on its held-out rows.

Rebuilds the bundle's seeded 80/20 split of a shipped dataset, explains the held-out rows the
bundle's classifier f rejects (default settings), with and without the revert step, and reports:
validity; L0 (features changed), L1 and L2 of the change in min-max units (numeric features
scaled by their training range, one-hot categories: the paper's space, the same for every
bundle whatever its own scaling); plausibility (the ``plausibility`` column, comparable within
a bundle); yNN (share of the 5 nearest training rows that f approves); the share of
counterfactuals with a value outside the training band [p0.5, p99.5] where the query was inside
(and the share of such values); the share of counterfactuals whose income is the training
minimum (if the data has ``annual_inc``); education and education-num agreeing (if the data has
both); rows/s of the explanation.

    python scripts/advice_quality.py /tmp/advice/after/book --dataset lending-club-book
    python scripts/advice_quality.py exported/adult --dataset adult --json out.json

Works on bundles written before per-feature transforms existed (they scale min-max).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.datasets import load_dataset
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.metrics import outside_band, ynn
from gmcf.runtime.schema import Preprocessor
from gmcf.runtime.transforms import fit_band


def split(n: int, seed: int, test_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The trainer's seeded split (``gmcf.trainer.prepare``): (train rows, test rows)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_size))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def minmax_space(pre: Preprocessor, table: pa.Table, prefix: str = "") -> np.ndarray:
    """Rows in the paper's space: numeric values min-max scaled over the training range, one-hot
    categories (for distances that mean the same for every bundle)."""
    cols = []
    for f in pre.numeric:
        v = np.asarray(table.column(prefix + f.name).to_numpy(zero_copy_only=False), np.float64)
        span = (f.hi - f.lo) if f.hi > f.lo else 1.0  # type: ignore[operator]
        cols.append(((v - f.lo) / span)[:, None])
    for f in pre.categorical:
        v = np.asarray(
            table.column(prefix + f.name).cast(pa.string()).to_numpy(zero_copy_only=False)
        )
        cols.append((v[:, None] == np.array(f.categories)[None, :]).astype(np.float64))
    return np.concatenate(cols, axis=1)


def raw(table: pa.Table, names: list[str], prefix: str = "") -> np.ndarray:
    return np.stack(
        [
            np.asarray(table.column(prefix + n).to_numpy(zero_copy_only=False), np.float64)
            for n in names
        ],
        1,
    )


def measure(bundle: Path, dataset: str, revert: bool, k: int = 5) -> dict[str, Any]:
    ds = load_dataset(dataset)
    ex = Explainer.from_bundle(bundle, revert=revert)
    pre = ex.bundle.preprocessor
    tc = ex.bundle.manifest.train_config
    train_rows, test_rows = split(ds.table.num_rows, int(tc["seed"]), float(tc["test_size"]))
    test = ds.table.take(pa.array(test_rows))
    x, reason = pre.transform(test)
    usable = np.asarray(reason == None, bool)  # noqa: E711
    score = ex.engine.score(x)
    rejected = np.nonzero(usable & (score < ex.settings.threshold))[0]
    queries = test.take(pa.array(rejected))
    t0 = time.perf_counter()
    out = ex.explain(queries)
    seconds = time.perf_counter() - t0
    status = np.asarray(out.column("status").to_numpy(zero_copy_only=False))
    found = status == "found"
    hit = out.filter(pa.array(found))
    num = [f.name for f in pre.numeric]
    train = ds.table.take(pa.array(train_rows))
    train_raw = raw(train, num)
    bands = np.array([fit_band(train_raw[:, j]) for j in range(len(num))]).T  # [2, features]
    q_raw, c_raw = raw(hit, num), raw(hit, num, "cf_")
    outside = outside_band(q_raw, c_raw, bands[0], bands[1])
    q_mm, c_mm = minmax_space(pre, hit), minmax_space(pre, hit, "cf_")
    d = c_mm - q_mm
    x_train, _ = pre.transform(train)
    approved = ex.engine.score(x_train) >= ex.settings.threshold
    res: dict[str, Any] = {
        "bundle": str(bundle),
        "dataset": dataset,
        "revert": revert,
        "rejected": int(rejected.size),
        "found": int(found.sum()),
        "validity": 100.0 * float(found.mean()),
        "l0": float(np.mean(out.column("sparsity_l0").to_numpy(zero_copy_only=False)[found])),
        "l1": float(np.abs(d).sum(1).mean()),
        "l2": float(np.sqrt((d**2).sum(1)).mean()),
        "plausibility": float(
            np.mean(out.column("plausibility").to_numpy(zero_copy_only=False)[found])
        ),
        "ynn": float(ynn(c_mm, minmax_space(pre, train), approved, k).mean()),
        "outside_band_rows": 100.0 * float(outside.any(axis=1).mean()),
        "outside_band_values": 100.0
        * float(outside.sum() / max(1, ((q_raw >= bands[0]) & (q_raw <= bands[1])).sum())),
        "outside_by_feature": {n: 100.0 * float(outside[:, j].mean()) for j, n in enumerate(num)},
        "rows_per_s": rejected.size / seconds,
    }
    if "reverted" in out.column_names:
        res["reverted"] = float(
            np.mean(out.column("reverted").to_numpy(zero_copy_only=False)[found])
        )
    if "annual_inc" in num:
        res["income_at_min"] = 100.0 * float(
            (
                c_raw[:, num.index("annual_inc")] == train_raw[:, num.index("annual_inc")].min()
            ).mean()
        )
    if "education-num" in num and "education" in hit.column_names:
        pairs = set(
            zip(
                pc.cast(train.column("education"), pa.string()).to_pylist(),
                train.column("education-num").to_pylist(),
                strict=True,
            )
        )
        got = zip(
            hit.column("cf_education").cast(pa.string()).to_pylist(),
            hit.column("cf_education-num").to_pylist(),
            strict=True,
        )
        res["education_agree"] = 100.0 * float(np.mean([p in pairs for p in got]))
    return res


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    if isinstance(v, int | float):
        return f"{int(v):,}"
    return str(v)


def examples(bundle: Path, dataset: str, n: int, seed: int = 0) -> str:
    """``n`` held-out applicants f rejects (a seeded draw) and their advice, as a loan officer
    reads it: each changed feature, from -> to, and f's score before and after."""
    ds = load_dataset(dataset)
    ex = Explainer.from_bundle(bundle)
    pre = ex.bundle.preprocessor
    tc = ex.bundle.manifest.train_config
    _, test_rows = split(ds.table.num_rows, int(tc["seed"]), float(tc["test_size"]))
    test = ds.table.take(pa.array(test_rows))
    x, _ = pre.transform(test)
    rejected = np.nonzero(ex.engine.score(x) < ex.settings.threshold)[0]
    pick = np.sort(np.random.default_rng(seed).choice(rejected, n, replace=False))
    out = ex.explain(test.take(pa.array(pick)))
    lines = ["| applicant | advice | f before -> after |", "|---|---|---|"]
    for i, row in enumerate(out.to_pylist()):
        changes = [
            f"{f.name} {_fmt_value(row[f.name])} -> {_fmt_value(row['cf_' + f.name])}"
            for f in pre.features
            if row["status"] == "found" and row[f.name] != row["cf_" + f.name]
        ]
        advice = "; ".join(changes) if changes else f"({row['status']}: {row['reason']})"
        after = f"{row['cf_score']:.2f}" if row["cf_score"] is not None else "–"
        lines.append(f"| {int(test_rows[pick[i]])} | {advice} | {row['score']:.2f} -> {after} |")
    return "\n".join(lines)


COLUMNS = (
    ("validity", "validity %", ".1f"),
    ("l0", "L0", ".2f"),
    ("l1", "L1", ".3f"),
    ("l2", "L2", ".3f"),
    ("plausibility", "plausibility", ".2f"),
    ("ynn", "yNN", ".3f"),
    ("outside_band_rows", "outside band, % of CFs", ".2f"),
    ("outside_band_values", "outside band, % of values", ".2f"),
    ("income_at_min", "income at min %", ".2f"),
    ("education_agree", "education agrees %", ".1f"),
    ("reverted", "reverted", ".2f"),
    ("rows_per_s", "rows/s", ",.0f"),
)


def table(results: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r for r in results)]
    lines = [
        "| bundle | revert | rejected | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|---:|" + "---:|" * len(cols),
    ]
    for r in results:
        cells = [format(r[key], fmt) if key in r else "" for key, _, fmt in cols]
        lines.append(
            f"| {r['bundle']} | {'on' if r['revert'] else 'off'} | {r['rejected']:,} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--dataset", required=True, help="shipped dataset the bundles were trained on")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument(
        "--examples",
        type=int,
        default=0,
        help="print this many applicants and their advice instead",
    )
    args = ap.parse_args()
    if args.examples:
        for b in args.bundles:
            print(examples(b, args.dataset, args.examples))
        return
    results = [measure(b, args.dataset, rv) for b in args.bundles for rv in (False, True)]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
