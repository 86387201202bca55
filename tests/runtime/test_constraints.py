"""Actionability constraints and several counterfactuals per query, on real Adult rows.

The bundle may be retrained at any time, so nothing here pins a number it produces: the tests
check what a constraint promises (every returned counterfactual satisfies it), how the flags, the
files and the bundle's defaults agree, how K options are laid out, and that a bad constraint is a
one-line error before any row is read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import adult_queries, assert_clean_failure, cf_table, invoke

from gmcf.runtime import Explainer
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.errors import ConstraintError, GmcfError
from gmcf.runtime.metrics import option_diversity
from gmcf.runtime.schema import Preprocessor

N_ROWS = 2000
SEED = 11

#: The constraint set of most tests, as a dict (the JSON file's format), as CLI flags and as TOML.
ACTIONABLE = {
    "age": {"direction": "increase"},
    "education": {"immutable": True},
    "hours-per-week": {"range": [20, 60]},
    "capital-loss": {"direction": "decrease"},
}
FLAGS = [
    "--increase-only",
    "age",
    "--immutable",
    "education",
    "--range",
    "hours-per-week=20:60",
    "--decrease-only",
    "capital-loss",
]
TOML = """\
[age]
direction = "increase"

[education]
immutable = true

[hours-per-week]
range = [20, 60]

[capital-loss]
direction = "decrease"
"""
ALLOWED_EDUCATION = ("Bachelors", "Masters", "Doctorate")


# -- helpers --------------------------------------------------------------------------------------


def run_cli(src: Path, dst: Path, bundle: Path, *extra: str) -> pa.Table:
    code, _, stderr = invoke(
        "explain", str(src), "-o", str(dst), "--bundle", str(bundle), "--id-column", "id", *extra
    )
    assert code == 0, stderr
    return pq.read_table(dst)


def statuses(out: pa.Table) -> np.ndarray:
    return np.array(out.column("status").to_pylist(), dtype=object)


def column(out: pa.Table, name: str) -> np.ndarray:
    """A column as a numpy array (categories as str, nulls as None/NaN)."""
    col = out.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_string(col.type):
        return np.array(col.to_pylist(), dtype=object)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def query_table(out: pa.Table, pre: Preprocessor, rows: np.ndarray) -> pa.Table:
    return out.take(pa.array(rows)).select(pre.names)


def cf_names(pre: Preprocessor) -> list[str]:
    return [f"cf_{f.name}" for f in pre.features]


def assert_same(a: pa.Table, b: pa.Table, names: list[str]) -> None:
    assert a.num_rows == b.num_rows
    for name in names:
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name


def assert_actionable(out: pa.Table, ex: Explainer) -> np.ndarray:
    """Every found row of ``out`` meets ACTIONABLE, checked in raw units and with
    ``Constraints.satisfied``; returns the found rows."""
    st = statuses(out)
    found = np.nonzero(st == "found")[0]
    assert found.size > 0
    age, cf_age = column(out, "age")[found], column(out, "cf_age")[found]
    assert np.all(cf_age >= age)
    assert np.all(column(out, "cf_education")[found] == column(out, "education")[found])
    hours = column(out, "cf_hours-per-week")[found]
    assert np.all((hours >= 20) & (hours <= 60))
    assert np.all(column(out, "cf_capital-loss")[found] <= column(out, "capital-loss")[found])
    # the same through the runtime's own check, in model space
    pre = ex.bundle.preprocessor
    x, rx = pre.transform(query_table(out, pre, found))
    cf, rcf = pre.transform(cf_table(out, pre, found))
    assert all(r is None for r in rx) and all(r is None for r in rcf)
    ok = Constraints.from_dict(ACTIONABLE).satisfied(pre, x, cf)
    assert ok.all(), f"{(~ok).sum()} of {found.size} counterfactuals break a constraint"
    # and they are still counterfactuals
    t, upper = ex.settings.threshold, ex.settings.threshold + ex.settings.tol
    cf_score = column(out, "cf_score")[found]
    assert np.all((cf_score >= t) & (cf_score < upper))
    return found


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def queries() -> pa.Table:
    return adult_queries(N_ROWS, SEED)


@pytest.fixture(scope="module")
def query_file(queries: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("constraints") / "queries.parquet"
    pq.write_table(queries, path, row_group_size=700)
    return path


@pytest.fixture(scope="module")
def plain(adult_bundle: Path) -> Explainer:
    return Explainer.from_bundle(adult_bundle)


@pytest.fixture(scope="module")
def actionable(adult_bundle: Path) -> Explainer:
    return Explainer.from_bundle(adult_bundle, constraints=ACTIONABLE)


@pytest.fixture(scope="module")
def actionable_out(actionable: Explainer, queries: pa.Table) -> pa.Table:
    return actionable.explain(queries, id_column="id")


@pytest.fixture(scope="module")
def flags_out(query_file: Path, adult_bundle: Path) -> pa.Table:
    """ACTIONABLE through the CLI flags."""
    return run_cli(query_file, query_file.with_name("flags.parquet"), adult_bundle, *FLAGS)


# -- 1. every returned counterfactual satisfies every constraint -----------------------------------
def test_found_rows_meet_every_constraint(
    actionable: Explainer, actionable_out: pa.Table, queries: pa.Table
) -> None:
    out = actionable_out
    assert out.num_rows == queries.num_rows
    assert out.column("id").to_pylist() == queries.column("id").to_pylist()
    assert_actionable(out, actionable)


def test_constraints_bind(plain: Explainer, queries: pa.Table) -> None:
    """Without constraints some counterfactuals break them: the checks above are not vacuous."""
    out = plain.explain(queries, id_column="id")
    pre = plain.bundle.preprocessor
    found = np.nonzero(statuses(out) == "found")[0]
    x, _ = pre.transform(query_table(out, pre, found))
    cf, _ = pre.transform(cf_table(out, pre, found))
    assert not Constraints.from_dict(ACTIONABLE).satisfied(pre, x, cf).all()


def test_cli_flags_meet_every_constraint(
    flags_out: pa.Table, actionable: Explainer, actionable_out: pa.Table
) -> None:
    assert_actionable(flags_out, actionable)
    assert_same(
        flags_out,
        actionable_out,
        ["id", "status", "reason", *cf_names(actionable.bundle.preprocessor)],
    )


def test_k_options_meet_every_constraint(adult_bundle: Path, queries: pa.Table) -> None:
    ex = Explainer.from_bundle(adult_bundle, constraints=ACTIONABLE, num_cfs=3)
    out = ex.explain(queries.slice(0, 800), id_column="id")
    assert_actionable(out, ex)


def test_fractional_range_on_an_integer_feature(adult_bundle: Path, queries: pa.Table) -> None:
    """An integer feature's counterfactual value must lie inside a range with fractional ends."""
    ex = Explainer.from_bundle(
        adult_bundle, constraints={"hours-per-week": {"range": [20.5, 25.5]}}
    )
    out = ex.explain(queries.slice(0, 800), id_column="id")
    found = np.nonzero(statuses(out) == "found")[0]
    assert found.size > 0
    hours = column(out, "cf_hours-per-week")[found]
    assert np.all((hours >= 21) & (hours <= 25)), sorted(set(hours))


def test_range_without_an_integer_is_rejected(adult_bundle: Path) -> None:
    with pytest.raises(ConstraintError, match="hours-per-week"):
        Explainer.from_bundle(adult_bundle, constraints={"hours-per-week": {"range": [30.2, 30.8]}})


# -- 2. allowed categories ------------------------------------------------------------------------
def test_allowed_categories(adult_bundle: Path, queries: pa.Table) -> None:
    ex = Explainer.from_bundle(
        adult_bundle, constraints={"education": {"allowed": list(ALLOWED_EDUCATION)}}
    )
    out = ex.explain(queries, id_column="id")
    st = statuses(out)
    found = np.nonzero(st == "found")[0]
    assert found.size > 0
    own = column(out, "education")[found]
    assert np.mean(~np.isin(own, ALLOWED_EDUCATION)) > 0.3  # most queries start outside the set
    assert set(column(out, "cf_education")[found]) <= set(ALLOWED_EDUCATION)


def test_cli_allow_flag(query_file: Path, adult_bundle: Path) -> None:
    out = run_cli(
        query_file,
        query_file.with_name("allow.parquet"),
        adult_bundle,
        "--allow",
        "education=" + ",".join(ALLOWED_EDUCATION),
    )
    found = np.nonzero(statuses(out) == "found")[0]
    assert found.size > 0
    assert set(column(out, "cf_education")[found]) <= set(ALLOWED_EDUCATION)


# -- 3. files and flags agree ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_constraints_file_equals_flags(
    fmt: str, query_file: Path, adult_bundle: Path, flags_out: pa.Table, actionable: Explainer
) -> None:
    path = query_file.with_name(f"constraints.{fmt}")
    path.write_text(TOML if fmt == "toml" else json.dumps(ACTIONABLE))
    assert Constraints.from_file(path) == Constraints.from_options(
        immutable=["education"],
        increase_only=["age"],
        decrease_only=["capital-loss"],
        ranges=["hours-per-week=20:60"],
    )
    out = run_cli(
        query_file,
        query_file.with_name(f"file_{fmt}.parquet"),
        adult_bundle,
        "--constraints",
        str(path),
    )
    assert out.schema == flags_out.schema
    assert_same(out, flags_out, out.column_names)


# -- 4. immutable numeric -------------------------------------------------------------------------
def test_immutable_numeric_keeps_the_exact_value(adult_bundle: Path, queries: pa.Table) -> None:
    ex = Explainer.from_bundle(adult_bundle, constraints={"age": {"immutable": True}})
    out = ex.explain(queries, id_column="id")
    found = np.nonzero(statuses(out) == "found")[0]
    assert found.size > 0
    assert column(out, "cf_age")[found].tolist() == column(out, "age")[found].tolist()


# -- 5. rows that cannot meet the constraints -----------------------------------------------------
def test_everything_immutable_is_not_found_with_a_reason(
    adult_bundle: Path, plain: Explainer, query_file: Path, queries: pa.Table
) -> None:
    """Nothing may change: no rejected query has a counterfactual, and every row is kept."""
    frozen = {name: {"immutable": True} for name in plain.bundle.preprocessor.names}
    ex = Explainer.from_bundle(adult_bundle, constraints=frozen)
    dst = query_file.with_name("frozen.parquet")
    summary = ex.explain_parquet(query_file, dst, batch_size=500, id_column="id")
    out = pq.read_table(dst)
    assert out.num_rows == summary.rows == queries.num_rows
    assert out.column("id").to_pylist() == queries.column("id").to_pylist()
    st = statuses(out)
    assert set(st) == {"already_target", "not_found"}
    assert summary.found == 0 and summary.not_found == (st == "not_found").sum() > 0
    reason = np.array(out.column("reason").to_pylist(), dtype=object)
    assert all(reason[st == "not_found"])
    assert not any(reason[st == "already_target"])
    for name in cf_names(ex.bundle.preprocessor):
        assert out.column(name).null_count == out.num_rows


@pytest.mark.parametrize(
    "spec, impossible",
    [
        ({"age": {"direction": "increase", "range": [20, 50]}}, lambda q: q["age"] > 50),
        (
            {"hours-per-week": {"direction": "decrease", "range": [30, 60]}},
            lambda q: q["hours-per-week"] < 30,
        ),
        (
            {"age": {"immutable": True, "range": [20, 50]}},
            lambda q: (q["age"] > 50) | (q["age"] < 20),
        ),
    ],
    ids=["increase-above-range", "decrease-below-range", "immutable-outside-range"],
)
@pytest.mark.parametrize("k", [1, 3])
def test_queries_that_cannot_meet_a_range(
    spec: dict, impossible, k: int, adult_bundle: Path, queries: pa.Table
) -> None:
    """A direction (or immutability) and a range that no value meets for a query: that query is
    not_found with a reason naming the feature, never a counterfactual that breaks the range."""
    ((name, c),) = spec.items()
    lo, hi = c["range"]
    ex = Explainer.from_bundle(adult_bundle, constraints=spec, num_cfs=k)
    out = ex.explain(queries, id_column="id")
    if k == 1:
        assert out.num_rows == queries.num_rows
    else:
        # a query without a counterfactual has exactly one row, with a null rank
        ids = np.array(out.column("id").to_pylist())
        no_cf = np.array(out.column("cf_rank").to_pylist(), dtype=object) == None  # noqa: E711
        assert len(set(ids[no_cf])) == no_cf.sum()
        assert set(ids[no_cf]).isdisjoint(ids[~no_cf])
        assert len(set(ids)) == queries.num_rows
    st = statuses(out)
    q = {n: column(out, n) for n in ("age", "hours-per-week")}
    stuck = impossible(q) & (st != "already_target")
    assert stuck.sum() > 0
    assert set(st[stuck]) == {"not_found"}
    reason = np.array(out.column("reason").to_pylist(), dtype=object)
    assert all(name in r for r in reason[stuck]), set(reason[stuck])
    found = st == "found"
    assert found.sum() > 0
    v = column(out, f"cf_{name}")[found]
    assert np.all((v >= lo) & (v <= hi))
    pre = ex.bundle.preprocessor
    rows = np.nonzero(found)[0]
    x, _ = pre.transform(query_table(out, pre, rows))
    cf, _ = pre.transform(cf_table(out, pre, rows))
    assert ex.constraints.satisfied(pre, x, cf).all()
    # and the runtime's check agrees that no counterfactual can exist for the stuck queries
    rows = np.nonzero(stuck)[0]
    x, _ = pre.transform(query_table(out, pre, rows))
    assert not ex.constraints.satisfied(pre, x, x).any()


def test_immutable_category_outside_the_allowed_set(adult_bundle: Path, queries: pa.Table) -> None:
    """An immutable category that the allowed set excludes: no counterfactual can exist."""
    spec = {"education": {"immutable": True, "allowed": list(ALLOWED_EDUCATION)}}
    ex = Explainer.from_bundle(adult_bundle, constraints=spec)
    out = ex.explain(queries, id_column="id")
    assert out.num_rows == queries.num_rows
    st, edu = statuses(out), column(out, "education")
    stuck = ~np.isin(edu, ALLOWED_EDUCATION) & (st != "already_target")
    assert stuck.sum() > 0
    assert set(st[stuck]) == {"not_found"}
    reason = np.array(out.column("reason").to_pylist(), dtype=object)
    assert all("education" in r for r in reason[stuck])
    found = st == "found"
    assert found.sum() > 0
    assert np.all(column(out, "cf_education")[found] == edu[found])
    assert set(edu[found]) <= set(ALLOWED_EDUCATION)


# -- 6. K options per query -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def k_queries(queries: pa.Table) -> pa.Table:
    """800 real rows, three of them made invalid (missing age, unknown education)."""
    q = queries.slice(0, 800)
    age = q.column("age").to_pylist()
    edu = q.column("education").to_pylist()
    age[5] = None
    edu[17] = "Kindergarten"
    age[400] = None
    q = q.set_column(
        q.schema.get_field_index("age"), "age", pa.array(age, q.schema.field("age").type)
    )
    return q.set_column(
        q.schema.get_field_index("education"),
        "education",
        pa.array(edu, q.schema.field("education").type),
    )


@pytest.fixture(scope="module")
def k_explainer(adult_bundle: Path) -> Explainer:
    return Explainer.from_bundle(adult_bundle, num_cfs=3)


def test_k_options_layout(k_explainer: Explainer, k_queries: pa.Table) -> None:
    ex, k = k_explainer, 3
    out = ex.explain(k_queries, id_column="id")
    pre = ex.bundle.preprocessor
    ids = out.column("id").to_pylist()
    st = statuses(out)
    rank = out.column("cf_rank").to_pylist()
    dist = column(out, "proximity_l2")
    t, upper = ex.settings.threshold, ex.settings.threshold + ex.settings.tol
    options = list(
        zip(*(out.column(n).cast(pa.string()).to_pylist() for n in cf_names(pre)), strict=True)
    )
    # rows of one query are adjacent and queries keep their input order
    runs: list[tuple[int, list[int]]] = []
    for i, qid in enumerate(ids):
        if runs and runs[-1][0] == qid:
            runs[-1][1].append(i)
        else:
            runs.append((qid, [i]))
    assert [qid for qid, _ in runs] == k_queries.column("id").to_pylist()
    seen = {"found": 0, "not_found": 0, "already_target": 0, "invalid": 0, "multi": 0}
    for _, rows in runs:
        kinds = set(st[rows])
        assert len(kinds) == 1, kinds
        kind = kinds.pop()
        seen[kind] += 1
        if kind != "found":
            assert len(rows) == 1 and rank[rows[0]] is None, (kind, rows)
            continue
        assert 1 <= len(rows) <= k
        seen["multi"] += len(rows) > 1
        assert [rank[i] for i in rows] == list(range(1, len(rows) + 1))
        opts = [options[i] for i in rows]
        assert len(set(opts)) == len(opts), opts
        d = dist[rows]
        assert np.all(np.diff(d) >= 0), d
        s = column(out, "cf_score")[rows]
        assert np.all((s >= t) & (s < upper))
    assert seen["invalid"] == 3
    assert seen["found"] > 0 and seen["already_target"] > 0 and seen["multi"] > 0, seen


def test_one_option_is_the_default_output(
    adult_bundle: Path, plain: Explainer, k_queries: pa.Table, query_file: Path
) -> None:
    one = Explainer.from_bundle(adult_bundle, num_cfs=1).explain(k_queries, id_column="id")
    ref = plain.explain(k_queries, id_column="id")
    assert "cf_rank" not in one.column_names
    assert one.schema == ref.schema
    assert_same(one, ref, one.column_names)
    # and through the CLI
    a = run_cli(query_file, query_file.with_name("k1.parquet"), adult_bundle, "--num-cfs", "1")
    b = run_cli(query_file, query_file.with_name("k_default.parquet"), adult_bundle)
    assert "cf_rank" not in a.column_names
    assert_same(a, b, ["id", "status", "reason", *cf_names(plain.bundle.preprocessor)])


def test_k_options_do_not_depend_on_batch_size(
    k_explainer: Explainer, k_queries: pa.Table, tmp_path: Path
) -> None:
    src = tmp_path / "k.parquet"
    pq.write_table(k_queries, src)
    outs = []
    for batch in (300, 65536):
        dst = tmp_path / f"k_{batch}.parquet"
        k_explainer.explain_parquet(src, dst, batch_size=batch, id_column="id")
        outs.append(pq.read_table(dst))
    names = ["id", "status", "cf_rank", *cf_names(k_explainer.bundle.preprocessor)]
    assert_same(outs[0], outs[1], names)
    assert outs[0].num_rows > k_queries.num_rows


def test_option_diversity_by_hand(k_explainer: Explainer) -> None:
    """Query 0: three options; query 1: one; query 2: two identical in all but one category."""
    pre = k_explainer.bundle.preprocessor
    n = pre.n_numeric
    code = np.zeros((6, pre.code_width), np.float32)
    code[1, 0] = 0.3  # differs from option 0 in one numeric feature by 0.3
    code[2, 0], code[2, n] = 0.4, 1.0  # by 0.4 and a category (one-hot distance sqrt 2)
    code[5, n] = 2.0
    cf = pre.expand_code(code)
    l2, l0, multi = option_diversity(pre, np.array([0, 0, 0, 1, 2, 2]), cf)
    q0_l2 = (0.3 + np.sqrt(0.16 + 2) + np.sqrt(0.01 + 2)) / 3
    q2_l2 = np.sqrt(2)
    assert multi == 2
    assert l2 == pytest.approx((q0_l2 + q2_l2) / 2, rel=1e-6)
    assert l0 == pytest.approx(((1 + 2 + 2) / 3 + 1) / 2)


def test_k_options_are_diverse(k_explainer: Explainer, k_queries: pa.Table) -> None:
    out = k_explainer.explain(k_queries, id_column="id")
    pre = k_explainer.bundle.preprocessor
    found = out.filter(pc.equal(out.column("status"), "found"))
    cf, _ = pre.transform(found.select(cf_names(pre)).rename_columns(pre.names))
    l2, l0, multi = option_diversity(pre, found.column("id").to_numpy(), cf)
    assert multi > 0
    assert l2 > 0.0 and l0 >= 1.0  # distinct options differ in at least one feature


# -- 7. bad constraints: one line, before any row is read -----------------------------------------
BAD = {
    "unknown-immutable": (["--immutable", "salary"], ["salary"]),
    "range-lo-above-hi": (["--range", "age=60:30"], ["age", "60", "30"]),
    "range-outside-training": (["--range", "age=0:200"], ["age", "training range"]),
    "increase-categorical": (["--increase-only", "education"], ["education", "categorical"]),
    "unknown-category": (["--allow", "education=Bachelors,Kindergarten"], ["Kindergarten"]),
    "num-cfs-zero": (["--num-cfs", "0"], ["num_cfs"]),
    "range-no-equals": (["--range", "age:20:30"], ["--range", "age:20:30"]),
    "range-no-colon": (["--range", "age=20"], ["--range", "age=20"]),
    "range-not-numbers": (["--range", "age=a:b"], ["--range", "numbers"]),
    "allow-nothing": (["--allow", "education"], ["--allow"]),
    "file-missing": (["--constraints", "{dir}/nothing.toml"], ["nothing.toml", "does not exist"]),
    "file-bad-toml": (["--constraints", "{dir}/bad.toml"], ["bad.toml", "cannot parse"]),
    "file-bad-json": (["--constraints", "{dir}/bad.json"], ["bad.json", "cannot parse"]),
    "file-not-a-table": (["--constraints", "{dir}/list.json"], ["list.json"]),
    "file-unknown-setting": (["--constraints", "{dir}/setting.json"], ["age", "unknown setting"]),
    "file-range-text": (["--constraints", "{dir}/text_range.json"], ["age", "numbers"]),
    "range-without-integer": (
        ["--range", "hours-per-week=30.2:30.8"],
        ["hours-per-week", "no integer"],
    ),
}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(input folder with the bad constraint files, empty output folder)."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    (in_dir / "bad.toml").write_text("[age\ndirection = 'increase'\n")
    (in_dir / "bad.json").write_text('{"age": {"direction": "increase"},}')
    (in_dir / "list.json").write_text('["age", "education"]')
    (in_dir / "setting.json").write_text('{"age": {"monotone": true}}')
    (in_dir / "text_range.json").write_text('{"age": {"range": ["young", 30]}}')
    return in_dir, out_dir


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("source", ["real", "unreadable"])
def test_cli_rejects_bad_constraints(
    case: str, source: str, dirs: tuple[Path, Path], queries: pa.Table, adult_bundle: Path
) -> None:
    """With a real input the error names the constraint; with an input that is not Parquet at all
    the constraint error still comes first: nothing of the input was read."""
    in_dir, out_dir = dirs
    src = in_dir / "queries.parquet"
    if source == "real":
        pq.write_table(queries.slice(0, 50), src)
    else:
        src.write_text("id,age\n1,39\nthis is not a Parquet file\n")
    args, words = BAD[case]
    args = [a.format(dir=in_dir) for a in args]
    code, stdout, stderr = invoke(
        "explain",
        str(src),
        "-o",
        str(out_dir / "result.parquet"),
        "--bundle",
        str(adult_bundle),
        *args,
    )
    assert_clean_failure(code, stdout, stderr, out_dir, *words)


def test_api_rejects_bad_constraints(adult_bundle: Path) -> None:
    cases: list[dict] = [
        {"salary": {"immutable": True}},
        {"age": {"range": [60, 30]}},
        {"age": {"range": [0, 200]}},
        {"education": {"direction": "increase"}},
        {"education": {"range": [1, 2]}},
        {"age": {"allowed": ["40"]}},
        {"education": {"allowed": ["Kindergarten"]}},
        {"education": {"allowed": []}},
        {"age": {"direction": "up"}},
        {"age": {"range": [20]}},
    ]
    for spec in cases:
        with pytest.raises(ConstraintError) as info:
            Explainer.from_bundle(adult_bundle, constraints=spec)
        assert "\n" not in str(info.value), spec
    with pytest.raises(GmcfError, match="num_cfs"):
        Explainer.from_bundle(adult_bundle, num_cfs=0)


# -- 8. default constraints in the bundle's manifest -----------------------------------------------
@pytest.fixture
def frozen_education_bundle(adult_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(adult_bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["constraints"] = {"education": {"immutable": True}}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def test_manifest_default_constraints(
    frozen_education_bundle: Path,
    plain: Explainer,
    query_file: Path,
    queries: pa.Table,
    tmp_path: Path,
) -> None:
    ex = Explainer.from_bundle(frozen_education_bundle)
    assert ex.constraints.to_dict() == {"education": {"immutable": True}}
    # the unconstrained bundle changes education for some rows, the default stops it
    ref = plain.explain(queries, id_column="id")
    ref_found = statuses(ref) == "found"
    assert np.any(column(ref, "cf_education")[ref_found] != column(ref, "education")[ref_found])
    out = ex.explain(queries, id_column="id")
    found = statuses(out) == "found"
    assert found.sum() > 0
    assert np.all(column(out, "cf_education")[found] == column(out, "education")[found])
    # the CLI applies it without any flag
    cli = run_cli(query_file, tmp_path / "cli.parquet", frozen_education_bundle)
    assert_same(cli, out, ["id", "status", *cf_names(ex.bundle.preprocessor)])
    # flags add to the defaults
    both = run_cli(
        query_file, tmp_path / "both.parquet", frozen_education_bundle, "--immutable", "age"
    )
    found = statuses(both) == "found"
    assert found.sum() > 0
    assert np.all(column(both, "cf_education")[found] == column(both, "education")[found])
    assert np.all(column(both, "cf_age")[found] == column(both, "age")[found])


def test_manifest_default_constraints_are_validated(
    frozen_education_bundle: Path, tmp_path: Path, queries: pa.Table
) -> None:
    mpath = frozen_education_bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["constraints"] = {"salary": {"immutable": True}}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ConstraintError, match="salary"):
        Explainer.from_bundle(frozen_education_bundle)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    src = in_dir / "q.parquet"
    pq.write_table(queries.slice(0, 20), src)
    code, stdout, stderr = invoke(
        "explain",
        str(src),
        "-o",
        str(out_dir / "r.parquet"),
        "--bundle",
        str(frozen_education_bundle),
    )
    assert_clean_failure(code, stdout, stderr, out_dir, "salary")
