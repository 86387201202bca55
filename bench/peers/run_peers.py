"""Run peer counterfactual methods on the queries `gmcf-batch evaluate` wrote, in the peers
environment (.venv-peers, see setup.sh). Not part of the project's package: it imports DiCE
and alibi, which the project never depends on.

    .venv-peers/bin/python bench/peers/run_peers.py --bundle REP/bundle --work REP/peers \\
        --methods dice-random,dice-genetic --threshold 0.5 --seed 0

Reads WORK/train.parquet (training rows and f's labels ``y_hat``) and WORK/queries.parquet
(the queries). f is the bundle's ONNX classifier, wrapped as ``predict_proba`` on raw rows
through the bundle's own preprocessing. For each method writes WORK/METHOD.npz: ``cf``
[n, width] counterfactuals in the model's input space (NaN rows where none was returned),
``seconds`` [n] per query, ``batched_seconds``; or WORK/METHOD.error with the reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime.bundle import load_bundle
from gmcf.runtime.schema import Preprocessor


class OnnxClassifier:
    """The bundle's f as a scikit-learn style model on raw feature rows."""

    def __init__(self, bundle: Path) -> None:
        b = load_bundle(bundle)
        self.pre: Preprocessor = b.preprocessor
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(b.graph_path("classifier")), opts, providers=["CPUExecutionProvider"])

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        table = pa.Table.from_pandas(df[self.pre.names].reset_index(drop=True), preserve_index=False)
        for f in self.pre.categorical:
            table = table.set_column(table.schema.get_field_index(f.name), f.name, table.column(f.name).cast(pa.string()))
        x, _ = self.pre.transform(table)
        return x

    def score_x(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0], dtype=np.float64)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        p = self.score_x(self.encode(df))
        return np.stack([1 - p, p], axis=1)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(df)[:, 1] >= 0.5).astype(int)


def run_dice(method: str, clf: OnnxClassifier, train: pd.DataFrame, queries: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import dice_ml

    pre = clf.pre
    numeric = [f.name for f in pre.numeric]
    frame = train[[*pre.names, "y_hat"]].copy()
    for f in pre.categorical:
        frame[f.name] = frame[f.name].astype(str)
    data = dice_ml.Data(dataframe=frame, continuous_features=numeric, outcome_name="y_hat")
    model = dice_ml.Model(model=clf, backend="sklearn")
    explainer = dice_ml.Dice(data, model, method=method.split("-", 1)[1])
    cf = np.full((len(queries), pre.width), np.nan, np.float32)
    seconds = np.zeros(len(queries))
    for i in range(len(queries)):
        q = queries.iloc[[i]][pre.names].copy()
        for f in pre.categorical:
            q[f.name] = q[f.name].astype(str)
        t0 = time.perf_counter()
        try:
            kw: dict[str, Any] = {"total_CFs": 1, "desired_class": 1, "verbose": False}
            if method == "dice-random":
                kw["random_seed"] = seed + i
            res = explainer.generate_counterfactuals(q, **kw)
            out = res.cf_examples_list[0].final_cfs_df
        except Exception as exc:  # DiCE raises when it finds nothing for a query
            if "No counterfactuals found" not in str(exc) and "could not find" not in str(exc).lower():
                print(f"{method} query {i}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
            out = None
        seconds[i] = time.perf_counter() - t0
        if out is not None and len(out):
            cf[i] = clf.encode(out.iloc[[0]])[0]
    return cf, seconds


RUNNERS = {"dice-random": run_dice, "dice-genetic": run_dice}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    clf = OnnxClassifier(args.bundle)
    train = pq.read_table(args.work / "train.parquet").to_pandas()
    queries = pq.read_table(args.work / "queries.parquet").to_pandas()
    for method in args.methods.split(","):
        err = args.work / f"{method}.error"
        res = args.work / f"{method}.npz"
        err.unlink(missing_ok=True)
        res.unlink(missing_ok=True)
        if method not in RUNNERS:
            err.write_text(f"the peer runner does not know method {method!r}; known: {', '.join(RUNNERS)}\n")
            continue
        print(f"{method}: {len(queries)} queries", file=sys.stderr, flush=True)
        try:
            t0 = time.perf_counter()
            cf, seconds = RUNNERS[method](method, clf, train, queries, args.seed)
            batched = time.perf_counter() - t0
            tmp = args.work / f".{method}.{os.getpid()}.npz"
            np.savez(tmp, cf=cf, seconds=seconds, batched_seconds=batched)
            os.replace(tmp, res)
        except Exception as exc:
            traceback.print_exc()
            err.write_text(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")


if __name__ == "__main__":
    main()
