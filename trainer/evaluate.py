"""The paper's evaluation protocol (appendix .5) on one dataset, with GDL and the peers.

Per repetition: a fresh seeded 80/20 split; the classifier f and the explainer trained on the
80% (``train_models``) and exported as a bundle; the judge autoencoder and GDL's VAE trained on
the same 80%; the held-out rows f rejects are the queries. GMCF explains them with the torch-free
runtime at the paper's T = 0.5 and the bundle's other search settings; GDL and the peers (in their
own environment, see bench/peers/) get the same queries, capped at ``max_queries`` per repetition.
Every returned row is scored by the exported ONNX f, and every method is measured by the same
functions (``gmcf.runtime.metrics``) in the model's input space.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gmcf.datasets import Dataset
from gmcf.runtime.errors import InputError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.metrics import changed_features, outside_band, proximity_l2, sparsity_l1, ynn
from gmcf.runtime.plausibility import log_density
from gmcf.runtime.schema import ImagePreprocessor
from gmcf.runtime.write import write_text
from gmcf.trainer.baselines import (
    AEConfig,
    Autoencoder,
    GDLConfig,
    ImageJudge,
    autoencoder_error,
    gdl_search,
    train_autoencoder,
    train_image_judge,
)
from gmcf.trainer.export import HardDecode
from gmcf.trainer.fit import TrainConfig
from gmcf.trainer.gbm import (
    DESCRIPTIONS,
    StandInConfig,
    check_classifier,
    fit_stand_in,
    gbm_classifier,
)
from gmcf.trainer.morphology import style_agreement
from gmcf.trainer.paper import PAPER
from gmcf.trainer.pipeline import Callbacks, Trained, train_models, write_bundle
from gmcf.trainer.prepare import prepare

#: Methods measured in this process, and the peers run in the optional peers environment.
OWN_METHODS = ("gmcf", "gdl")
PEER_METHODS = ("dice-random", "dice-genetic", "cfrl", "prototype")
#: Peers that take seconds per query: they attempt only ``slow_queries`` of the capped queries.
SLOW_METHODS = ("prototype",)
METHODS = OWN_METHODS + PEER_METHODS
ROOT = Path(__file__).resolve().parent.parent
PEERS_SCRIPT = ROOT / "bench" / "peers" / "run_peers.py"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS_MISSING = (
    "peers environment not installed ({python}); install it with: bash bench/peers/setup.sh"
)

#: Per-repetition figures of a method, in the order of the tables.
METRICS = (
    ("time_single", "time/query, one at a time (s)"),
    ("time_batched", "time/query, batched (s)"),
    ("recon_explainer", "reconstruction, explainer AE"),
    ("recon_judge", "reconstruction, judge AE"),
    ("sparsity_l1", "sparsity L1"),
    ("sparsity_l0", "L0"),
    ("validity", "validity (%)"),
    ("proximity_l2", "proximity L2"),
    ("plausibility", "plausibility"),
    ("ynn", "yNN"),
    ("outside_band", "outside band (%)"),
)
#: Nearest training rows of yNN.
YNN_K = 5

#: Image datasets only: does the counterfactual read as the target class to a CNN trained on the
#: true labels (``ImageJudge``), and does it keep the query's stem slant and thickness
#: (``gmcf.trainer.morphology``; Pearson r over the repetition's valid counterfactuals)?
IMAGE_METRICS = (
    ("read_as_target", "read as the target by a CNN (%)"),
    ("slant_r", "slant r"),
    ("thickness_r", "thickness r"),
)


@dataclass(frozen=True)
class EvalConfig:
    reps: int = 5
    methods: tuple[str, ...] = ("gmcf", "gdl")
    seed: int = 0
    max_queries: int = 200
    """Queries per repetition for every method but GMCF (which explains all rejected rows and is
    also reported on the same capped queries)."""
    single_queries: int = 200
    """Queries timed one at a time (the paper's setting) per repetition and method."""
    slow_queries: int = 20
    """Queries per repetition for the slow peers (``SLOW_METHODS``), a subset of the capped ones."""
    cfrl_steps: int = 2000
    """Training steps of alibi's CounterfactualRL (alibi's default: 100,000)."""
    rows: int | None = None
    """Use a seeded sample of this many rows of the dataset (quick runs and tests)."""
    classifier: str = "mlp"
    """The kind of f trained per repetition (``gmcf.trainer.gbm.CLASSIFIERS``): the paper's
    reference MLP, or a gradient-boosted model exported to ONNX (``hgb``, ``lgbm``)."""
    stand_in: StandInConfig = StandInConfig()  # noqa: RUF009
    """The differentiable stand-in GDL descends on when f is a tree ensemble."""
    train: TrainConfig = TrainConfig()  # noqa: RUF009 - frozen dataclass
    judge: AEConfig = AEConfig()  # noqa: RUF009
    vae: AEConfig = AEConfig(beta=0.1)  # noqa: RUF009
    gdl: GDLConfig = GDLConfig()  # noqa: RUF009
    peers_python: Path = PEERS_PYTHON
    peers_timeout: float = 3600.0
    threshold: float = 0.5
    """The paper's T (the decision boundary) for every method, whatever the bundle's default."""
    tol: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peers_python"] = str(self.peers_python)
        return d


def check_methods(methods: tuple[str, ...]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(METHODS)}"
        )
    if not methods:
        raise InputError(f"no method given; choose from: {', '.join(METHODS)}")


@dataclass
class MethodRun:
    """One method in one repetition: its figures, or why it failed."""

    method: str
    rep: int
    ok: bool = True
    error: str | None = None
    queries: int = 0
    valid: int = 0
    capped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    query_sd: dict[str, float] = field(default_factory=dict)
    """Standard deviation over the queries of the repetition, per metric."""
    seconds: float = 0.0


@dataclass
class Evaluation:
    dataset: str
    config: EvalConfig
    runs: list[MethodRun] = field(default_factory=list)
    reps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    command: str = ""

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per method: mean and SD over the repetitions that succeeded, and the failures."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.method_rows():
            runs = [r for r in self.runs if r.method == name]
            ok = [r for r in runs if r.ok]
            row: dict[str, Any] = {
                "reps_ok": len(ok),
                "reps_failed": len(runs) - len(ok),
                "errors": [f"rep {r.rep}: {r.error}" for r in runs if not r.ok],
                "queries": [r.queries for r in ok],
                "capped": any(r.capped for r in ok),
            }
            for key, _ in self.metric_names():
                vals = np.array([r.metrics[key] for r in ok if key in r.metrics], dtype=float)
                vals = vals[np.isfinite(vals)]
                row[key] = mean_sd(vals)
            out[name] = row
        return out

    def metric_names(self) -> tuple[tuple[str, str], ...]:
        """``METRICS``, and ``IMAGE_METRICS`` when a run measured them (image datasets)."""
        images = any("read_as_target" in r.metrics for r in self.runs)
        return METRICS + IMAGE_METRICS if images else METRICS

    def method_rows(self) -> list[str]:
        seen: list[str] = []
        for r in self.runs:
            if r.method not in seen:
                seen.append(r.method)
        return seen

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "classifier": self.config.classifier,
            "command": self.command,
            "config": self.config.to_dict(),
            "machine": machine(),
            "seconds": round(self.seconds, 1),
            "summary": self.summary(),
            "reps": self.reps,
            "runs": [asdict(r) for r in self.runs],
            "paper": PAPER.get(self.dataset, {}),
        }

    def to_markdown(self) -> str:
        return render_markdown(self)


def _from_dict(cls: Any, d: dict[str, Any]) -> Any:
    """A config dataclass from its ``asdict`` form (JSON lists back to tuples, nested configs
    rebuilt); keys it does not know are ignored, missing ones keep their defaults."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v, default = d[f.name], getattr(cls(), f.name)
        if is_dataclass(default):
            v = _from_dict(type(default), v)
        elif isinstance(default, tuple):
            v = tuple(v)
        elif isinstance(default, Path):
            v = Path(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def load_evaluation(path: Path) -> Evaluation:
    """An evaluation back from its JSON file (to render or merge it again), with its settings."""
    d = json.loads(Path(path).read_text())
    cfg = _from_dict(EvalConfig, d["config"])
    runs = [MethodRun(**r) for r in d["runs"]]
    return Evaluation(d["dataset"], cfg, runs, d["reps"], d["seconds"], d.get("command", ""))


def merge_evaluations(parts: list[Evaluation]) -> Evaluation:
    """Repetitions of one protocol run by several processes (``--seed`` ranges that do not
    overlap, the same settings otherwise) as one evaluation; repetition r is seed base + r."""
    first = parts[0]
    base = min(e.config.seed for e in parts)
    for e in parts[1:]:
        if e.dataset != first.dataset or replace(e.config, seed=0, reps=0) != replace(
            first.config, seed=0, reps=0
        ):
            raise InputError(
                "only runs of the same dataset and settings (but --seed, --reps) can be merged"
            )
    runs: list[MethodRun] = []
    reps: list[dict[str, Any]] = []
    for e in parts:
        off = e.config.seed - base
        runs += [replace(r, rep=r.rep + off) for r in e.runs]
        reps += [{**info, "rep": info["rep"] + off} for info in e.reps]
    seeds = [info["seed"] for info in reps]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"the runs share seeds: {sorted(seeds)}")
    runs.sort(key=lambda run: (_order(run.method), run.rep))
    reps.sort(key=lambda info: info["rep"])
    cfg = replace(first.config, seed=base, reps=len(reps))
    return Evaluation(
        first.dataset,
        cfg,
        runs,
        reps,
        sum(e.seconds for e in parts),
        " ; ".join(e.command for e in parts),
    )


def mean_sd(values: np.ndarray) -> list[float] | None:
    """[mean, SD] (sample SD, 0 for one value), or None without values."""
    if values.size == 0:
        return None
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return [float(values.mean()), sd]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    return info


def _fmt(v: list[float] | None, key: str) -> str:
    if v is None:
        return "–"
    if key in ("validity", "read_as_target", "outside_band"):
        return f"{v[0]:.1f}±{v[1]:.1f}"
    if key.startswith("time"):
        return f"{v[0]:.2g}±{v[1]:.1g}" if v[0] < 0.01 else f"{v[0]:.3f}±{v[1]:.3f}"
    if key == "sparsity_l0":
        return f"{v[0]:.2f}±{v[1]:.2f}"
    if key.startswith("recon"):
        return f"{v[0]:.4f}±{v[1]:.4f}"
    return f"{v[0]:.3f}±{v[1]:.3f}"


def render_markdown(ev: Evaluation) -> str:
    cfg = ev.config
    s = ev.summary()
    metrics = ev.metric_names()
    head = "| method | reps | queries/rep | " + " | ".join(label for _, label in metrics) + " |"
    kind = cfg.classifier
    lines = [
        f"### {ev.dataset}, f = {kind} ({DESCRIPTIONS.get(kind, kind)}): {cfg.reps} "
        "repetition(s), mean ± SD over repetitions",
        "",
        head,
        "|" + "---|" * 3 + "---:|" * len(metrics),
    ]
    for name, row in s.items():
        q = row["queries"]
        qtext = f"{int(np.mean(q)):,}" if q else "–"
        if row["capped"]:
            qtext += f" (capped at {cfg.slow_queries if name in SLOW_METHODS else cfg.max_queries})"
        reps = f"{row['reps_ok']}/{row['reps_ok'] + row['reps_failed']}"
        lines.append(
            f"| {name} | {reps} | {qtext} | "
            + " | ".join(_fmt(row[k], k) for k, _ in metrics)
            + " |"
        )
    agree = [r.metrics["stand_in_agreement"] for r in ev.runs if "stand_in_agreement" in r.metrics]
    if agree:
        lines += [
            "",
            f"GDL descends on a torch MLP fitted to f (f = {kind} has no gradient); its agreement "
            f"with f's decisions on the held-out rows: {100 * np.mean(agree):.1f}% (mean over "
            f"{len(agree)} repetition(s)). f itself decides when GDL stops and judges its rows.",
        ]
    paper = PAPER.get(ev.dataset)
    if paper and kind == "mlp":
        lines += [
            "",
            "The paper's table (time, reconstruction, sparsity, validity %, proximity):",
            "",
            "| method | time (s) | reconstruction | sparsity | validity (%) | proximity |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {m} | " + " | ".join(v) + " |" for m, v in paper.items()]
    failed = [f"- {name}, {e}" for name, row in s.items() for e in row["errors"]]
    if failed:
        lines += ["", "Failed:", "", *failed]
    lines += ["", f"Wall time {ev.seconds / 60:.1f} min. Command: `{ev.command}`"]
    return "\n".join(lines) + "\n"


# -- one repetition --------------------------------------------------------------------------------
@dataclass
class Rep:
    """What one repetition shares among the methods."""

    index: int
    trained: Trained
    explainer: Explainer
    queries: pa.Table  # raw held-out rows that f rejects, label dropped
    x: np.ndarray  # the same rows in model space
    capped: np.ndarray  # indices into queries: the capped subset, in order
    timed: np.ndarray  # indices into queries: the rows timed one at a time
    slow: np.ndarray  # indices into queries: the rows the slow peers attempt
    judge: Autoencoder
    folder: Path
    image_judge: ImageJudge | None = None
    train_approved: np.ndarray | None = None  # f(x_train) >= T, for yNN


def _score_rows(
    rep: Rep, run: MethodRun, rows: np.ndarray, cf: np.ndarray, returned: np.ndarray
) -> None:
    """Fill ``run`` from counterfactuals ``cf`` of the queries ``rows`` (NaN-free where
    ``returned``). A counterfactual counts as valid when the ONNX f scores it at >= T."""
    ex = rep.explainer
    t = ex.settings.threshold
    x = rep.x[rows]
    valid = returned.copy()
    if returned.any():
        valid[returned] = ex.engine.score(np.ascontiguousarray(cf[returned], dtype=np.float32)) >= t
    run.queries, run.valid = int(rows.size), int(valid.sum())
    run.metrics["validity"] = 100.0 * valid.mean() if rows.size else float("nan")
    if valid.any():
        xv, cv = x[valid], np.ascontiguousarray(cf[valid], dtype=np.float32)
        per_row = {
            "proximity_l2": proximity_l2(xv, cv),
            "sparsity_l1": sparsity_l1(xv, cv),
            "sparsity_l0": changed_features(ex.bundle.preprocessor, xv, cv).astype(float),
            "recon_explainer": ex.engine.reconstruction_error(cv).astype(float),
            "recon_judge": autoencoder_error(rep.judge, cv),
        }
        pre = ex.bundle.preprocessor
        per_row.update(_advice_metrics(rep, xv, cv))
        for key, vals in per_row.items():
            run.metrics[key] = float(np.mean(vals))
            run.query_sd[key] = float(np.std(vals))
        if rep.image_judge is not None and isinstance(pre, ImagePreprocessor):
            run.metrics["read_as_target"] = 100.0 * float(
                (rep.image_judge.predict(cv) > 0.5).mean()
            )
            style = style_agreement(xv, cv, pre.image.shape)
            run.metrics["slant_r"], run.metrics["thickness_r"] = (
                style["slant_r"],
                style["thickness_r"],
            )


def _advice_metrics(rep: Rep, x: np.ndarray, cf: np.ndarray) -> dict[str, np.ndarray]:
    """Per valid counterfactual: plausibility (log-density of its latent code under the target
    class's Gaussian), yNN (share of its nearest training rows f approves) and whether a value
    lies outside the training band [p0.5, p99.5] where the query's was inside (%, per row)."""
    ex = rep.explainer
    pre = ex.bundle.preprocessor
    latent = ex.bundle.manifest.latent
    out = {
        "plausibility": log_density(
            ex.engine.latent(cf), np.asarray(latent.mu_1), np.asarray(latent.var_1)
        ).astype(float)
    }
    if isinstance(pre, ImagePreprocessor):
        return out
    if rep.train_approved is not None:
        out["ynn"] = ynn(cf, rep.trained.prepared.x_train, rep.train_approved, YNN_K)
    lo, hi = pre.bands()
    n = pre.n_numeric
    out["outside_band"] = 100.0 * outside_band(x[:, :n], cf[:, :n], lo - 1e-6, hi + 1e-6).any(
        axis=1
    ).astype(float)
    return out


def _cf_rows(out: pa.Table, ex: Explainer) -> tuple[np.ndarray, np.ndarray]:
    """Model-space counterfactuals of an explanation table, and which rows have one."""
    pre = ex.bundle.preprocessor
    found = np.asarray(out.column("status").to_numpy(zero_copy_only=False) == "found")
    cf, _ = pre.transform(pa.table({f.name: out.column(f"cf_{f.name}") for f in pre.features}))
    return cf, found


def _time_each(run: MethodRun, rows: np.ndarray, explain_one: Callable[[int], object]) -> None:
    """The paper's time per query: each of ``rows`` explained on its own; mean and SD."""
    times = []
    for i in rows:
        t0 = time.perf_counter()
        explain_one(int(i))
        times.append(time.perf_counter() - t0)
    run.metrics["time_single"] = float(np.mean(times)) if times else float("nan")
    run.query_sd["time_single"] = float(np.std(times)) if times else float("nan")


#: GMCF's row without the last-resort search: the paper's walk (with refinement and extrapolation).
WALK_ONLY = "gmcf (walk only)"


def run_gmcf(rep: Rep, capped_only: bool, walk_only: bool = False) -> MethodRun:
    ex = rep.explainer
    if walk_only:
        ex = replace(ex, settings=replace(ex.settings, fallback=False))
    n = rep.queries.num_rows
    name = WALK_ONLY if walk_only else "gmcf (same queries)" if capped_only else "gmcf"
    run = MethodRun(name, rep.index)
    t0 = time.perf_counter()
    out = ex.explain(rep.queries)
    batched = (time.perf_counter() - t0) / max(n, 1)
    cf, found = _cf_rows(out, ex)
    rows = rep.capped if capped_only else np.arange(n)
    run.capped = capped_only and rep.capped.size < n
    _score_rows(rep, run, rows, cf[rows], found[rows])
    _time_each(run, rep.timed, lambda i: ex.explain(rep.queries.slice(i, 1)))
    run.metrics["time_batched"] = batched
    return run


def _decode_near(vae: Autoencoder, pre: Any) -> Callable[[np.ndarray, float, int], np.ndarray]:
    """Hard-decoded rows from the VAE's latent codes of ``x`` plus Gaussian noise of SD ``sd``."""
    hard_decode = HardDecode(pre)

    def decode(x: np.ndarray, sd: float, seed: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = vae.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            z = z + sd * torch.randn(z.shape, generator=gen)
            cont, logits = vae.decoder.raw(vae.decoder.body(z))
            return np.asarray(hard_decode(cont, logits).numpy())

    return decode


def run_gdl(rep: Rep, cfg: EvalConfig, vae: Autoencoder) -> MethodRun:
    run = MethodRun("gdl", rep.index, capped=rep.capped.size < rep.queries.num_rows)
    pre = rep.explainer.bundle.preprocessor
    clf = rep.trained.classifier
    judge = None
    if clf is None:
        if cfg.classifier == "mlp":
            raise InputError(
                "GDL needs the torch classifier the trainer trained (not a user's ONNX classifier)"
            )
        # A tree ensemble has no gradient: descend on a torch MLP fitted to f's scores; f itself
        # decides when a row has arrived (and judges the rows, as for every method).
        p = rep.trained.prepared
        judge = rep.explainer.engine.score
        t0 = time.perf_counter()
        clf, agreement = fit_stand_in(
            judge,
            pre,
            p.x_train,
            p.x_test,
            _decode_near(vae, pre),
            cfg.seed + rep.index + 700,
            cfg.stand_in,
        )
        run.metrics["stand_in_seconds"] = time.perf_counter() - t0
        run.metrics["stand_in_agreement"] = agreement["held_out"]
        run.metrics.update({f"stand_in_agreement_{k}": v for k, v in agreement.items()})
    s = rep.explainer.settings
    x = rep.x[rep.capped]
    t0 = time.perf_counter()
    res = gdl_search(vae, clf, pre, x, s.threshold, s.tol, cfg.gdl, judge)
    run.metrics["time_batched"] = (time.perf_counter() - t0) / max(len(x), 1)
    _score_rows(rep, run, rep.capped, res.cf, res.found)
    _time_each(
        run,
        rep.timed,
        lambda i: gdl_search(vae, clf, pre, rep.x[i : i + 1], s.threshold, s.tol, cfg.gdl, judge),
    )
    run.metrics["gdl_steps"] = float(res.steps.mean()) if res.steps.size else float("nan")
    return run


def run_peers(
    rep: Rep, cfg: EvalConfig, methods: list[str], ds: Dataset, log: Callable[[str], None]
) -> list[MethodRun]:
    """Measure the peers in their own environment, as a subprocess, on the capped queries."""
    runs = [MethodRun(m, rep.index, capped=rep.capped.size < rep.queries.num_rows) for m in methods]
    python = Path(cfg.peers_python)
    if not python.exists():
        for r in runs:
            r.ok, r.error = False, PEERS_MISSING.format(python=python)
        return runs
    folder = rep.folder / "peers"
    folder.mkdir(parents=True, exist_ok=True)
    p = rep.trained.prepared
    pre = p.pre
    train = ds.table.take(pa.array(p.train_rows)).select(pre.names)
    train = train.append_column("y_hat", pa.array(rep.trained.y_hat_train))
    pq.write_table(train, folder / "train.parquet")
    pq.write_table(rep.queries.take(pa.array(rep.capped)), folder / "queries.parquet")
    timed_pos = np.searchsorted(rep.capped, rep.timed[np.isin(rep.timed, rep.capped)])
    np.save(folder / "slow.npy", np.searchsorted(rep.capped, rep.slow))
    s = rep.explainer.settings
    cmd = [
        str(python),
        str(PEERS_SCRIPT),
        "--bundle",
        str(rep.explainer.bundle.path),
        "--work",
        str(folder),
        "--methods",
        ",".join(methods),
        "--threshold",
        str(s.threshold),
        "--seed",
        str(cfg.seed + rep.index),
        "--slow",
        str(folder / "slow.npy"),
        "--cfrl-steps",
        str(cfg.cfrl_steps),
    ]
    log(f"rep {rep.index + 1}: peers {', '.join(methods)} on {rep.capped.size} queries")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=cfg.peers_timeout, env=env, check=False
    )
    for r in runs:
        res = folder / f"{r.method}.npz"
        err = folder / f"{r.method}.error"
        if err.exists():
            r.ok, r.error = False, err.read_text().strip().splitlines()[-1]
        elif res.exists():
            with np.load(res) as d:
                cf, seconds, batched = d["cf"], d["seconds"], float(d["batched_seconds"])
                if "setup_seconds" in d:
                    r.metrics["setup_seconds"] = float(d["setup_seconds"])
            tried = ~np.isnan(seconds)
            returned = ~np.isnan(cf).any(axis=1)
            r.capped = int(tried.sum()) < rep.queries.num_rows
            _score_rows(rep, r, rep.capped[tried], np.nan_to_num(cf[tried]), returned[tried])
            r.metrics["time_batched"] = batched / max(int(tried.sum()), 1)
            timed = np.intersect1d(timed_pos, np.nonzero(tried)[0])
            r.metrics["time_single"] = float(np.mean(seconds[timed if timed.size else tried]))
            r.query_sd["time_single"] = float(np.std(seconds[tried]))
        else:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            r.ok, r.error = (
                False,
                f"peer runner exited {proc.returncode}: {tail[-1] if tail else 'no output'}",
            )
    return runs


def _log_training(log: Callable[[str], None], rep: int) -> Callbacks:
    current = {"stage": ""}
    steps = {"done": 0, "total": 0}

    def stage(name: str, total: int) -> None:
        current["stage"] = name
        steps.update(done=0, total=total)

    def advance(text: str) -> None:
        steps["done"] += 1
        done, total = steps["done"], steps["total"]
        if current["stage"] == "explainer" and (done % 10 == 0 or done == total):
            log(f"rep {rep + 1}: explainer epoch {done}/{total} ({text})")

    return Callbacks(stage, advance)


def evaluate(
    ds: Dataset,
    cfg: EvalConfig = EvalConfig(),
    work_dir: Path | None = None,
    log: Callable[[str], None] = lambda text: None,
    command: str = "",
    on_rep: Callable[[Evaluation], None] | None = None,
) -> Evaluation:
    """Run the protocol; failures of a repetition or a method are recorded, never raised.
    ``on_rep`` sees the evaluation so far after every repetition (to save partial results)."""
    check_methods(cfg.methods)
    check_classifier(cfg.classifier)
    if cfg.reps < 1:
        raise InputError(f"reps must be at least 1, got {cfg.reps}")
    if cfg.max_queries < 1:
        raise InputError(f"max-queries must be at least 1, got {cfg.max_queries}")
    if cfg.rows is not None:
        if cfg.rows < 10:
            raise InputError(f"rows must be at least 10, got {cfg.rows}")
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(ds.table.num_rows)[: cfg.rows])
        mask = None if ds.test_mask is None else ds.test_mask[idx]
        ds = replace(ds, table=ds.table.take(pa.array(idx)), test_mask=mask)
    torch.set_num_threads(cfg.train.threads)
    ev = Evaluation(ds.name, cfg, command=command)
    t_start = time.perf_counter()
    own = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="gmcf-eval-")) if work_dir is None else work_dir
    root.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(cfg.methods))
    try:
        for r in range(cfg.reps):
            t_rep = time.perf_counter()
            try:
                rep = _prepare_rep(ds, cfg, r, root / f"rep{r}", log)
            except Exception as exc:
                log(f"rep {r + 1}: FAILED: {_one_line(exc)}")
                rows = (
                    [*methods, "gmcf (same queries)", WALK_ONLY] if "gmcf" in methods else methods
                )
                ev.runs += [MethodRun(m, r, ok=False, error=_one_line(exc)) for m in rows]
                ev.reps.append(
                    {
                        "rep": r,
                        "seed": cfg.seed + r,
                        "failed": _one_line(exc),
                        "traceback": traceback.format_exc(limit=5),
                    }
                )
                continue
            info = {
                "rep": r,
                "seed": cfg.seed + r,
                "train_rows": len(rep.trained.prepared.x_train),
                "test_rows": len(rep.trained.prepared.x_test),
                "rejected": rep.queries.num_rows,
                "capped": int(rep.capped.size),
                "timed": int(rep.timed.size),
                "classifier": {"kind": cfg.classifier, **rep.trained.report["classifier"]},
                "explainer_reconstruction_mse_test": rep.trained.report["reconstruction_mse"],
                "judge_reconstruction_mse_test": float(
                    np.mean(autoencoder_error(rep.judge, rep.trained.prepared.x_test))
                ),
                "z_u_probe": rep.trained.report["z_u_probe"],
                "search": {
                    "threshold": rep.explainer.settings.threshold,
                    "tol": rep.explainer.settings.tol,
                },
            }
            peers = [m for m in methods if m in PEER_METHODS]
            for m in [m for m in methods if m in OWN_METHODS]:
                t0 = time.perf_counter()
                try:
                    if m == "gmcf":
                        runs = [
                            run_gmcf(rep, False),
                            run_gmcf(rep, True),
                            run_gmcf(rep, False, walk_only=True),
                        ]
                    else:
                        vae = train_autoencoder(
                            rep.trained.prepared.x_train,
                            rep.trained.prepared.pre,
                            cfg.vae,
                            cfg.seed + r + 500,
                            variational=True,
                        )
                        runs = [run_gdl(rep, cfg, vae)]
                except Exception as exc:
                    runs = [MethodRun(m, r, ok=False, error=_one_line(exc))]
                for run in runs:
                    run.seconds = time.perf_counter() - t0
                    log(f"rep {r + 1}: {_run_line(run)}")
                ev.runs += runs
            if peers:
                t0 = time.perf_counter()
                try:
                    runs = run_peers(rep, cfg, peers, ds, log)
                except Exception as exc:
                    runs = [MethodRun(m, r, ok=False, error=_one_line(exc)) for m in peers]
                for run in runs:
                    run.seconds = time.perf_counter() - t0
                    log(f"rep {r + 1}: {_run_line(run)}")
                ev.runs += runs
            info["seconds"] = round(time.perf_counter() - t_rep, 1)
            ev.reps.append(info)
            if on_rep is not None:
                ev.seconds = time.perf_counter() - t_start
                on_rep(ev)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    ev.runs.sort(key=lambda run: (_order(run.method), run.rep))
    ev.seconds = time.perf_counter() - t_start
    return ev


def _order(method: str) -> int:
    names = ["gmcf", "gmcf (same queries)", WALK_ONLY, *METHODS[1:]]
    return names.index(method) if method in names else len(names)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _run_line(run: MethodRun) -> str:
    if not run.ok:
        return f"{run.method} FAILED: {run.error}"
    m = run.metrics
    return (
        f"{run.method}: {run.queries} queries, validity {m.get('validity', float('nan')):.1f}%, "
        f"proximity {m.get('proximity_l2', float('nan')):.3f}, "
        f"{m.get('time_single', float('nan')):.4f} s/query ({run.seconds:.0f} s)"
    )


def _prepare_rep(
    ds: Dataset, cfg: EvalConfig, r: int, folder: Path, log: Callable[[str], None]
) -> Rep:
    seed = cfg.seed + r
    tcfg = replace(cfg.train, seed=seed)
    log(
        f"rep {r + 1}/{cfg.reps}: training f ({cfg.classifier}) and the explainer (seed {seed}, "
        f"{tcfg.epochs} epochs)"
    )
    t0 = time.perf_counter()
    clf_model = None
    if cfg.classifier != "mlp":
        # f on this repetition's 80%, on the tool's own encoding, given to the explainer's
        # training as a user's ONNX classifier is.
        p = prepare(ds, tcfg.test_size, seed)
        clf_model = gbm_classifier(cfg.classifier, p.x_train, p.y_train, seed)
    trained = train_models(ds, tcfg, clf_model, callbacks=_log_training(log, r))
    bundle = write_bundle(
        trained,
        ds,
        folder / "bundle",
        tcfg,
        clf_model is not None,
        f"gmcf-batch evaluate (rep {r}, seed {seed}, classifier {cfg.classifier})",
    )
    log(f"rep {r + 1}: trained in {time.perf_counter() - t0:.0f} s; training the judge autoencoder")
    judge = train_autoencoder(
        trained.prepared.x_train, trained.prepared.pre, cfg.judge, seed + 1000
    )
    ex = Explainer.from_bundle(bundle.path, threshold=cfg.threshold, tol=cfg.tol)
    p = trained.prepared
    score = ex.engine.score(p.x_test)
    rejected = np.nonzero(score < ex.settings.threshold)[0]
    if rejected.size == 0:
        raise InputError("f rejects no held-out row: nothing to explain")
    label = ds.schema.label
    held = ds.table.take(pa.array(p.test_rows[rejected]))
    queries = held.drop_columns([label]) if label in held.column_names else held
    order = np.random.default_rng(seed + 2000).permutation(rejected.size)
    capped = np.sort(order[: cfg.max_queries])
    timed = np.sort(order[: min(cfg.single_queries, cfg.max_queries)])
    slow = np.sort(order[: min(cfg.slow_queries, cfg.max_queries)])
    log(f"rep {r + 1}: {p.x_test.shape[0]:,} held-out rows, f rejects {rejected.size:,}")
    image_judge = None
    if isinstance(p.pre, ImagePreprocessor):
        log(f"rep {r + 1}: training the CNN judge on the true labels")
        image_judge = train_image_judge(p.x_train, p.y_train, p.pre.image.shape, seed + 3000)
    approved = (
        None if image_judge is not None else ex.engine.score(p.x_train) >= ex.settings.threshold
    )
    return Rep(
        r,
        trained,
        ex,
        queries,
        p.x_test[rejected],
        capped,
        timed,
        slow,
        judge,
        folder,
        image_judge,
        approved,
    )


def write_results(ev: Evaluation, path: Path) -> tuple[Path, Path]:
    """``path`` as JSON and the same stem as Markdown, each written to a temporary file and
    renamed."""
    js, md = path.with_suffix(".json"), path.with_suffix(".md")
    write_text(js, json.dumps(ev.to_json(), indent=2) + "\n")
    write_text(md, ev.to_markdown())
    return js, md
