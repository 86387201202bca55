"""The last-resort search (runtime/fallback.py): rows the walk misses walk toward nearby approved
training rows; and seeded training reproduces the anchors and the quality figures."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gmcf.datasets import load_dataset
from gmcf.runtime import Explainer
from gmcf.runtime.bundle import load_bundle
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.fallback import NEAREST_BLOCK, compact, hard_decode, nearest, rescue
from gmcf.runtime.search import ANCHORED, FOUND, Engine, search
from gmcf.trainer.prepare import prepare


def held_out(bundle: Path) -> tuple[pa.Table, np.ndarray]:
    """The bundle's own held-out rows, as a table and in model space."""
    b = load_bundle(bundle)
    ds = load_dataset("lending-club")
    cfg = b.manifest.train_config
    p = prepare(ds, cfg["test_size"], cfg["seed"])
    return ds.table.take(pa.array(p.test_rows)), p.x_test


def test_numpy_hard_decoding_matches_the_search_graph(gbm_bundle: Path) -> None:
    """The fallback decodes with decoder.onnx and hardens in numpy: the same rows as the fused
    search graph for the same latent points."""
    engine = Engine(load_bundle(gbm_bundle))
    _, x = held_out(gbm_bundle)
    x = x[:300]
    alphas = np.tile(np.array([0.25, 0.5, 1.0, 1.5], np.float32), (len(x), 1))
    rows, score = engine.candidates(x, alphas)
    z = engine.run("encoder", {"x": x})
    zu = engine.run("encoder_u", {"x": x})
    a = alphas.reshape(-1, 1)
    zs = (1 - a) * np.repeat(z, 4, axis=0) + a * engine.mu_1
    soft = engine.run("decoder", {"z": zs.astype(np.float32), "z_u": np.repeat(zu, 4, axis=0)})
    mine = hard_decode(engine.pre, soft)
    flat = rows.reshape(-1, rows.shape[-1])
    same = (mine == flat).all(axis=1) | np.isclose(mine, flat, atol=1e-6).all(axis=1)
    # Float rounding of the two graphs may tip an arg-max on a near tie: a handful at most.
    assert same.mean() > 0.99, same.mean()
    np.testing.assert_allclose(engine.score(mine[same]), score.reshape(-1)[same], atol=1e-5)
    np.testing.assert_array_equal(engine.pre.expand_code(compact(engine.pre, flat)), flat)


def test_rescue_returns_approved_rows_on_the_anchor_paths(gbm_bundle: Path) -> None:
    b = load_bundle(gbm_bundle)
    engine = Engine(b)
    _, x = held_out(gbm_bundle)
    rejected = x[engine.score(x) < 0.5][:200]
    got = rescue(engine, rejected, b.search)
    assert got is not None
    assert got.found.mean() > 0.9
    cf = got.cf[got.found]
    # approved by f, exactly as returned, and inside the acceptance band
    score = engine.score(cf)
    np.testing.assert_allclose(score, got.cf_score[got.found], atol=1e-6)
    assert (score >= 0.5).all() and (score < 1.0).all()
    # hard rows: integers on their grid, one category per block, in the training range
    assert ((cf >= 0) & (cf <= 1)).all()
    np.testing.assert_array_equal(engine.pre.expand_code(compact(engine.pre, cf)), cf)
    assert ((got.alpha[got.found] > 0) & (got.alpha[got.found] <= 1)).all()
    k, steps = b.search.fallback_neighbours, b.search.fallback_steps
    assert (got.evaluations >= k * steps).all()
    # never further from the query than the nearest approved anchor (a candidate itself)
    anchors = engine.anchors
    assert anchors is not None
    d_anchor = np.sqrt(((rejected[:, None, :] - anchors.rows[None]) ** 2).sum(-1)).min(1)[got.found]
    d_cf = np.sqrt(((cf - rejected[got.found]) ** 2).sum(1))
    assert (d_cf <= d_anchor + 1e-5).all()
    # anchors are approved training rows of the bundle's own split, scored by its f
    np.testing.assert_allclose(engine.score(anchors.rows), anchors.score)
    assert (anchors.score >= 0.5).all()


def test_rescue_keeps_the_constraints(gbm_bundle: Path) -> None:
    b = load_bundle(gbm_bundle)
    engine = Engine(b)
    _, x = held_out(gbm_bundle)
    rejected = x[engine.score(x) < 0.5][:200]
    c = Constraints.from_dict({"fico": {"direction": "increase"}, "purpose": {"immutable": True}})
    lower, upper = c.bounds(b.preprocessor, rejected)
    got = rescue(engine, rejected, b.search, (lower, upper))
    assert got is not None and got.found.any()
    hit = got.found
    assert c.satisfied(b.preprocessor, rejected[hit], got.cf[hit]).all()
    assert (engine.score(got.cf[hit]) >= 0.5).all()


def test_anchored_search_adds_rows_the_walk_missed_and_nearer_answers(gbm_bundle: Path) -> None:
    table, _ = held_out(gbm_bundle)
    # The last resort chooses between answers as the search returns them: the revert step, which
    # runs after it on every found row, is left out so that the choice itself is compared; so
    # is the screen, which changes what the walk itself answers (tests/runtime/test_screen.py).
    on = Explainer.from_bundle(gbm_bundle, revert=False, screen=False).explain(table)
    off = Explainer.from_bundle(gbm_bundle, fallback=False, revert=False, screen=False).explain(
        table
    )
    only_missed = Explainer.from_bundle(
        gbm_bundle, fallback_extrapolated=False, revert=False, screen=False
    ).explain(table)
    st_on = np.array(on.column("status").to_pylist())
    st_off = np.array(off.column("status").to_pylist())
    kind_on = np.array([k or "" for k in on.column("search").to_pylist()])
    kind_off = np.array([k or "" for k in off.column("search").to_pylist()])
    l2_on = on.column("proximity_l2").to_numpy(zero_copy_only=False)
    l2_off = off.column("proximity_l2").to_numpy(zero_copy_only=False)
    assert "anchored" not in set(kind_off)
    # the walk's answers before mu_1 are untouched
    near = np.nonzero((st_off == "found") & (kind_off != "extrapolated"))[0]
    for col in ("cf_fico", "cf_purpose", "alpha", "search"):
        assert on.column(col).take(near).to_pylist() == off.column(col).take(near).to_pylist()
    # an answer past mu_1 is kept, or replaced by a nearer anchored one
    past = (st_off == "found") & (kind_off == "extrapolated")
    assert past.any()
    kept = past & (kind_on == "extrapolated")
    swapped = past & (kind_on == "anchored")
    assert (kept | swapped)[past].all()
    assert swapped.any() and (l2_on[swapped] < l2_off[swapped]).all()
    np.testing.assert_array_equal(l2_on[kept], l2_off[kept])
    # every row the walk missed and the last resort found is labelled so
    rescued = (st_on == "found") & (st_off == "not_found")
    assert rescued.sum() > 0
    assert (kind_on[rescued] == "anchored").all()
    # without fallback_extrapolated only missed rows are rescued
    kind_missed = np.array([k or "" for k in only_missed.column("search").to_pylist()])
    assert set(np.nonzero(kind_missed == "anchored")[0]) == set(np.nonzero(rescued)[0])
    # each anchored answer is approved by the bundle's own f, read back from the raw columns
    ex = Explainer.from_bundle(gbm_bundle)
    pre = ex.bundle.preprocessor
    anchored = np.nonzero(kind_on == "anchored")[0]
    cf = on.take(anchored).select([f"cf_{n}" for n in pre.names]).rename_columns(pre.names)
    x_cf, _ = pre.transform(cf)
    assert (ex.engine.score(x_cf) >= 0.5).all()
    evals_on = on.column("evaluations").to_numpy(zero_copy_only=False)
    evals_off = off.column("evaluations").to_numpy(zero_copy_only=False)
    assert (evals_on[rescued] > evals_off[rescued]).all()


def test_a_bundle_without_anchors_searches_as_before(gbm_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(gbm_bundle, tmp_path / "b"))
    m = json.loads((copy / "manifest.json").read_text())
    del m["anchors"]
    m["files"].pop("anchors.npy")
    (copy / "anchors.npy").unlink()
    (copy / "manifest.json").write_text(json.dumps(m))
    _, x = held_out(copy)
    engine = Engine(load_bundle(copy))
    assert engine.anchors is None
    res = search(engine, x, load_bundle(copy).search)
    off = search(
        Engine(load_bundle(gbm_bundle)), x, replace(load_bundle(gbm_bundle).search, fallback=False)
    )
    np.testing.assert_array_equal(res.status, off.status)
    assert not (res.kind == ANCHORED).any()
    np.testing.assert_array_equal(res.cf[res.status == FOUND], off.cf[off.status == FOUND])


def test_seeded_training_reproduces_anchors_and_quality(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from gmcf.datasets import Dataset
    from gmcf.trainer.fit import TrainConfig
    from gmcf.trainer.pipeline import train_bundle

    ds = load_dataset("adult")
    small = Dataset("adult-small", ds.table.take(pa.array(range(0, 30000, 10))), ds.schema)
    cfg = TrainConfig(epochs=2, classifier_epochs=20, classifier_restarts=2, probe_epochs=2, seed=1)
    a = train_bundle(small, tmp_path / "a", cfg, command="test")
    b = train_bundle(small, tmp_path / "b", cfg, command="test")
    for key in (
        "quality",
        "warnings",
        "z_u_probe",
        "gm_posterior_agreement",
        "final_losses",
        "classifier",
    ):
        assert a.report[key] == b.report[key], key
    assert a.report["quality"]["searched"] > 0
    for fname in ("anchors.npy", "search.onnx", "decoder.onnx"):
        assert (tmp_path / "a" / fname).read_bytes() == (tmp_path / "b" / fname).read_bytes(), fname
    other = train_bundle(small, tmp_path / "c", replace(cfg, seed=2), command="test")
    assert (tmp_path / "c" / "anchors.npy").read_bytes() != (
        tmp_path / "a" / "anchors.npy"
    ).read_bytes()
    assert other.report["final_losses"] != a.report["final_losses"]


def test_hard_decoding_follows_transforms_bands_and_determined_features() -> None:
    """On the shipped Adult bundle (capital gain and loss log-scaled integers, education-num
    determined by education, bands): the last resort's numpy hardening gives the fused graph's
    rows, and every row survives the trip through the output columns unchanged, so f scores
    the row a user receives exactly as the search scored it."""
    bundle = Path(__file__).resolve().parents[2] / "exported" / "adult"
    engine = Engine(load_bundle(bundle))
    pre = engine.pre
    assert any(f.transform == "log" and f.kind == "integer" for f in pre.numeric)
    assert any(f.determined_by for f in pre.numeric)
    x, _ = pre.transform(load_dataset("adult").table.slice(0, 3000))
    x = np.asarray(x, np.float32)
    z = engine.run("encoder", {"x": x})
    zu = engine.run("encoder_u", {"x": x})
    for a in (0.0, 0.5, 1.0):
        graph, _ = engine.candidates(x, np.full((len(x), 1), a, np.float32))
        soft = engine.run("decoder", {"z": (1 - a) * z + a * engine.mu_1, "z_u": zu})
        mine = hard_decode(pre, soft, x=x)
        same = np.isclose(mine, graph[:, 0], atol=1e-6).all(axis=1)
        # float32 exp in numpy and in onnxruntime may round a raw value to the next integer
        assert same.mean() > 0.995, (a, same.mean())
        back, _ = pre.transform(pa.table(pre.inverse(mine)))
        np.testing.assert_allclose(back, mine, atol=2e-7)
        np.testing.assert_allclose(engine.score(back), engine.score(mine), atol=1e-6)


def test_every_answer_read_back_from_the_output_is_approved() -> None:
    """Validity as a user checks it: the counterfactual columns of the output, read back
    through the preprocessing and scored by f, are approved, whatever search found them. The
    shipped Adult bundle (log-scaled integers) with a short walk, so that the last resort
    answers many rows."""
    bundle = Path(__file__).resolve().parents[2] / "exported" / "adult"
    ex = Explainer.from_bundle(bundle, steps=1, extrapolate=False)
    out = ex.explain(load_dataset("adult").table.slice(0, 3000))
    found = np.asarray(out.column("status").to_pylist()) == "found"
    kinds = out.filter(pa.array(found)).column("search").to_pylist()
    assert kinds.count("anchored") > 20, kinds.count("anchored")
    pre = ex.bundle.preprocessor
    cf = out.filter(pa.array(found)).select([f"cf_{n}" for n in pre.names])
    x_cf, _ = pre.transform(cf.rename_columns(pre.names))
    score = ex.engine.score(np.asarray(x_cf, np.float32))
    assert (score >= 0.5).all(), (score < 0.5).sum()
    np.testing.assert_allclose(
        score, out.column("cf_score").to_numpy(zero_copy_only=False)[found], atol=1e-5
    )


def test_nearest_anchors_are_the_exact_nearest_in_every_block_of_queries() -> None:
    """Real rows: LendingClub in model space, queries spanning several blocks and a partial one;
    against the distances in float64."""
    x = load_dataset("lending-club")
    from gmcf.trainer.prepare import prepare as prep

    rows = prep(x, 0.2, 0).x_train.astype(np.float32)
    anchors, queries = rows[:1500], rows[1500 : 1500 + 2 * NEAREST_BLOCK + 37]
    got = nearest(queries, anchors, 4)
    d2 = ((queries[:, None, :].astype(np.float64) - anchors[None, :, :]) ** 2).sum(-1)
    want = np.argsort(d2, axis=1, kind="stable")[:, :4]
    # the same neighbours, or ties at the same distance within float32 rounding
    same = got == want
    tie = np.isclose(
        np.take_along_axis(d2, got, 1), np.take_along_axis(d2, want, 1), rtol=1e-5, atol=1e-6
    )
    assert (same | tie).all() and same.mean() > 0.99
