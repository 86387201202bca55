"""`gmcf-batch evaluate --classifier hgb|lgbm`: a gradient-boosted f per repetition, GDL on a
differentiable stand-in of it, and every method judged by f itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

from helpers import invoke

from gmcf.datasets import load_dataset
from gmcf.runtime.bundle import load_bundle
from gmcf.trainer import evaluate as ev_mod
from gmcf.trainer.prepare import prepare


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("kind", "needs"), [("hgb", ("sklearn", "skl2onnx")), ("lgbm", ("lightgbm", "onnxmltools"))]
)
def test_the_onnx_export_gives_the_library_s_own_probabilities(
    kind: str, needs: tuple[str, ...]
) -> None:
    for name in needs:
        pytest.importorskip(name)
    from gmcf.trainer.gbm import gbm_classifier

    p = prepare(load_dataset("adult"), 0.2, 0)
    x, y = p.x_train[:4000], p.y_train[:4000]
    model = gbm_classifier(kind, x, y, seed=0)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {sess.get_inputs()[0].name: p.x_test[:500]})
    proba = next(o for o in outputs if np.ndim(o) == 2 and o.shape[1] == 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    # class-balanced: f approves a much larger share than the 25% of positive labels
    assert (proba[:, 1] >= 0.5).mean() > 0.3
    assert ((proba[:, 1] >= 0.5) == (p.y_test[:500] == 1)).mean() > 0.7


@pytest.mark.parametrize(
    ("kind", "needs", "title"),
    [
        ("hgb", ("sklearn", "skl2onnx"), "scikit-learn HistGradientBoostingClassifier"),
        ("lgbm", ("lightgbm", "onnxmltools"), "LightGBM LGBMClassifier"),
    ],
)
def test_evaluate_with_a_gbm_judges_every_method_by_the_tree_model(
    kind: str,
    needs: tuple[str, ...],
    title: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in needs:
        pytest.importorskip(name)
    real = ev_mod._score_rows
    seen: list[dict[str, Any]] = []

    def score_and_check(rep, run, rows, cf, returned):  # type: ignore[no-untyped-def]
        real(rep, run, rows, cf, returned)
        # f scored independently: the bundle's classifier graph in a session of its own
        sess = _session(load_bundle(rep.explainer.bundle.path).graph_path("classifier"))
        rows_cf = np.ascontiguousarray(cf[returned], dtype=np.float32)
        f = sess.run(None, {"x": rows_cf})[0] if len(rows_cf) else np.zeros(0)
        seen.append({"method": run.method, "valid": run.valid, "f_approves": int((f >= 0.5).sum())})

    monkeypatch.setattr(ev_mod, "_score_rows", score_and_check)
    out, work = tmp_path / f"adult-{kind}", tmp_path / "work"
    code, stdout, stderr = invoke(
        "evaluate", "adult", "--classifier", kind, "--reps", "1", "--rows", "6000",
        "--epochs", "3", "--methods", "gmcf,gdl", "--max-queries", "40",
        "--single-queries", "2", "-o", str(out), "--work-dir", str(work),
    )  # fmt: skip
    assert code == 0, stderr
    md = out.with_suffix(".md").read_text()
    assert f"### adult, f = {kind} ({title}, class-balanced)" in md
    assert "| gmcf | 1/1 |" in md and "| gdl | 1/1 |" in md and md in stdout
    assert "GDL descends on a torch MLP fitted to f" in md
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["classifier"] == kind and result["config"]["classifier"] == kind
    assert result["reps"][0]["classifier"]["kind"] == kind
    # the bundle's f is the tree ensemble, handed to the explainer as a user's classifier
    bundle = load_bundle(work / "rep0" / "bundle")
    assert bundle.manifest.classifier == "user"
    ops = {n.op_type for n in onnx.load(bundle.graph_path("classifier")).graph.node}
    assert any(op.startswith("TreeEnsemble") for op in ops), ops
    # validity is f's own verdict on the returned rows, for GMCF and for GDL's stand-in descent
    runs = {r["method"]: r for r in result["runs"]}
    assert {s["method"] for s in seen} >= {"gmcf", "gdl"}
    for s in seen:
        assert s["valid"] == s["f_approves"], s
        if s["method"] in runs:
            assert runs[s["method"]]["valid"] == s["valid"]
    assert runs["gmcf"]["valid"] > 0 and runs["gdl"]["valid"] > 0
    assert 0.7 < runs["gdl"]["metrics"]["stand_in_agreement"] <= 1.0


def test_an_unknown_classifier_kind_fails_in_one_line() -> None:
    code, _, stderr = invoke("evaluate", "adult", "--classifier", "xgb")
    assert code != 0 and stderr.strip().count("\n") == 0
    assert "unknown classifier 'xgb'" in stderr and "hgb" in stderr and "lgbm" in stderr


def test_a_missing_model_library_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # import skl2onnx now raises ImportError
    code, _, stderr = invoke("evaluate", "adult", "--classifier", "hgb")
    assert code != 0 and stderr.strip().count("\n") == 0
    assert "'hgb' needs skl2onnx" in stderr and "gmcf-batch[gbm]" in stderr
