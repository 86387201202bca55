"""Behaviour of the search on real Adult rows with the shipped bundle.

The bundle may be retrained at any time, so nothing here pins a number it produces: the tests
check contracts (one row per query, valid counterfactuals, re-scoring, determinism).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import adult_queries, cf_table
from hypothesis import given, settings
from hypothesis import strategies as st

from gmcf.runtime import Explainer, Summary
from gmcf.runtime.parallel import explain_parquet_parallel
from gmcf.runtime.schema import Preprocessor
from gmcf.runtime.search import STATUSES

N_ROWS = 1500
EXACT = ["id", "status", "reason", "alpha", "search", "evaluations", "sparsity_l0"]
FLOATS = ["score", "cf_score", "proximity_l2", "sparsity_l1", "reconstruction_error"]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def statuses(out: pa.Table) -> np.ndarray:
    return np.array(out.column("status").to_pylist(), dtype=object)


def floats(out: pa.Table, name: str) -> np.ndarray:
    return np.asarray(out.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def assert_same_results(a: pa.Table, b: pa.Table, pre: Preprocessor) -> None:
    assert a.num_rows == b.num_rows
    assert a.schema == b.schema
    for name in EXACT + [f"cf_{f.name}" for f in pre.features]:
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    for name in FLOATS:
        np.testing.assert_allclose(
            floats(a, name), floats(b, name), rtol=1e-5, atol=1e-7, err_msg=name
        )


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explainer(adult_bundle: Path) -> Explainer:
    return Explainer.from_bundle(adult_bundle)


@pytest.fixture(scope="module")
def queries() -> pa.Table:
    return adult_queries(N_ROWS)


@pytest.fixture(scope="module")
def query_file(queries: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "queries.parquet"
    pq.write_table(queries, path, row_group_size=500)
    return path


@pytest.fixture(scope="module")
def baseline(explainer: Explainer, query_file: Path) -> tuple[pa.Table, Summary]:
    """explain_parquet with the default batch size and one thread."""
    dst = query_file.with_name("baseline.parquet")
    summary = explainer.explain_parquet(query_file, dst, id_column="id")
    return pq.read_table(dst), summary


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "queries.parquet"
    pq.write_table(adult_queries(300, seed=1), path)
    return path


@pytest.fixture(scope="module")
def small_ref(explainer: Explainer, small_file: Path) -> pa.Table:
    """The small file explained in memory, as one batch."""
    return explainer.explain(pq.read_table(small_file), id_column="id")


# -- one row per query ----------------------------------------------------------------------------
def test_one_row_per_query_in_input_order(
    queries: pa.Table, baseline: tuple[pa.Table, Summary]
) -> None:
    out, summary = baseline
    assert out.num_rows == queries.num_rows
    assert out.column("id").to_pylist() == queries.column("id").to_pylist()
    for name in ("age", "hours-per-week", "education"):
        want = queries.column(name).to_pylist()
        assert out.column(name).to_pylist() == want, name
    got = statuses(out)
    assert set(got) <= set(STATUSES)
    assert "found" in got and "already_target" in got
    # the summary counts what the file holds
    assert summary.rows == queries.num_rows
    assert summary.found == (got == "found").sum()
    assert summary.already_target == (got == "already_target").sum()
    assert summary.not_found == (got == "not_found").sum()
    assert summary.invalid == (got == "invalid").sum() == 0
    assert summary.output is not None and summary.output.exists()


def test_explain_accepts_arrow_and_pandas(explainer: Explainer, queries: pa.Table) -> None:
    part = queries.slice(0, 200)
    a = explainer.explain(part, id_column="id")
    b = explainer.explain(part.to_pandas(), id_column="id")  # a DataFrame comes back as one
    assert a.num_rows == len(b) == 200
    assert a.column("id").to_pylist() == part.column("id").to_pylist() == b["id"].tolist()
    assert a.column("status").to_pylist() == b["status"].tolist()


# -- what a found row promises ---------------------------------------------------------------------
@pytest.mark.parametrize("tol", [None, 0.1])
def test_found_rows_are_valid_counterfactuals(
    explainer: Explainer, adult_bundle: Path, queries: pa.Table, tol: float | None
) -> None:
    ex = explainer if tol is None else Explainer.from_bundle(adult_bundle, tol=tol)
    t, upper = ex.settings.threshold, ex.settings.threshold + ex.settings.tol
    pre = ex.bundle.preprocessor
    out = ex.explain(queries, id_column="id")
    st_ = statuses(out)
    found = np.nonzero(st_ == "found")[0]
    assert found.size > 0
    cf_score = floats(out, "cf_score")
    assert np.all(cf_score[found] >= t)
    assert np.all(cf_score[found] < upper)
    assert np.all(np.isnan(cf_score[st_ != "found"]))
    alpha = floats(out, "alpha")
    assert np.all(alpha[found] > 0) and np.all(alpha[found] <= ex.settings.max_alpha + 1e-6)
    assert np.all(np.asarray(out.column("evaluations"))[found] >= 1)
    assert set(out.column("search").take(pa.array(found)).to_pylist()) <= {
        "grid",
        "refined",
        "extrapolated",
        "anchored",
    }
    for f in pre.features:
        col = out.column(f"cf_{f.name}")
        assert col.null_count == out.num_rows - found.size, f.name
        values = col.take(pa.array(found))
        if f.is_numeric:
            v = np.asarray(values.to_numpy(), dtype=np.float64)
            assert np.all((v >= f.lo) & (v <= f.hi)), f.name
            if f.kind == "integer":
                assert pa.types.is_integer(col.type)
                assert np.all(v == np.round(v))
        else:
            assert set(values.cast(pa.string()).to_pylist()) <= set(f.categories), f.name
    # rows that are not found say why; found and already_target rows have no reason
    reason = np.array(out.column("reason").to_pylist(), dtype=object)
    assert all(reason[st_ == "not_found"])
    assert not any(reason[(st_ == "found") | (st_ == "already_target")])


def test_rescoring_counterfactuals_gives_cf_score(
    baseline: tuple[pa.Table, Summary], adult_bundle: Path, explainer: Explainer, queries: pa.Table
) -> None:
    out, _ = baseline
    pre = explainer.bundle.preprocessor
    clf = session(explainer.bundle.graph_path("classifier"))
    found = np.nonzero(statuses(out) == "found")[0]
    x_cf, reason = pre.transform(cf_table(out, pre, found))
    assert all(r is None for r in reason), "a counterfactual is not a valid query"
    rescored = clf.run(None, {"x": x_cf})[0]
    np.testing.assert_allclose(rescored, floats(out, "cf_score")[found], rtol=1e-5, atol=1e-6)
    # the query's own score is f on the preprocessed query
    x_q, _ = pre.transform(queries)
    np.testing.assert_allclose(
        clf.run(None, {"x": x_q})[0], floats(out, "score"), rtol=1e-5, atol=1e-6
    )


def test_statuses_follow_the_query_score(
    baseline: tuple[pa.Table, Summary], explainer: Explainer
) -> None:
    out, _ = baseline
    st_, score = statuses(out), floats(out, "score")
    t = explainer.settings.threshold
    assert np.all(score[st_ == "already_target"] >= 0.5)
    assert np.all(score[st_ == "already_target"] >= t)
    assert np.all(score[(st_ == "found") | (st_ == "not_found")] < t)
    evals = np.asarray(out.column("evaluations"))
    assert np.all(evals[st_ == "already_target"] == 0)


# -- determinism ----------------------------------------------------------------------------------
def test_independent_of_batch_size_threads_and_workers(
    explainer: Explainer,
    adult_bundle: Path,
    query_file: Path,
    baseline: tuple[pa.Table, Summary],
    tmp_path: Path,
) -> None:
    ref, ref_summary = baseline
    pre = explainer.bundle.preprocessor
    runs = {
        "batch 100": lambda dst: explainer.explain_parquet(
            query_file, dst, batch_size=100, id_column="id"
        ),
        "2 threads": lambda dst: Explainer.from_bundle(adult_bundle, threads=2).explain_parquet(
            query_file, dst, id_column="id"
        ),
        "2 workers": lambda dst: explain_parquet_parallel(explainer, query_file, dst, 2, 250, "id"),
    }
    for name, run in runs.items():
        dst = tmp_path / f"{name.replace(' ', '_')}.parquet"
        summary = run(dst)
        assert summary.to_dict() | {"seconds": 0} == ref_summary.to_dict() | {"seconds": 0}, name
        assert_same_results(pq.read_table(dst), ref, pre)
    assert not list(tmp_path.glob(".*.tmp"))


@settings(max_examples=6, deadline=None)
@given(batch_size=st.integers(min_value=1, max_value=400))
def test_batch_size_does_not_change_statuses(
    explainer: Explainer,
    small_file: Path,
    small_ref: pa.Table,
    tmp_path_factory: pytest.TempPathFactory,
    batch_size: int,
) -> None:
    folder = tmp_path_factory.mktemp("batch")
    ref = small_ref
    explainer.explain_parquet(
        small_file, folder / "out.parquet", batch_size=batch_size, id_column="id"
    )
    out = pq.read_table(folder / "out.parquet")
    assert out.column("id").to_pylist() == ref.column("id").to_pylist()
    assert out.column("status").to_pylist() == ref.column("status").to_pylist()


# -- the fused search graph -----------------------------------------------------------------------
def test_alpha_zero_is_the_hard_decoded_reconstruction(
    explainer: Explainer, queries: pa.Table
) -> None:
    """At a = 0, search.onnx must return the hard decoding of D(E(x), E_u(x))."""
    bundle, pre = explainer.bundle, explainer.bundle.preprocessor
    x, reason = pre.transform(queries.slice(0, 400))
    assert all(r is None for r in reason)
    cand, cand_score = explainer.engine.candidates(x, np.zeros((len(x), 1), np.float32))
    assert cand.shape == (len(x), 1, pre.width) and cand_score.shape == (len(x), 1)
    cand, cand_score = cand[:, 0], cand_score[:, 0]

    z = session(bundle.graph_path("encoder")).run(None, {"x": x})[0]
    z_u = session(bundle.graph_path("encoder_u")).run(None, {"x": x})[0]
    soft = session(bundle.graph_path("decoder")).run(None, {"z": z, "z_u": z_u})[0]

    # numeric features: kept in the training band (widened to the query's value), integers
    # rounded in raw units (compared in raw units, through each feature's transform)
    lo, hi = pre.lo_hi()
    span = np.where(hi > lo, hi - lo, 1.0)
    n = pre.n_numeric
    band_lo, band_hi = pre.bands()
    kept = np.clip(
        soft[:, :n].astype(np.float64), np.minimum(x[:, :n], band_lo), np.maximum(x[:, :n], band_hi)
    )
    raw_soft = pre.raw_values(kept)
    raw_cand = pre.raw_values(cand)
    is_int = pre.integer_mask()
    # a feature determined by a category (education-num) follows the category, checked below
    follows = np.array([f.determined_by is not None for f in pre.numeric])
    raw_soft[:, follows] = raw_cand[:, follows]
    want = np.where(is_int, np.round(raw_soft), raw_soft)
    got = np.where(is_int, np.rint(raw_cand), raw_cand)
    # float32 differences (ulps of the decoder's output, times the span) may only matter right
    # at a .5 tie of an integer feature
    near = 1e-3 + 1e-5 * span
    tie = is_int & (np.abs(raw_soft - np.floor(raw_soft) - 0.5) < near)
    diff = np.abs(got - want)
    assert np.all(diff[~tie & is_int] == 0)
    assert np.all(diff[tie] <= 1)
    assert np.all(diff[:, ~is_int] <= 1e-4 * np.maximum(span[~is_int], 1.0))

    # categorical features: exactly one-hot, at the arg-max of the soft block
    offset = n
    for k in pre.cat_sizes:
        blk_c, blk_s = cand[:, offset : offset + k], soft[:, offset : offset + k]
        assert np.all(np.isin(blk_c, (0.0, 1.0))) and np.all(blk_c.sum(axis=1) == 1)
        top2 = np.sort(blk_s, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-5
        assert np.all(np.argmax(blk_c, axis=1)[clear] == np.argmax(blk_s, axis=1)[clear])
        offset += k
    for j, f in enumerate(pre.numeric):
        if f.determined_by is not None:
            cat = next(i for i, c in enumerate(pre.categorical) if c.name == f.determined_by)
            start = n + sum(pre.cat_sizes[:cat])
            idx = np.argmax(cand[:, start : start + pre.cat_sizes[cat]], axis=1)
            np.testing.assert_array_equal(np.rint(raw_cand[:, j]), np.array(f.lookup)[idx])

    # and the fused graph scores exactly that row with f
    clf = session(bundle.graph_path("classifier"))
    np.testing.assert_allclose(cand_score, clf.run(None, {"x": cand})[0], rtol=1e-5, atol=1e-6)
