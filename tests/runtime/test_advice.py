"""Advice a person can follow: per-feature transforms and their exact inverse, the training band,
features determined by a category, the revert step, plausibility, a label with more values."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import adult_queries

from gmcf.datasets import Dataset, load_dataset
from gmcf.runtime import transforms
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.errors import SchemaError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.metrics import changed_features, outside_band, ynn
from gmcf.runtime.revert import revert_changes
from gmcf.runtime.schema import DataSchema, Feature, Preprocessor


@pytest.fixture(scope="module")
def adult_pre() -> Preprocessor:
    ds = load_dataset("adult")
    return Preprocessor.fit(ds.table, ds.schema.features)


@pytest.fixture(scope="module")
def book() -> Dataset:
    return load_dataset("lending-club-book")


@pytest.fixture(scope="module")
def book_pre(book: Dataset) -> Preprocessor:
    return Preprocessor.fit(book.table, book.schema.features)


# -- transforms ------------------------------------------------------------------------------------
def test_heavy_tails_get_a_log_transform(adult_pre: Preprocessor, book_pre: Preprocessor) -> None:
    kinds = {f.name: f.transform for f in (*adult_pre.numeric, *book_pre.numeric)}
    assert kinds["capital-gain"] == kinds["capital-loss"] == "log"
    assert kinds["annual_inc"] == kinds["revol_bal"] == "log"
    assert kinds["age"] == kinds["hours-per-week"] == kinds["dti"] == kinds["loan_amnt"] == "minmax"
    # an ordinary income is no longer squeezed next to 0 by a $7.1M maximum
    inc = next(f for f in book_pre.numeric if f.name == "annual_inc")
    assert transforms.raw_to_model(inc, np.array([60_000.0]))[0] > 0.3
    minmax = Feature("annual_inc", "integer", inc.lo, inc.hi, transform="minmax")
    assert transforms.raw_to_model(minmax, np.array([60_000.0]))[0] < 0.01


@pytest.mark.parametrize("transform", transforms.TRANSFORMS)
@pytest.mark.parametrize(
    "lo, hi", [(0.0, 99_999.0), (1_896.0, 7_141_778.0), (-50.0, 30.0), (5.0, 5.0)]
)
def test_each_transform_inverts_exactly(transform: str, lo: float, hi: float) -> None:
    f = Feature("v", "continuous", lo, hi, transform=transform)
    span = max(hi - lo, 1.0)
    # the training range and the margin a query may lie outside it (half the span)
    raw = np.concatenate([np.linspace(lo - 0.5 * span, hi + 0.5 * span, 2001), [lo, hi]])
    u = transforms.raw_to_model(f, raw)
    np.testing.assert_allclose(transforms.model_to_raw(f, u), raw, rtol=1e-12, atol=1e-9 * span)
    assert np.all(np.diff(u[:-2]) > 0) or hi == lo  # monotone: bands and bounds map across
    if hi > lo:
        np.testing.assert_allclose(
            transforms.raw_to_model(f, np.array([lo, hi])), [0.0, 1.0], atol=1e-12
        )


@pytest.mark.parametrize("column", ["annual_inc", "revol_bal", "loan_amnt"])
def test_integers_survive_float32_model_space(
    book: Dataset, book_pre: Preprocessor, column: str
) -> None:
    """Every training value of an integer feature below a million comes back exactly from the
    float32 row; above, float32 holds 7 digits (one income of $6,000,000 reads $6,000,001)."""
    x, _ = book_pre.transform(book.table)
    back = book_pre.inverse_values(x)[column]
    want = book.table.column(column).to_numpy().astype(np.int64)
    small = want < 1_000_000
    np.testing.assert_array_equal(back[small], want[small])
    np.testing.assert_allclose(back[~small], want[~small], rtol=5e-7, atol=0)


def test_graph_decoding_lands_on_integers_the_runtime_returns(book_pre: Preprocessor) -> None:
    """The graph's float32 inverse, rounding and transform (``NumericHard``) give rows whose raw
    values the runtime's float64 inverse reads as the same integers, and which it encodes back
    to the same row."""
    torch = pytest.importorskip("torch")
    from gmcf.trainer.hard_numeric import NumericHard

    pre = book_pre
    u = np.random.default_rng(0).random((5000, pre.n_numeric)).astype(np.float32)
    hard = NumericHard(pre)(torch.from_numpy(u)).numpy()
    raw = pre.raw_values(hard)
    ints = pre.integer_mask()
    # The graph rounds in raw units and stores the integer in float32 model space; the runtime's
    # float64 inverse lands within 0.5 of it below $1M (so rounding returns that integer), and
    # within float32's 7 digits above.
    resid = np.abs(raw[:, ints] - np.rint(raw[:, ints]))
    below = raw[:, ints] < 1e6
    assert (resid[below] < 0.5).all() and (resid[~below] <= 5e-7 * raw[:, ints][~below] + 0.5).all()
    # ... and that integer, encoded again, is the row f scored (to float32 precision)
    again = pre.model_values(np.where(ints, np.rint(raw), raw)).astype(np.float32)
    np.testing.assert_allclose(again, hard, atol=2e-7)
    # the torch inverse is the runtime's inverse
    np.testing.assert_allclose(
        NumericHard(pre).to_raw(torch.from_numpy(u)).numpy(),
        pre.raw_values(u),
        rtol=2e-6,
        atol=1e-3,
    )


def test_declared_transforms_and_bad_ones() -> None:
    d = {
        "features": {"integer": ["a"], "continuous": ["b"]},
        "label": "y",
        "positive_class": "1",
        "transforms": {"a": "log", "b": "minmax"},
    }
    schema = DataSchema.from_dict(d)
    assert {f.name: f.transform for f in schema.features} == {"a": "log", "b": "minmax"}
    with pytest.raises(SchemaError, match="transform must be one of"):
        DataSchema.from_dict({**d, "transforms": {"a": "sqrt"}})
    with pytest.raises(SchemaError, match="not a numeric feature"):
        DataSchema.from_dict({**d, "transforms": {"c": "log"}})


def test_band_is_the_central_training_range(book: Dataset, book_pre: Preprocessor) -> None:
    inc = next(f for f in book_pre.numeric if f.name == "annual_inc")
    v = book.table.column("annual_inc").to_numpy()
    assert inc.band_lo == np.quantile(v, 0.005, method="inverted_cdf") > v.min()
    assert inc.band_hi == np.quantile(v, 0.995, method="inverted_cdf") < v.max()


# -- determined features -------------------------------------------------------------------------
def test_education_num_is_detected_as_determined(adult_pre: Preprocessor) -> None:
    ds = load_dataset("adult")
    f = next(f for f in adult_pre.numeric if f.name == "education-num")
    assert f.determined_by == "education"
    edu = next(c for c in adult_pre.categorical if c.name == "education")
    pairs = set(
        zip(
            ds.table.column("education").to_pylist(),
            ds.table.column("education-num").to_pylist(),
            strict=True,
        )
    )
    assert pairs == {(c, int(v)) for c, v in zip(edu.categories, f.lookup, strict=True)}
    # nothing else is: age is not determined by education
    assert all(g.determined_by is None for g in adult_pre.numeric if g.name != "education-num")
    # a schema may switch detection off
    off = Preprocessor.fit(ds.table, ds.schema.features, detect=False)
    assert all(g.determined_by is None for g in off.numeric)


def test_declared_dependency_takes_the_modal_value() -> None:
    table = pa.table(
        {"grade": ["A", "A", "A", "B", "B", "C"], "rate": [5.0, 5.0, 6.0, 8.0, 8.0, 11.0]}
    )
    schema = DataSchema.from_dict(
        {
            "features": {"continuous": ["rate"], "categorical": ["grade"]},
            "label": "y",
            "positive_class": "1",
            "determined": {"rate": "grade"},
        }
    )
    pre = Preprocessor.fit(table, schema.features, schema.determined)
    assert pre.numeric[0].determined_by == "grade" and pre.numeric[0].lookup == (5.0, 8.0, 11.0)
    # not 1:1 in the data (A has two rates), so not detected without the declaration
    assert Preprocessor.fit(table, schema.features).numeric[0].determined_by is None
    with pytest.raises(SchemaError, match="unknown feature"):
        DataSchema.from_dict(
            {
                **schema.__dict__,
                "features": {"continuous": ["rate"]},
                "label": "y",
                "positive_class": "1",
                "determined": {"rate": "grade"},
            }
        )
    with pytest.raises(SchemaError, match="only be determined by a categorical"):
        DataSchema.from_dict(
            {
                "features": {"continuous": ["rate", "r2"]},
                "label": "y",
                "positive_class": "1",
                "determined": {"rate": "r2"},
            }
        )


def _edu_consistent(pre: Preprocessor, rows: np.ndarray) -> np.ndarray:
    j = next(i for i, f in enumerate(pre.numeric) if f.name == "education-num")
    f = pre.numeric[j]
    idx = np.argmax(rows[:, pre.n_numeric :], axis=1)  # education is the only categorical
    return np.asarray(np.rint(pre.raw_values(rows)[:, j]) == np.array(f.lookup)[idx])


def test_every_candidate_of_the_search_graphs_is_consistent(tiny_bundle: Path) -> None:
    ex = Explainer.from_bundle(tiny_bundle)
    pre = ex.bundle.preprocessor
    x, _ = pre.transform(adult_queries(300))
    alphas = np.tile(np.linspace(0.1, 2.0, 12, dtype=np.float32), (len(x), 1))
    cand, _ = ex.engine.candidates(x, alphas)
    assert _edu_consistent(pre, cand.reshape(-1, pre.width)).all()
    # bounded: a range on education-num allows only the educations whose number lies in it
    c = Constraints.from_dict({"education-num": {"range": [9, 12]}})
    lower, upper = c.bounds(pre, x)
    cand, _ = ex.engine.candidates(x, alphas, lower=lower, upper=upper)
    rows = cand.reshape(-1, pre.width)
    assert _edu_consistent(pre, rows).all()
    num = pre.inverse_values(rows)["education-num"]
    assert ((num >= 9) & (num <= 12)).all()


# -- revert --------------------------------------------------------------------------------------
def test_revert_keeps_validity_and_constraints(tiny_bundle: Path) -> None:
    queries = adult_queries(2000, seed=3)
    constraints = {"age": {"direction": "increase"}, "hours-per-week": {"range": [30, 60]}}
    on = Explainer.from_bundle(tiny_bundle, constraints=constraints)
    off = Explainer.from_bundle(tiny_bundle, constraints=constraints, revert=False)
    a, b = on.explain(queries), off.explain(queries)
    pre = on.bundle.preprocessor
    st = np.asarray(a.column("status").to_numpy(zero_copy_only=False))
    assert (st == np.asarray(b.column("status").to_numpy(zero_copy_only=False))).all()
    found = np.nonzero(st == "found")[0]
    assert found.size > 100
    from helpers import cf_table

    x, _ = pre.transform(queries.take(pa.array(found)))
    cf, reason = pre.transform(cf_table(a, pre, found))
    assert all(r is None for r in reason)
    s = on.settings
    score = on.engine.score(cf)
    assert ((score >= s.threshold) & (score < s.threshold + s.tol)).all()
    np.testing.assert_allclose(
        a.column("cf_score").to_numpy(zero_copy_only=False)[found], score, atol=1e-5
    )
    assert on.constraints.satisfied(pre, x, cf).all()
    assert _edu_consistent(pre, cf).all()
    l0_on = a.column("sparsity_l0").to_numpy(zero_copy_only=False)[found]
    l0_off = b.column("sparsity_l0").to_numpy(zero_copy_only=False)[found]
    reverted = a.column("reverted").to_numpy(zero_copy_only=False)[found]
    assert (l0_on <= l0_off).all() and (l0_off - l0_on >= reverted).all()
    assert (
        reverted.sum() > 0
        and (b.column("reverted").to_numpy(zero_copy_only=False)[found] == 0).all()
    )
    np.testing.assert_array_equal(l0_on, changed_features(pre, x, cf))


def _known_f_rows(
    n: int = 600, weight_c: float = 0.6
) -> tuple[Preprocessor, Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]:
    """Four features, f logistic in their sum with unequal weights; queries f rejects and
    answers f approves, far from them."""
    pre = Preprocessor(
        (
            Feature("a", "continuous", 0.0, 1.0, transform="minmax"),
            Feature("b", "continuous", 0.0, 1.0, transform="minmax"),
            Feature("c", "continuous", 0.0, 1.0, transform="minmax"),
            Feature("k", "categorical", categories=("p", "q")),
        )
    )
    w = np.array([3.0, 1.0, weight_c, 0.0, 1.0], np.float32)

    def f(rows: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-(rows @ w - 2.0))), np.float32)

    rng = np.random.default_rng(1)
    x = np.zeros((n, 5), np.float32)
    x[:, 3] = 1.0
    cf = np.concatenate([rng.random((n, 3)), np.zeros((n, 1)), np.ones((n, 1))], axis=1).astype(
        np.float32
    )
    cf[:, 0] += 0.5
    ok = f(cf) >= 0.5
    return pre, f, x[ok], cf[ok]


def _assert_no_change_can_go_back(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, new: np.ndarray
) -> None:
    for g in ([0], [1], [2], [3, 4]):
        changed = (new[:, g] != x[:, g]).any(axis=1)
        trial = new.copy()
        trial[:, g] = x[:, g]
        assert not ((f(trial) >= 0.5) & changed).any()


def test_revert_leaves_only_needed_changes() -> None:
    """On a known f, after the step no single remaining change can be put back."""
    pre, f, x, cf = _known_f_rows(n=400, weight_c=0.2)
    new, score, reverted = revert_changes(pre, f, x, cf, f(cf), 0.5, 1.0)
    assert (score >= 0.5).all() and (score < 1.0).all()
    np.testing.assert_allclose(score, f(new), rtol=1e-6)
    _assert_no_change_can_go_back(f, x, new)
    assert reverted.sum() > 0


def test_screened_revert_with_an_exact_screen_leaves_only_needed_changes() -> None:
    """g = f: the leap and the rounds end where f's own greedy would let no change go back."""
    pre, f, x, cf = _known_f_rows()
    asked = []

    def confirm(rows: np.ndarray) -> np.ndarray:
        asked.append(len(rows))
        return f(rows)

    evals = np.zeros(len(x), np.int32)
    new, score, reverted = revert_changes(
        pre, f, x, cf, f(cf), 0.5, 1.0, None, evals, confirm=confirm, tries=2
    )
    np.testing.assert_allclose(score, f(new), rtol=1e-6)
    assert (score >= 0.5).all() and (score < 1.0).all()
    assert evals.sum() == sum(asked)  # every call of f counted, on its row
    _assert_no_change_can_go_back(f, x, new)
    # the leap put back several changes with one call of f on some rows
    assert ((reverted >= 2) & (evals < reverted)).any()


def test_screened_revert_with_a_biased_screen_returns_only_rows_f_approves() -> None:
    """g off by a smooth bias: f still decides every row returned, and fewer calls of f than
    the greedy with f alone."""
    pre, f, x, cf = _known_f_rows()

    def g(rows: np.ndarray) -> np.ndarray:
        return np.clip(f(rows) + 0.08 * np.sin(7.0 * rows[:, 1]) + 0.05, 0.0, 1.0).astype(
            np.float32
        )

    evals = np.zeros(len(x), np.int32)
    new, score, reverted = revert_changes(
        pre, g, x, cf, f(cf), 0.5, 1.0, None, evals, confirm=f, tries=2
    )
    np.testing.assert_allclose(score, f(new), rtol=1e-6)
    assert (score >= 0.5).all() and (score < 1.0).all()
    assert (np.count_nonzero(new != cf, axis=1) >= reverted).all() and reverted.sum() > 0
    exact = np.zeros(len(x), np.int32)
    _, _, exact_rev = revert_changes(pre, f, x, cf, f(cf), 0.5, 1.0, None, exact)
    assert evals.sum() < exact.sum()
    # as sparse as f's own greedy, within a tenth of a change per row
    assert reverted.mean() >= exact_rev.mean() - 0.1


# -- plausibility, evaluate's measures -----------------------------------------------------------
def test_plausibility_is_the_target_log_density(tiny_bundle: Path) -> None:
    ex = Explainer.from_bundle(tiny_bundle)
    out = ex.explain(adult_queries(500))
    found = np.nonzero(np.asarray(out.column("status").to_numpy(zero_copy_only=False)) == "found")[
        0
    ]
    pre = ex.bundle.preprocessor
    from helpers import cf_table

    cf, _ = pre.transform(cf_table(out, pre, found))
    z = ex.engine.latent(cf)
    lat = json.loads((tiny_bundle / "manifest.json").read_text())["latent"]
    mu, var = np.array(lat["mu"][1]), np.array(lat["var"][1])
    want = -0.5 * (((z - mu) ** 2 / var).sum(1) + np.log(2 * np.pi * var).sum())
    np.testing.assert_allclose(
        out.column("plausibility").to_numpy(zero_copy_only=False)[found], want, rtol=1e-4
    )
    assert out.column("plausibility").null_count == out.num_rows - found.size


def test_ynn_and_outside_band_by_hand() -> None:
    train = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]], np.float32)
    approved = np.array([False, False, False, True, True, True])
    np.testing.assert_allclose(
        ynn(np.array([[1.05], [0.05], [0.55]], np.float32), train, approved, k=3), [1.0, 0.0, 1 / 3]
    )
    lo, hi = np.array([0.0, 10.0]), np.array([1.0, 20.0])
    x = np.array([[0.5, 15.0], [2.0, 15.0]])
    cf = np.array([[1.5, 25.0], [3.0, 15.0]])
    np.testing.assert_array_equal(outside_band(x, cf, lo, hi), [[True, True], [False, False]])


# -- labels --------------------------------------------------------------------------------------
def test_a_label_with_three_values_trains_positive_against_the_rest(book: Dataset) -> None:
    pytest.importorskip("torch")
    from gmcf.trainer.prepare import label_classes, labels

    y = labels(book)
    status = np.asarray(book.table.column("status").to_pylist())
    np.testing.assert_array_equal(y, (status == "Fully Paid").astype(np.int64))
    assert label_classes(book) == {
        "positive": ["Fully Paid"],
        "negative": ["Charged Off", "Default"],
    }


def test_the_torch_inverse_is_the_runtime_inverse_for_every_bundle_kind(
    adult_pre: Preprocessor,
) -> None:
    """``NumericHard.to_raw`` (for graphs that need raw values of a model-space row) matches
    ``Preprocessor.raw_values`` with or without log features, and ``from_raw`` inverts it."""
    torch = pytest.importorskip("torch")
    from gmcf.trainer.hard_numeric import NumericHard

    minmax = Preprocessor(
        tuple(
            Feature(f.name, f.kind, f.lo, f.hi, transform="minmax") if f.is_numeric else f
            for f in adult_pre.features
        )
    )
    u = np.random.default_rng(2).random((1000, adult_pre.n_numeric)).astype(np.float32)
    for pre in (adult_pre, minmax):
        for columns in (False, True):
            mod = NumericHard(pre, columns=columns)
            ut = torch.from_numpy(u.T.copy()[:, :, None] if columns else u)
            raw = mod.to_raw(ut).numpy()
            raw = raw[:, :, 0].T if columns else raw
            np.testing.assert_allclose(raw, pre.raw_values(u), rtol=2e-6, atol=1e-2)
            back = mod.from_raw(mod.to_raw(ut)).numpy()
            np.testing.assert_allclose(back[:, :, 0].T if columns else back, u, atol=2e-6)
