"""Shared fixtures: the shipped Adult bundle, and a tiny bundle trained in seconds."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "exported"


@pytest.fixture(scope="session")
def adult_bundle() -> Path:
    """The committed bundle that `gmcf-batch explain` uses by default."""
    path = SHIPPED / "adult"
    assert (path / "manifest.json").exists(), "exported/adult is missing"
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained on 3,000 Adult rows for 2 epochs: real data, real pipeline, ~5 s."""
    pytest.importorskip("torch")
    import pyarrow as pa

    from gmcf.datasets import Dataset, load_dataset
    from gmcf.trainer.fit import TrainConfig
    from gmcf.trainer.pipeline import train_bundle

    ds = load_dataset("adult")
    small = Dataset("adult-small", ds.table.take(pa.array(range(0, 30000, 10))), ds.schema)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    cfg = TrainConfig(epochs=2, classifier_epochs=20, classifier_restarts=1, probe_epochs=2)
    train_bundle(small, out, cfg, command="test")
    return out


@pytest.fixture(scope="session")
def gbm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LendingClub explained for a class-balanced HistGradientBoosting model on the encoded rows
    (skl2onnx), 6 epochs of Algorithm 1: a real gradient-boosted f whose walk misses some rows
    and whose latent mixture agrees with f on fewer than 90% of them (~10 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.ensemble import HistGradientBoostingClassifier

    from gmcf.datasets import load_dataset
    from gmcf.trainer.fit import TrainConfig
    from gmcf.trainer.pipeline import train_bundle
    from gmcf.trainer.prepare import prepare

    ds = load_dataset("lending-club")
    cfg = TrainConfig(epochs=6, probe_epochs=3)
    p = prepare(ds, cfg.test_size, cfg.seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP threads on a shared machine: 80 s instead of 2
        clf = HistGradientBoostingClassifier(class_weight="balanced", random_state=0).fit(
            p.x_train, p.y_train
        )
    with warnings.catch_warnings():  # skl2onnx hands numpy integers to protobuf, which warns
        warnings.simplefilter("ignore")
        model = to_onnx(
            clf,
            p.x_train[:1],
            options={id(clf): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    folder = tmp_path_factory.mktemp("gbm")
    (folder / "hgb.onnx").write_bytes(model.SerializeToString())
    out = folder / "bundle"
    train_bundle(ds, out, cfg, classifier=folder / "hgb.onnx", command="test")
    return out
