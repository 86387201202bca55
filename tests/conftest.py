"""Shared fixtures: the shipped Adult bundle, and a tiny bundle trained in seconds."""

from __future__ import annotations

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
