"""The training's quality gate (trainer/quality.py): figures measured with the exported runtime,
plain warnings, ``inspect --json`` carrying them and ``--strict`` turning them into an exit code."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from gmcf.datasets import load_dataset
from gmcf.runtime.bundle import load_bundle
from gmcf.runtime.search import FOUND, NOT_FOUND, Engine, search
from gmcf.trainer.prepare import prepare
from gmcf.trainer.quality import CHANCE, LEAK_MARGIN, MIN_AGREEMENT, MIN_VALIDITY, gate_warnings


def reseal(bundle: Path, edit: object) -> None:
    """Edit a bundle's report.json (``edit(report)``) and update its checksum."""
    path = bundle / "report.json"
    report = json.loads(path.read_text())
    edit(report)  # type: ignore[operator]
    path.write_text(json.dumps(report))
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["report.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_report_quality_is_the_runtime_search_on_validation_rows(gbm_bundle: Path) -> None:
    b = load_bundle(gbm_bundle)
    q = b.report["quality"]
    assert q["rows"] == "validation"
    # the same rows, searched again by the runtime, give the same figures
    cfg = b.manifest.train_config
    p = prepare(load_dataset("lending-club"), cfg["test_size"], cfg["seed"])
    perm = np.random.default_rng(cfg["seed"] + 3).permutation(len(p.x_train))
    val = np.sort(perm[: round(len(perm) * cfg["validation_size"])])
    res = search(Engine(b), p.x_train[val], b.search)
    searched = int(np.isin(res.status, [FOUND, NOT_FOUND]).sum())
    assert q["searched"] == searched > 100
    assert q["validity"] == pytest.approx((res.status == FOUND).sum() / searched)
    assert sum(q["by_search"].values()) == pytest.approx(1.0)
    assert q["proximity_l2"] > 0 and q["l0"] >= 1


def test_gate_warnings_name_each_problem_with_its_figures(gbm_bundle: Path) -> None:
    report = load_bundle(gbm_bundle).report
    # this explainer's mixture agrees with f on fewer than 90% of held-out rows
    assert report["gm_posterior_agreement"] < MIN_AGREEMENT
    assert report["warnings"] == gate_warnings(report)
    assert any("agrees with f on only" in w for w in report["warnings"])
    weak = json.loads(json.dumps(report))
    weak["quality"]["validity"] = MIN_VALIDITY - 0.2
    weak["z_u_probe"]["balanced_accuracy"] = CHANCE + LEAK_MARGIN + 0.05
    found = gate_warnings(weak)
    assert any(w.startswith("validity 70.0%") and "below 90%" in w for w in found)
    leak = [w for w in found if w.startswith("z_u leaks")]
    assert len(leak) == 1 and "0.700" in leak[0] and "(chance 0.500)" in leak[0]
    good = json.loads(json.dumps(report))
    good["gm_posterior_agreement"] = 0.99
    good["quality"]["validity"] = 0.97
    good["z_u_probe"]["balanced_accuracy"] = CHANCE + LEAK_MARGIN - 0.01
    assert gate_warnings(good) == []


def test_train_prints_quality_and_strict_exits_on_a_warning(tmp_path: Path) -> None:
    """``train --strict`` on a real gradient-boosted f whose mixture disagrees with it."""
    pytest.importorskip("torch")
    pytest.importorskip("skl2onnx")
    import warnings

    from skl2onnx import to_onnx
    from sklearn.ensemble import HistGradientBoostingClassifier

    ds = load_dataset("lending-club")
    data = tmp_path / "loans.parquet"
    import pyarrow.parquet as pq

    pq.write_table(ds.table, data)
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "features": {
                    "continuous": ["int.rate", "installment", "log.annual.inc", "dti"],
                    "integer": ["fico"],
                    "categorical": ["purpose"],
                },
                "label": "not.fully.paid",
                "positive_class": "0",
            }
        )
    )
    p = prepare(ds, 0.2, 0)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        clf = HistGradientBoostingClassifier(
            class_weight="balanced", random_state=0, max_iter=30
        ).fit(p.x_train, p.y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = to_onnx(
            clf,
            p.x_train[:1],
            options={id(clf): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    (tmp_path / "f.onnx").write_bytes(model.SerializeToString())
    out = tmp_path / "bundle"
    code, stdout, stderr = invoke(
        "train",
        "--data",
        str(data),
        "--schema",
        str(schema),
        "--classifier",
        str(tmp_path / "f.onnx"),
        "--epochs",
        "3",
        "-o",
        str(out),
        "--strict",
    )
    report = load_bundle(out).report
    assert report["warnings"], report
    assert code == 3, (stdout, stderr)
    assert "validity" in stdout and "rows f rejects" in stdout and "found by" in stdout
    for w in report["warnings"]:
        assert f"warning: {w}" in " ".join(stderr.split())
    # without --strict the same warnings are printed and the exit is clean
    code, _, stderr = invoke("inspect", str(out))
    assert code == 0 and "warning:" in stderr
    code, stdout, _ = invoke("inspect", str(out), "--json", "--strict")
    assert code == 3
    assert json.loads(stdout[: stdout.rindex("}") + 1])["warnings"] == report["warnings"]


def test_inspect_strict_passes_a_bundle_without_warnings(gbm_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(gbm_bundle, tmp_path / "b"))
    code, _, stderr = invoke("inspect", str(copy), "--strict")
    assert code == 3 and "agrees with f on only" in stderr
    reseal(copy, lambda r: r.update(warnings=[]))
    code, stdout, stderr = invoke("inspect", str(copy), "--strict")
    assert code == 0, stderr
    assert "warning" not in stderr
    assert "rows f rejects" in stdout
    code, stdout, _ = invoke("inspect", str(copy), "--json", "--strict")
    assert code == 0 and json.loads(stdout)["warnings"] == []
