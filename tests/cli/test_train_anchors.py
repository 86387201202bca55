"""``train --anchors``: how many approved training rows a bundle carries for the last resort;
0 ships no training row at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

pytest.importorskip("torch")

from gmcf.runtime import Explainer
from gmcf.runtime.bundle import load_bundle


def test_anchors_option_sets_the_rows_a_bundle_ships(tmp_path: Path) -> None:
    none, few = tmp_path / "none", tmp_path / "few"
    for out, n in ((none, "0"), (few, "64")):
        code, _, stderr = invoke(
            "train", "lending-club", "--epochs", "1", "--anchors", n, "-o", str(out)
        )
        assert code == 0, stderr
    assert not (none / "anchors.npy").exists()
    assert not load_bundle(none).manifest.anchors
    rows = np.load(few / "anchors.npy")
    assert rows.shape[0] == 64 and rows.shape[1] == load_bundle(few).preprocessor.width
    # a bundle without anchors still explains: the walk alone, never the last resort
    from gmcf.datasets import load_dataset

    table = load_dataset("lending-club").table.slice(0, 300)
    out = Explainer.from_bundle(none).explain(table)
    assert "anchored" not in set(out.column("search").drop_null().to_pylist())


def test_negative_anchors_is_a_one_line_error(tmp_path: Path) -> None:
    code, _, stderr = invoke(
        "train", "lending-club", "--epochs", "1", "--anchors", "-1", "-o", str(tmp_path / "b")
    )
    assert code != 0
    assert "--anchors must be 0 or more" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
