"""Run peer counterfactual methods on the queries `gmcf-batch evaluate` wrote, in the peers
environment (.venv-peers, see setup.sh). Not part of the project's package: it imports DiCE
and alibi, which the project never depends on.

    .venv-peers/bin/python bench/peers/run_peers.py --bundle REP/bundle --work REP/peers \\
        --methods dice-random,dice-genetic --threshold 0.5 --seed 0

Reads WORK/train.parquet (training rows and f's labels ``y_hat``) and WORK/queries.parquet
(the queries). f is the bundle's ONNX classifier, wrapped as ``predict_proba`` on raw rows
through the bundle's own preprocessing. For each method writes WORK/METHOD.npz: ``cf``
[n, width] counterfactuals in the model's input space (NaN rows where none was returned),
``seconds`` [n] per query (NaN where not attempted), ``batched_seconds`` (one batch call where the
method has one, else the sum over the queries), ``setup_seconds`` (fitting and training, not
counted per query); or WORK/METHOD.error with the reason.
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
from gmcf.runtime.metrics import harden
from gmcf.runtime.schema import Preprocessor


class OnnxClassifier:
    """The bundle's f as a scikit-learn style model on raw feature rows."""

    def __init__(self, bundle: Path) -> None:
        b = load_bundle(bundle)
        self.pre: Preprocessor = b.preprocessor
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(
            str(b.graph_path("classifier")), opts, providers=["CPUExecutionProvider"]
        )

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        table = pa.Table.from_pandas(
            df[self.pre.names].reset_index(drop=True), preserve_index=False
        )
        for f in self.pre.categorical:
            table = table.set_column(
                table.schema.get_field_index(f.name), f.name, table.column(f.name).cast(pa.string())
            )
        x, _ = self.pre.transform(table)
        return x

    def score_x(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0], dtype=np.float64
        )

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        p = self.score_x(self.encode(df))
        return np.stack([1 - p, p], axis=1)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(df)[:, 1] >= 0.5).astype(int)


def run_dice(
    method: str, clf: OnnxClassifier, train: pd.DataFrame, queries: pd.DataFrame, seed: int
) -> tuple[np.ndarray, np.ndarray]:
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
            if (
                "No counterfactuals found" not in str(exc)
                and "could not find" not in str(exc).lower()
            ):
                print(
                    f"{method} query {i}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}",
                    file=sys.stderr,
                )
            out = None
        seconds[i] = time.perf_counter() - t0
        if out is not None and len(out):
            cf[i] = clf.encode(out.iloc[[0]])[0]
    return cf, seconds


def run_prototype(
    method: str, clf: OnnxClassifier, train: pd.DataFrame, queries: pd.DataFrame, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """alibi's CounterfactualProto (TensorFlow 1 graph mode) on the model's input space with f as
    a black box (numerical gradients), k-d tree prototypes, the settings of alibi's Adult
    example (beta 0.01, theta 10, 500 iterations, c_init 1, 5 c steps, eps 0.01)."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.set_random_seed(seed)
    from alibi.explainers import CounterfactualProto

    pre = clf.pre
    x_train = clf.encode(train)
    xq = clf.encode(queries)
    cat_vars, offset = {}, pre.n_numeric
    for k in pre.cat_sizes:
        cat_vars[offset] = k
        offset += k

    def predict(x: np.ndarray) -> np.ndarray:
        p = clf.score_x(x)
        return np.stack([1 - p, p], axis=1)

    width = pre.width
    explainer = CounterfactualProto(
        predict,
        (1, width),
        beta=0.01,
        theta=10.0,
        cat_vars=cat_vars,
        ohe=True,
        use_kdtree=True,
        feature_range=(0.0, 1.0),
        max_iterations=500,
        c_init=1.0,
        c_steps=5,
        eps=(0.01, 0.01),
    )
    explainer.fit(x_train, d_type="abdm", disc_perc=[25, 50, 75])
    cf = np.full((len(xq), width), np.nan, np.float32)
    seconds = np.full(len(xq), np.nan)
    for i in _positions(len(xq)):
        t0 = time.perf_counter()
        exp = explainer.explain(xq[i : i + 1], target_class=[1])
        seconds[i] = time.perf_counter() - t0
        if exp.cf is not None:
            cf[i] = harden(pre, np.asarray(exp.cf["X"], np.float32).reshape(1, -1))[0]
    return cf, seconds


def run_cfrl(
    method: str, clf: OnnxClassifier, train: pd.DataFrame, queries: pd.DataFrame, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """alibi's CounterfactualRLTabular, torch backend, with alibi's Adult models (HeAE of
    ADULTEncoder/ADULTDecoder, hidden 128, latent 15), sparsity and consistency coefficients
    0.5, trained for CFRL_STEPS steps (alibi's default is 100,000)."""
    import torch
    from alibi.explainers import CounterfactualRLTabular
    from alibi.explainers.backends.cfrl_tabular import get_he_preprocessor
    from alibi.models.pytorch.autoencoder import HeAE
    from alibi.models.pytorch.cfrl_models import ADULTDecoder, ADULTEncoder

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    pre = clf.pre
    names = pre.names
    cat_idx = [names.index(f.name) for f in pre.categorical]
    category_map = {j: list(f.categories) for j, f in zip(cat_idx, pre.categorical, strict=True)}
    numeric_types = {f.name: int for f in pre.numeric if f.kind == "integer"}

    def to_codes(df: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(df), len(names)), np.float64)
        for j, f in enumerate(pre.features):
            col = df[f.name]
            out[:, j] = (
                pd.Categorical(col.astype(str), categories=list(f.categories)).codes
                if not f.is_numeric
                else col.astype(float)
            )
        return out

    def to_frame(x: np.ndarray) -> pd.DataFrame:
        cols = {}
        for j, f in enumerate(pre.features):
            cols[f.name] = (
                [f.categories[int(v)] for v in x[:, j]]
                if not f.is_numeric
                else x[:, j].astype(float)
            )
        return pd.DataFrame(cols)

    def predictor(x: np.ndarray) -> np.ndarray:
        p = clf.score_x(clf.encode(to_frame(x)))
        return np.stack([1 - p, p], axis=1)

    x_train = to_codes(train)
    enc_pre, dec_inv = get_he_preprocessor(x_train, names, category_map, numeric_types)
    x_ohe = enc_pre(x_train).astype(np.float32)
    n_num = pre.n_numeric
    targets = [torch.from_numpy(x_ohe[:, :n_num])] + [
        torch.from_numpy(x_train[:, j].astype(np.int64)) for j in cat_idx
    ]
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x_ohe), *targets)

    class _Loader:
        def __iter__(self):  # type: ignore[no-untyped-def]
            for batch in torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True):
                yield batch[0], list(batch[1:])

        def __len__(self) -> int:
            return (len(ds) + 127) // 128

    heae = HeAE(
        encoder=ADULTEncoder(hidden_dim=128, latent_dim=15),
        decoder=ADULTDecoder(hidden_dim=128, output_dims=[n_num, *pre.cat_sizes]),
    )
    heae(torch.zeros(1, x_ohe.shape[1]))  # materialise the lazy layers
    heae.compile(
        optimizer=torch.optim.Adam(heae.parameters(), lr=1e-3),
        loss=[torch.nn.MSELoss()] + [torch.nn.CrossEntropyLoss()] * len(cat_idx),
        loss_weights=[1.0] + [1.0 / max(1, len(cat_idx))] * len(cat_idx),
        metrics={},
    )
    heae.fit(trainloader=_Loader(), epochs=CFRL_AE_EPOCHS)
    explainer = CounterfactualRLTabular(
        predictor=predictor,
        encoder=heae.encoder,
        decoder=heae.decoder,
        latent_dim=15,
        encoder_preprocessor=enc_pre,
        decoder_inv_preprocessor=dec_inv,
        coeff_sparsity=0.5,
        coeff_consistency=0.5,
        category_map=category_map,
        feature_names=names,
        ranges={},
        immutable_features=[],
        train_steps=CFRL_STEPS,
        batch_size=100,
        backend="pytorch",
        seed=seed,
        num_workers=0,
    )
    explainer.fit(X=x_train)
    xq = to_codes(queries)
    cf = np.full((len(xq), pre.width), np.nan, np.float32)
    seconds = np.zeros(len(xq))
    t0 = time.perf_counter()
    explainer.explain(xq, Y_t=np.array([1]), C=[])
    BATCHED["seconds"] = time.perf_counter() - t0
    for i in range(len(xq)):
        t0 = time.perf_counter()
        exp = explainer.explain(xq[i : i + 1], Y_t=np.array([1]), C=[])
        seconds[i] = time.perf_counter() - t0
        row = np.asarray(exp.data["cf"]["X"]).reshape(1, -1)
        cf[i] = harden(pre, clf.encode(to_frame(row)))[0]
    return cf, seconds


RUNNERS = {
    "dice-random": run_dice,
    "dice-genetic": run_dice,
    "prototype": run_prototype,
    "cfrl": run_cfrl,
}
CFRL_STEPS = 2000
CFRL_AE_EPOCHS = 10
SLOW: dict[str, np.ndarray] = {}
#: A runner with a batch API records the time of one call on all its queries here.
BATCHED: dict[str, float] = {}


def _positions(n: int) -> np.ndarray:
    """Queries a slow method attempts: SLOW['positions'] if given, else all."""
    pos = SLOW.get("positions")
    return np.arange(n) if pos is None else pos


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--slow", type=Path, help=".npy of query positions that slow methods (prototype) attempt"
    )
    ap.add_argument("--cfrl-steps", type=int, default=2000, help="CounterfactualRL training steps")
    ap.add_argument(
        "--cfrl-ae-epochs", type=int, default=10, help="epochs of CounterfactualRL's autoencoder"
    )
    args = ap.parse_args()
    global CFRL_STEPS, CFRL_AE_EPOCHS
    CFRL_STEPS, CFRL_AE_EPOCHS = args.cfrl_steps, args.cfrl_ae_epochs
    if args.slow is not None:
        SLOW["positions"] = np.load(args.slow)
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
            err.write_text(
                f"the peer runner does not know method {method!r}; known: {', '.join(RUNNERS)}\n"
            )
            continue
        print(f"{method}: {len(queries)} queries", file=sys.stderr, flush=True)
        try:
            BATCHED.clear()
            t0 = time.perf_counter()
            cf, seconds = RUNNERS[method](method, clf, train, queries, args.seed)
            total = time.perf_counter() - t0
            # without a batch API the batched time is the loop over the queries; set-up and
            # training (CounterfactualRL's, the prototypes' k-d trees) are reported apart
            batched = BATCHED.get("seconds", float(np.nansum(seconds)))
            tmp = args.work / f".{method}.{os.getpid()}.npz"
            np.savez(
                tmp,
                cf=cf,
                seconds=seconds,
                batched_seconds=batched,
                setup_seconds=total - float(np.nansum(seconds)) - BATCHED.get("seconds", 0.0),
            )
            os.replace(tmp, res)
        except Exception as exc:
            traceback.print_exc()
            err.write_text(
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
            )


if __name__ == "__main__":
    main()
