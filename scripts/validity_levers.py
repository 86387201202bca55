"""Validity of an explainer on fixed held-out rows its classifier rejects, for a given classifier
kind and training configuration: the measurement behind the lever table of docs/design.md.

Trains (or reuses) f on the seeded 80% of a shipped data set: the paper's reference MLP
(``mlp``), or a class-balanced gradient-boosted model on the tool's own encoding exported to
ONNX (``hgb``: scikit-learn's HistGradientBoostingClassifier through skl2onnx; ``lgbm``:
LightGBM through onnxmltools; both from the ``gbm`` extra). Then trains the explainer with
``TrainConfig`` overrides, writes the bundle, explains the held-out 20% with the torch-free
runtime and prints one Markdown row: rows f rejects, validity (confirmed by the bundle's own f),
proximity L2, L0 and the share of the counterfactuals found by each search kind; also the
validity of the walk alone (the last-resort search off).

    python scripts/validity_levers.py adult --classifier hgb --epochs 20 -o /tmp/vl/adult-hgb
    python scripts/validity_levers.py adult --classifier hgb --epochs 20 --set lambda_tie=1 \\
        -o /tmp/vl/adult-hgb-tie
    python scripts/validity_levers.py --bundle /tmp/vl/adult-hgb --search fallback=false

Every run appends its figures as one JSON line to ``--log`` (default /tmp/vl/levers.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gmcf.datasets import load_dataset
from gmcf.runtime import Explainer
from gmcf.runtime.search import SEARCH_KINDS
from gmcf.trainer.fit import TrainConfig
from gmcf.trainer.gbm import gbm_classifier
from gmcf.trainer.prepare import prepare


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(_value(t) for t in text.split(","))
    return text


def _settings(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        out[key.strip()] = _value(val.strip())
    return out


def measure(bundle: Path, search: dict[str, Any]) -> dict[str, Any]:
    """Explain the bundle's own held-out rows; figures over the rows its f rejects."""
    ex = Explainer.from_bundle(bundle, **search)
    m = ex.bundle.manifest
    ds = load_dataset(str(m.dataset))
    cfg = m.train_config
    p = prepare(ds, cfg["test_size"], cfg["seed"])
    held = ds.table.take(pa.array(p.test_rows))
    t0 = time.perf_counter()
    out = ex.explain(held)
    seconds = time.perf_counter() - t0
    status = np.asarray(out.column("status").to_pylist())
    found = status == "found"
    searched = int(found.sum() + (status == "not_found").sum())
    kinds = np.asarray([k or "" for k in out.column("search").to_pylist()])
    evals = out.column("evaluations").to_numpy(zero_copy_only=False)
    # Confirmed by the model itself: f of the returned row, read back through the preprocessing.
    pre = ex.bundle.preprocessor
    cf_tab = (
        out.filter(pa.array(found)).select([f"cf_{n}" for n in pre.names]).rename_columns(pre.names)
    )
    x_cf, _ = pre.transform(cf_tab)
    confirmed = int((ex.engine.score(x_cf) >= ex.settings.threshold).sum()) if len(x_cf) else 0
    # The walk alone (no last resort), on the same rows: the explainer's own share.
    off = Explainer.from_bundle(bundle, **{**search, "fallback": False}).explain(held)
    st_off = np.asarray(off.column("status").to_pylist())
    rep = ex.bundle.report
    return {
        "validity_walk": float((st_off == "found").sum() / searched) if searched else float("nan"),
        "bundle": str(bundle),
        "dataset": m.dataset,
        "search": search,
        "rejected": searched,
        "validity": confirmed / searched if searched else float("nan"),
        "found": int(found.sum()),
        "l2": float(np.mean(out.column("proximity_l2").to_numpy(zero_copy_only=False)[found])),
        "l0": float(np.mean(out.column("sparsity_l0").to_numpy(zero_copy_only=False)[found])),
        "kinds": {k: float((kinds[found] == k).mean()) for k in SEARCH_KINDS},
        "evaluations_per_searched": float(evals[found | (status == "not_found")].mean()),
        "seconds": round(seconds, 3),
        "probe": rep.get("z_u_probe", {}).get("balanced_accuracy"),
        "probe_majority": rep.get("z_u_probe", {}).get("majority_rate"),
        "agreement": rep.get("gm_posterior_agreement"),
        "selected_epoch": rep.get("model_selection", {}).get("selected_epoch"),
        "train_config": cfg,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dataset", nargs="?", default="adult")
    ap.add_argument("--classifier", default="mlp", help="mlp, hgb or lgbm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--epochs", type=int, default=None, help="explainer epochs (default: TrainConfig's)"
    )
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field"
    )
    ap.add_argument(
        "--search", action="append", default=[], metavar="KEY=VALUE", help="a search setting"
    )
    ap.add_argument("-o", "--out", type=Path, help="bundle folder to write")
    ap.add_argument("--bundle", type=Path, help="measure this bundle instead of training one")
    ap.add_argument("--label", default="", help="the row's label in the table")
    ap.add_argument("--log", type=Path, default=Path("/tmp/vl/levers.jsonl"))
    args = ap.parse_args()
    search = _settings(args.search)
    if args.bundle is None:
        from gmcf.trainer.export import adapt_classifier  # noqa: F401 - fail early without the trainer
        from gmcf.trainer.pipeline import train_models, write_bundle

        if args.out is None:
            raise SystemExit("give -o/--out for the bundle (or --bundle to measure one)")
        overrides = _settings(args.set)
        known = {f.name for f in fields(TrainConfig)}
        if set(overrides) - known:
            raise SystemExit(f"unknown TrainConfig field(s): {sorted(set(overrides) - known)}")
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        cfg = TrainConfig(seed=args.seed, **overrides)
        ds = load_dataset(args.dataset)
        clf_model = None
        from gmcf.runtime.errors import InputError
        from gmcf.trainer.gbm import check_classifier

        try:
            check_classifier(args.classifier)
        except InputError as exc:
            raise SystemExit(str(exc)) from None
        if args.classifier != "mlp":
            cache = (
                args.log.parent
                / "classifiers"
                / f"{args.dataset}-{args.classifier}-{args.seed}.onnx"
            )
            if cache.exists():
                import onnx

                clf_model = onnx.load(str(cache))
            else:
                p = prepare(ds, cfg.test_size, cfg.seed)
                clf_model = gbm_classifier(args.classifier, p.x_train, p.y_train, args.seed)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(clf_model.SerializeToString())
        t0 = time.time()
        trained = train_models(ds, cfg, clf_model)
        write_bundle(
            trained, ds, args.out, cfg, clf_model is not None, "scripts/validity_levers.py"
        )
        print(f"trained in {time.time() - t0:.0f} s -> {args.out}")
        bundle = args.out
    else:
        bundle = args.bundle
    r = measure(bundle, search)
    r["classifier"] = args.classifier if args.bundle is None else "?"
    r["label"] = args.label
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as fh:
        fh.write(json.dumps(r) + "\n")
    kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["kinds"].items() if v > 0)
    probe = "" if r["probe"] is None else f"{r['probe']:.3f} ({r['probe_majority']:.3f})"
    agree = "" if r["agreement"] is None else f"{100 * r['agreement']:.1f}%"
    print(
        f"| {args.label or bundle} | {r['rejected']:,} | {100 * r['validity_walk']:.1f}% | "
        f"{100 * r['validity']:.1f}% | {r['l2']:.3f} | {r['l0']:.2f} | {kinds} | "
        f"{r['evaluations_per_searched']:.1f} | {probe} | {agree} |"
    )


if __name__ == "__main__":
    main()
