"""The screen: a small MLP distilled from a costly f walks the path, and f confirms only the
candidates it picks (gmcf.runtime.search, gmcf.trainer.screen). Measured on LendingClub with a
class-balanced HistGradientBoosting f (the ``gbm_bundle`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gmcf.datasets import load_dataset
from gmcf.runtime import Explainer
from gmcf.runtime.bundle import load_bundle
from gmcf.trainer.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]


def held_out(bundle: Path) -> pa.Table:
    cfg = load_bundle(bundle).manifest.train_config
    ds = load_dataset("lending-club")
    return ds.table.take(pa.array(prepare(ds, cfg["test_size"], cfg["seed"]).test_rows))


def figures(ex: Explainer, table: pa.Table) -> dict[str, float]:
    out = ex.explain(table)
    status = np.asarray(out.column("status").to_pylist())
    found = status == "found"
    searched = found | (status == "not_found")
    pre = ex.bundle.preprocessor
    cf = out.filter(pa.array(found)).select([f"cf_{n}" for n in pre.names])
    x_cf, _ = pre.transform(cf.rename_columns(pre.names))
    score = ex.engine.score(np.asarray(x_cf, np.float32))  # f itself, on the rows written out
    np.testing.assert_allclose(
        score, out.column("cf_score").to_numpy(zero_copy_only=False)[found], atol=1e-5
    )
    evals = out.column("evaluations").to_numpy(zero_copy_only=False)
    return {
        "validity": float((score >= ex.settings.threshold).sum() / searched.sum()),
        "l2": float(out.column("proximity_l2").to_numpy(zero_copy_only=False)[found].mean()),
        "evaluations": float(evals[searched].mean()),
    }


def test_a_user_model_bundle_carries_a_screen_that_agrees_with_f(gbm_bundle: Path) -> None:
    b = load_bundle(gbm_bundle)
    assert b.has_screen
    screen = b.report["screen"]
    assert screen["agreement"] > 0.9, screen
    assert screen["rows"] > 10_000


def test_the_screen_spares_f_and_keeps_every_answer_valid(gbm_bundle: Path) -> None:
    table = held_out(gbm_bundle)
    fast = figures(Explainer.from_bundle(gbm_bundle), table)
    exact = figures(Explainer.from_bundle(gbm_bundle, screen=False), table)
    # every returned row approved by f (checked inside figures), as many rows answered
    assert fast["validity"] >= exact["validity"] - 0.01, (fast, exact)
    assert fast["validity"] > 0.95, fast
    # at a fraction of the calls of f, with answers about as near
    assert fast["evaluations"] < 0.25 * exact["evaluations"], (fast, exact)
    assert fast["l2"] < 1.15 * exact["l2"], (fast, exact)


def test_the_reference_mlp_bundle_has_no_screen_and_searches_as_before() -> None:
    bundle = ROOT / "exported" / "adult"
    assert not load_bundle(bundle).has_screen
    table = load_dataset("adult").table.slice(0, 2000)
    on = Explainer.from_bundle(bundle).explain(table)
    off = Explainer.from_bundle(bundle, screen=False).explain(table)
    assert on.equals(off)


def test_numpy_blas_runs_on_the_explainers_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers each with a BLAS pool as wide as the machine spin against each other (an
    explain of 1M rows took twice as long): the search holds numpy's BLAS to ``threads``."""
    from threadpoolctl import threadpool_info

    bundle = ROOT / "exported" / "adult"
    seen: list[int] = []
    ex = Explainer.from_bundle(bundle, threads=1, steps=1, extrapolate=False)
    score = ex.engine.score

    def spy(x: np.ndarray) -> np.ndarray:
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return score(x)

    monkeypatch.setattr(ex.engine, "score", spy)
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    ex.explain(load_dataset("adult").table.slice(0, 500))
    assert seen and set(seen) == {1}, seen
    # and the process's own setting is back afterwards
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before


def test_screened_answers_keep_the_constraints(gbm_bundle: Path) -> None:
    from gmcf.runtime.constraints import Constraints

    table = held_out(gbm_bundle)
    wanted = {"fico": {"direction": "increase"}, "purpose": {"immutable": True}}
    ex = Explainer.from_bundle(gbm_bundle, constraints=wanted)
    out = ex.explain(table)
    found = np.asarray(out.column("status").to_pylist()) == "found"
    assert found.sum() > 100
    pre = ex.bundle.preprocessor
    x, _ = pre.transform(table.filter(pa.array(found)))
    cf, _ = pre.transform(
        out.filter(pa.array(found)).select([f"cf_{n}" for n in pre.names]).rename_columns(pre.names)
    )
    c = Constraints.from_dict(wanted)
    assert c.satisfied(pre, np.asarray(x, np.float32), np.asarray(cf, np.float32)).all()
    assert (ex.engine.score(np.asarray(cf, np.float32)) >= 0.5).all()
