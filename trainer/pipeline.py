"""The whole training step: data -> classifier f -> Algorithm 1 -> report -> bundle folder."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from gmcf.datasets import Dataset
from gmcf.runtime.bundle import GRAPHS, MANIFEST, sha256_file
from gmcf.runtime.errors import InputError
from gmcf.runtime.manifest import Latent, Manifest
from gmcf.runtime.schema import ImagePreprocessor, Preprocessor
from gmcf.runtime.settings import RunSettings
from gmcf.runtime.write import atomic_path
from gmcf.trainer.anchors import select_anchors
from gmcf.trainer.export import export_classifier, export_graphs, save
from gmcf.trainer.fit import (
    TrainConfig,
    _balanced_accuracy,
    fit_gmcf,
    probe_leakage,
    train_classifier,
)
from gmcf.trainer.images import default_search, image_networks
from gmcf.trainer.levers import lever_hooks
from gmcf.trainer.model import GMCF
from gmcf.trainer.prepare import Prepared, label_classes, prepare
from gmcf.trainer.quality import gate_warnings, measure_quality
from gmcf.trainer.screen import ScreenConfig, distillation_set, fit_screen, screen_graphs
from gmcf.trainer.user_model import ClassifierSpec, label_with_user_model, load_model_file

#: The last-resort search's anchors in a bundle (``gmcf.runtime.fallback``).
ANCHORS_FILE = "anchors.npy"


@dataclass
class Callbacks:
    """Progress hooks for a front end (the CLI draws bars from them)."""

    stage: Callable[[str, int], None] = lambda name, total: None
    advance: Callable[[str], None] = lambda text: None


@dataclass
class TrainResult:
    path: Path
    report: dict[str, Any]
    manifest: Manifest


def _run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["score"], {"x": x})[0])


def build_report(
    model: GMCF,
    p: Prepared,
    f_train: np.ndarray,
    f_test: np.ndarray,
    losses: dict[str, float],
    cfg: TrainConfig,
    seconds: float,
) -> dict[str, Any]:
    yh_train = (f_train >= 0.5).astype(np.int64)
    yh_test = (f_test >= 0.5).astype(np.int64)
    with torch.no_grad():
        xt = torch.from_numpy(p.x_test)
        z, zu = model.encoder(xt), model.encoder_u(xt)
        xr = model.decoder(torch.cat([z, zu], 1)).numpy()
        post = model.posterior_logits(z).argmax(1).numpy()
        zu_train = model.encoder_u(torch.from_numpy(p.x_train)).numpy()
    return {
        "rows": {"train": len(p.x_train), "test": len(p.x_test)},
        "final_losses": {k: round(v, 6) for k, v in losses.items()},
        "classifier": {
            "accuracy": float((yh_test == p.y_test).mean()),
            "balanced_accuracy": _balanced_accuracy(p.y_test, yh_test),
            "positive_rate_train": float(yh_train.mean()),
        },
        "reconstruction_mse": float(((xr - p.x_test) ** 2).mean()),
        "gm_posterior_agreement": float((post == yh_test).mean()),
        "z_u_probe": probe_leakage(
            zu_train, yh_train, zu.numpy(), yh_test, cfg.seed, cfg.probe_epochs
        ),
        "seconds": round(seconds, 1),
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("gmcf-batch", "torch", "onnx", "onnxruntime", "numpy", "pyarrow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def networks_for(
    pre: Preprocessor, cfg: TrainConfig
) -> Callable[[], tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]] | None:
    """Convolutional networks for an image schema; None (the tabular MLPs) otherwise."""
    if not isinstance(pre, ImagePreprocessor):
        return None
    shape = pre.image.shape
    return lambda: image_networks(shape, cfg.latent_dim, cfg.latent_u_dim)


@dataclass
class Trained:
    """Everything one training run produced, before it is written as a bundle."""

    prepared: Prepared
    classifier_onnx: onnx.ModelProto
    classifier: torch.nn.Module | None
    """The torch classifier when the trainer trained it (None for a user's ONNX classifier)."""
    model: GMCF
    y_hat_train: np.ndarray
    report: dict[str, Any]
    validation_rows: np.ndarray | None = None
    """Indices into ``prepared.x_train`` of the rows held out of Algorithm 1 for model
    selection (None when there are none); the quality gate explains them."""


def load_classifier(classifier: Path) -> onnx.ModelProto:
    return load_model_file(classifier)


def train_models(
    ds: Dataset,
    cfg: TrainConfig = TrainConfig(),  # noqa: B008 - frozen dataclass
    clf_model: onnx.ModelProto | None = None,
    callbacks: Callbacks | None = None,
    classifier_spec: ClassifierSpec | None = None,
) -> Trained:
    """Split ``ds`` (seeded), train f (unless given) and the explainer on the training part.

    A given classifier is checked (inputs, outputs, a run on training rows, fusion with a search
    graph) before any training; see ``gmcf.trainer.user_model``."""
    cb = callbacks or Callbacks()
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    p = prepare(ds, cfg.test_size, cfg.seed)
    width = p.pre.width
    clf = None
    user_report = None
    if clf_model is None:
        cb.stage("classifier", cfg.classifier_epochs * cfg.classifier_restarts)
        clf = train_classifier(p.x_train, p.y_train, cfg, progress=cb.advance)
        clf_onnx = export_classifier(clf, width)
        f_train = _run_onnx(clf_onnx, p.x_train)
        f_test = _run_onnx(clf_onnx, p.x_test)
    else:
        labelled = label_with_user_model(clf_model, ds, p, classifier_spec or ClassifierSpec())
        clf_onnx, f_train, f_test, user_report = (
            labelled.onnx_model,
            labelled.f_train,
            labelled.f_test,
            labelled.report,
        )
    y_hat = (f_train >= 0.5).astype(np.int64)
    if y_hat.min() == y_hat.max():
        raise InputError(
            f"the classifier predicts class {int(y_hat[0])} for every training row; "
            "there is nothing to explain"
        )
    cb.stage("explainer", cfg.epochs)

    def on_epoch(epoch: int, losses: dict[str, float]) -> None:
        cb.advance(" ".join(f"{k} {v:.3f}" for k, v in losses.items()))

    fit_idx = np.arange(len(p.x_train))
    validation = None
    val_idx = None
    if cfg.select_every > 0 and cfg.validation_size > 0:
        perm = np.random.default_rng(cfg.seed + 3).permutation(len(p.x_train))
        n_val = max(1, round(len(perm) * cfg.validation_size))
        val_idx, fit_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        validation = (p.x_train[val_idx], y_hat[val_idx])
    judge, walk = lever_hooks(
        cfg, p.pre, clf, clf_onnx, p.x_train[fit_idx], f_train[fit_idx], validation
    )
    model, hist = fit_gmcf(
        p.x_train[fit_idx],
        y_hat[fit_idx],
        p.pre.n_numeric,
        p.pre.cat_sizes,
        cfg,
        on_epoch,
        validation,
        networks_for(p.pre, cfg),
        judge,
        walk,
    )
    cb.stage("report", 1)
    report = build_report(model, p, f_train, f_test, hist.losses, cfg, time.time() - t0)
    report["dataset"] = ds.name
    if user_report is not None:
        report["classifier"]["user_model"] = user_report
    report["label"] = {"column": ds.schema.label, **label_classes(ds)}
    report["model_selection"] = {
        "selected_epoch": hist.selected_epoch,
        "checks": [{k: round(v, 4) for k, v in c.items()} for c in hist.checks],
    }
    cb.advance("report")
    return Trained(p, clf_onnx, clf, model, y_hat, report, val_idx)


def write_bundle(
    trained: Trained,
    ds: Dataset,
    out: Path,
    cfg: TrainConfig,
    user_classifier: bool,
    command: str | None,
) -> TrainResult:
    """Export ``trained`` to the bundle folder ``out`` (written beside it, then renamed)."""
    p, model, report = trained.prepared, trained.model, trained.report
    with atomic_path(out, folder=True) as tmp:
        graphs = export_graphs(model, p.pre, trained.classifier_onnx, trained.classifier)
        files = save(graphs, tmp)
        anchors: dict[str, Any] = {}
        sealed = [*files.values(), "report.json"]
        if not isinstance(p.pre, ImagePreprocessor):
            rows = select_anchors(
                p.x_train,
                lambda x: _run_onnx(trained.classifier_onnx, x),
                count=cfg.anchors,
                seed=cfg.seed,
            )
            if len(rows):
                np.save(tmp / ANCHORS_FILE, rows, allow_pickle=False)
                anchors = {"file": ANCHORS_FILE, "count": len(rows)}
                sealed.append(ANCHORS_FILE)
        manifest = Manifest(
            preprocessing=p.pre,
            latent=Latent(
                dim=cfg.latent_dim,
                u_dim=cfg.latent_u_dim,
                mu=model.mu.detach().numpy().astype(float).round(7).tolist(),
                var=model.var.detach().numpy().astype(float).round(7).tolist(),
            ),
            search=RunSettings().override(default_search(ds.schema)),
            graphs={name: files[name] for name in GRAPHS},
            files={},
            dataset=ds.name,
            label=ds.schema.label,
            positive_class=ds.schema.positive_class,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=command or " ".join(["gmcf-batch", *sys.argv[1:]]),
            producer=_versions(),
            train_config=cfg.to_dict(),
            classifier="user" if user_classifier else "reference-mlp",
            anchors=anchors,
        )
        manifest = _seal(tmp, manifest, report, sealed)
        if cfg.screen and user_classifier and not isinstance(p.pre, ImagePreprocessor):
            manifest = _add_screen(trained, tmp, manifest, cfg, sealed)
        if not isinstance(p.pre, ImagePreprocessor):
            # The quality gate: the bundle just written explains the validation rows.
            held = trained.validation_rows
            x_q, which = (p.x_test, "held-out") if held is None else (p.x_train[held], "validation")
            report["quality"] = measure_quality(tmp, x_q, which)
        report["warnings"] = gate_warnings(report)
        manifest = _seal(tmp, manifest, report, sealed)
    return TrainResult(out, report, manifest)


def _add_screen(
    trained: Trained, folder: Path, manifest: Manifest, cfg: TrainConfig, sealed: list[str]
) -> Manifest:
    """Distil the screen g from f on the bundle just written and add its graphs
    (``gmcf.trainer.screen``); ``sealed`` gains their files."""
    p, report = trained.prepared, trained.report
    t0 = time.time()
    f_train = _run_onnx(trained.classifier_onnx, p.x_train)
    rows, scores = distillation_set(folder, p.x_train, f_train, cfg.seed, ScreenConfig())
    g, info = fit_screen(rows, scores, manifest.search.threshold, cfg.seed)
    graphs = export_graphs(trained.model, p.pre, export_classifier(g, p.pre.width), g)
    files = save(screen_graphs(graphs), folder)
    sealed.extend(files.values())
    report["screen"] = {**info, "seconds": round(time.time() - t0, 1)}
    # With f confirming, the last resort needs fewer candidates: the same answers on Adult and
    # LendingClub with 4 anchors of 4 steps as with 8 of 8, and of 2 steps as of 4; the anchor
    # row itself is the answer of 99.7% of the anchored rows (docs/performance.md)
    search = replace(manifest.search, fallback_neighbours=4, fallback_steps=2)
    manifest = replace(manifest, graphs={**manifest.graphs, **files}, search=search)
    return _seal(folder, manifest, report, sealed)


def _seal(folder: Path, manifest: Manifest, report: dict[str, Any], files: list[str]) -> Manifest:
    """Write report.json, then the manifest with the sha256 of every file in ``files``."""
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    manifest = replace(manifest, files={fname: sha256_file(folder / fname) for fname in files})
    (folder / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


def train_bundle(
    ds: Dataset,
    out: Path,
    cfg: TrainConfig = TrainConfig(),  # noqa: B008 - frozen dataclass
    classifier: Path | None = None,
    force: bool = False,
    command: str | None = None,
    callbacks: Callbacks | None = None,
    classifier_spec: ClassifierSpec | None = None,
) -> TrainResult:
    """Train f (unless given) and the explainer on ``ds``; write the bundle to ``out``.

    The bundle is written to a temporary folder beside ``out`` and renamed into place, so an
    interrupted run leaves nothing half-written.
    """
    if out.exists() and not force:
        raise InputError(f"output folder {out} exists; pass --force to replace it")
    clf_model = None if classifier is None else load_classifier(classifier)
    trained = train_models(ds, cfg, clf_model, callbacks, classifier_spec)
    return write_bundle(trained, ds, out, cfg, classifier is not None, command)
