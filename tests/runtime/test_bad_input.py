"""Every kind of bad input, through the CLI and the API.

A problem with the whole file or the bundle stops the run: non-zero exit, one line naming the
problem, and no output file (not even a temporary one). A problem with a row makes that row
``invalid`` with a reason naming the column; every other row is still explained.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import adult_queries, assert_clean_failure, invoke

from gmcf.runtime import BundleError, Explainer, GmcfError, InputError

N_ROWS = 40


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def with_value(
    table: pa.Table, name: str, row: int, value: object, typ: pa.DataType | None = None
) -> pa.Table:
    """``table`` with ``table[name][row] = value`` (``typ``: the column's new type)."""
    values = table.column(name).to_pylist()
    values[row] = value
    return replace_column(table, name, pa.array(values, typ or table.schema.field(name).type))


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def queries() -> pa.Table:
    return adult_queries(N_ROWS)


@pytest.fixture(scope="module")
def explainer(adult_bundle: Path) -> Explainer:
    return Explainer.from_bundle(adult_bundle)


@pytest.fixture(scope="module")
def clean(explainer: Explainer, queries: pa.Table) -> pa.Table:
    return explainer.explain(queries, id_column="id")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(input folder, empty output folder)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


# -- the whole input file -------------------------------------------------------------------------
def _missing(folder: Path, q: pa.Table) -> Path:
    return folder / "nothing-here.parquet"


def _text(folder: Path, q: pa.Table) -> Path:
    path = folder / "notes.parquet"
    path.write_text("id,age\n1,39\nthis is not a Parquet file\n")
    return path


def _empty(folder: Path, q: pa.Table) -> Path:
    path = folder / "empty.parquet"
    pq.write_table(q.slice(0, 0), path)
    return path


def _no_age(folder: Path, q: pa.Table) -> Path:
    path = folder / "no_age.parquet"
    pq.write_table(q.drop_columns(["age"]), path)
    return path


def _age_strings(folder: Path, q: pa.Table) -> Path:
    path = folder / "age_strings.parquet"
    pq.write_table(replace_column(q, "age", q.column("age").cast(pa.string())), path)
    return path


def _duplicate_names(folder: Path, q: pa.Table) -> Path:
    path = folder / "twice.parquet"
    pq.write_table(
        pa.Table.from_arrays([*q.columns, q.column("age")], names=[*q.column_names, "age"]), path
    )
    return path


def _categories_as_integers(folder: Path, q: pa.Table) -> Path:
    """education stored as the integer codes of its categories (a common export)."""
    path = folder / "coded.parquet"
    codes = q.column("education").combine_chunks().dictionary_encode().indices.cast(pa.int64())
    pq.write_table(replace_column(q, "education", codes), path)
    return path


def _corrupt(folder: Path, q: pa.Table) -> Path:
    """A valid footer over a broken data page: fails while streaming, not when opened."""
    path = folder / "corrupt.parquet"
    pq.write_table(q, path)
    data = bytearray(path.read_bytes())
    data[4:100] = b"\xab" * 96
    path.write_bytes(bytes(data))
    return path


def _folder(folder: Path, q: pa.Table) -> Path:
    path = folder / "a-folder.parquet"
    path.mkdir()
    return path


FILE_PROBLEMS: dict[str, tuple[Callable[[Path, pa.Table], Path], tuple[str, ...]]] = {
    "missing file": (_missing, ("nothing-here.parquet", "does not exist")),
    "not parquet": (_text, ("notes.parquet", "not a Parquet file")),
    "zero rows": (_empty, ("empty.parquet", "no rows")),
    "missing column": (_no_age, ("'age'", "lacks")),
    "wrong type": (_age_strings, ("'age'", "expected a number", "string")),
    "duplicate names": (_duplicate_names, ("duplicate column names", "'age'")),
    "categories as integers": (
        _categories_as_integers,
        ("'education'", "expected a string category", "int64"),
    ),
    "a folder": (_folder, ("a-folder.parquet", "folder")),
    "corrupt data": (_corrupt, ("corrupt.parquet", "cannot read")),
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("problem", list(FILE_PROBLEMS))
def test_cli_rejects_bad_input_file(
    problem: str, workers: str, dirs: tuple[Path, Path], queries: pa.Table, adult_bundle: Path
) -> None:
    make, words = FILE_PROBLEMS[problem]
    in_dir, out_dir = dirs
    src = make(in_dir, queries)
    code, stdout, stderr = invoke(
        "explain",
        str(src),
        "-o",
        str(out_dir / "result.parquet"),
        "--bundle",
        str(adult_bundle),
        "--workers",
        workers,
    )
    assert_clean_failure(code, stdout, stderr, out_dir, *words)


@pytest.mark.parametrize("problem", list(FILE_PROBLEMS))
def test_api_rejects_bad_input_file(
    problem: str, dirs: tuple[Path, Path], queries: pa.Table, explainer: Explainer
) -> None:
    make, words = FILE_PROBLEMS[problem]
    in_dir, out_dir = dirs
    src = make(in_dir, queries)
    with pytest.raises(InputError) as info:
        explainer.explain_parquet(src, out_dir / "result.parquet")
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message
    assert list(out_dir.iterdir()) == []


def test_missing_and_mistyped_columns_in_memory(explainer: Explainer, queries: pa.Table) -> None:
    with pytest.raises(InputError, match="'hours-per-week'"):
        explainer.explain(queries.drop_columns(["hours-per-week"]))
    with pytest.raises(InputError, match=r"'age'.*expected a number"):
        explainer.explain(replace_column(queries, "age", queries.column("age").cast(pa.string())))
    with pytest.raises(InputError, match="id column 'key'"):
        explainer.explain(queries, id_column="key")
    with pytest.raises(InputError, match="expected a pyarrow Table"):
        explainer.explain([{"age": 30}])


def test_error_names_a_path_with_brackets_exactly(
    dirs: tuple[Path, Path], adult_bundle: Path
) -> None:
    """Paths are text, not console markup."""
    in_dir, out_dir = dirs
    code, stdout, stderr = invoke(
        "explain",
        str(in_dir / "runs[old].parquet"),
        "-o",
        str(out_dir / "r.parquet"),
        "--bundle",
        str(adult_bundle),
    )
    assert_clean_failure(code, stdout, stderr, out_dir, "runs[old].parquet", "does not exist")


# -- problems in single rows ----------------------------------------------------------------------
def _float(q: pa.Table, name: str) -> pa.Table:
    return replace_column(q, name, q.column(name).cast(pa.float64()))


ROW_PROBLEMS: dict[str, tuple[Callable[[pa.Table], pa.Table], dict[int, tuple[str, str]]]] = {
    # name: (make the table, {row: (column named in the reason, words of the reason)})
    "null number": (lambda q: with_value(q, "age", 3, None), {3: ("age", "missing")}),
    "null category": (lambda q: with_value(q, "education", 5, None), {5: ("education", "missing")}),
    "nan": (
        lambda q: with_value(_float(q, "hours-per-week"), "hours-per-week", 7, float("nan")),
        {7: ("hours-per-week", "missing")},
    ),
    "inf": (
        lambda q: with_value(_float(q, "capital-gain"), "capital-gain", 11, float("inf")),
        {11: ("capital-gain", "infinite")},
    ),
    "minus inf": (
        lambda q: with_value(_float(q, "age"), "age", 0, float("-inf")),
        {0: ("age", "infinite")},
    ),
    "unknown category": (
        lambda q: with_value(q, "education", 13, "Kindergarten"),
        {13: ("education", "unknown category")},
    ),
    "far too large": (
        lambda q: with_value(q, "capital-loss", 17, 10**9),
        {17: ("capital-loss", "far outside")},
    ),
    "far too small": (lambda q: with_value(q, "age", 19, -500), {19: ("age", "far outside")}),
    "negative age": (
        lambda q: with_value(q, "age", 23, -5),
        {23: ("age", "far outside the training range [17, 90]")},
    ),
    "several": (
        lambda q: with_value(with_value(q, "age", 2, None), "education", 30, "Kindergarten"),
        {2: ("age", "missing"), 30: ("education", "unknown category")},
    ),
    "all null column": (
        lambda q: replace_column(q, "age", pa.nulls(q.num_rows, pa.null())),
        dict.fromkeys(range(N_ROWS), ("age", "missing")),
    ),
}


def check_row_problems(out: pa.Table, clean: pa.Table, bad: dict[int, tuple[str, str]]) -> None:
    assert out.num_rows == clean.num_rows == N_ROWS
    assert out.column("id").to_pylist() == clean.column("id").to_pylist()
    status = out.column("status").to_pylist()
    reason = out.column("reason").to_pylist()
    clean_status = clean.column("status").to_pylist()
    for i in range(N_ROWS):
        if i in bad:
            column, words = bad[i]
            assert status[i] == "invalid", (i, status[i])
            assert reason[i] is not None and reason[i].startswith(f"{column}:"), reason[i]
            assert words in reason[i], reason[i]
            assert out.column("score")[i].as_py() is None
            assert out.column("cf_age")[i].as_py() is None
            assert out.column("evaluations")[i].as_py() == 0
        else:
            assert status[i] == clean_status[i], i  # every other row is explained as before
    if len(bad) < N_ROWS:
        ok = [i for i in range(N_ROWS) if i not in bad]
        np.testing.assert_allclose(
            np.array(out.column("score").take(pa.array(ok)).to_pylist(), dtype=np.float64),
            np.array(clean.column("score").take(pa.array(ok)).to_pylist(), dtype=np.float64),
            rtol=1e-5,
        )


@pytest.mark.parametrize("problem", list(ROW_PROBLEMS))
def test_api_marks_bad_rows_invalid(
    problem: str, explainer: Explainer, queries: pa.Table, clean: pa.Table
) -> None:
    make, bad = ROW_PROBLEMS[problem]
    out = explainer.explain(make(queries), id_column="id")
    check_row_problems(out, clean, bad)


@pytest.mark.parametrize(
    "problem", ["null number", "nan", "inf", "unknown category", "far too large", "all null column"]
)
def test_cli_marks_bad_rows_invalid(
    problem: str, dirs: tuple[Path, Path], queries: pa.Table, clean: pa.Table, adult_bundle: Path
) -> None:
    make, bad = ROW_PROBLEMS[problem]
    in_dir, out_dir = dirs
    src, dst = in_dir / "q.parquet", out_dir / "r.parquet"
    pq.write_table(make(queries), src)
    code, stdout, stderr = invoke(
        "explain",
        str(src),
        "-o",
        str(dst),
        "--bundle",
        str(adult_bundle),
        "--id-column",
        "id",
        "--batch-size",
        "16",
    )
    assert code == 0, stderr
    assert f"{len(bad):,} invalid" in stdout
    out = pq.read_table(dst)
    check_row_problems(out, clean, bad)
    assert sorted(p.name for p in out_dir.iterdir()) == ["r.parquet"]


# -- the bundle -----------------------------------------------------------------------------------
def _delete_decoder(b: Path) -> None:
    (b / "decoder.onnx").unlink()


def _flip_byte(b: Path) -> None:
    data = bytearray((b / "classifier.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "classifier.onnx").write_bytes(bytes(data))


def _newer_format(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] += 1
    (b / "manifest.json").write_text(json.dumps(m))


def _no_manifest(b: Path) -> None:
    (b / "manifest.json").unlink()


def _broken_manifest(b: Path) -> None:
    (b / "manifest.json").write_text('{"format": "gmcf-bundle", ')


BUNDLE_PROBLEMS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "missing file": (_delete_decoder, ("decoder.onnx", "missing")),
    "altered file": (_flip_byte, ("classifier.onnx", "sha256")),
    "newer format": (_newer_format, ("format version", "newer", "upgrade")),
    "no manifest": (_no_manifest, ("manifest.json",)),
    "broken manifest": (_broken_manifest, ("manifest.json", "not valid JSON")),
}


@pytest.fixture
def broken_bundle(
    request: pytest.FixtureRequest, adult_bundle: Path, tmp_path: Path
) -> tuple[Path, tuple[str, ...]]:
    alter, words = BUNDLE_PROBLEMS[request.param]
    copy = tmp_path / "bundle"
    shutil.copytree(adult_bundle, copy)
    alter(copy)
    return copy, words


@pytest.mark.parametrize("broken_bundle", list(BUNDLE_PROBLEMS), indirect=True)
def test_cli_rejects_a_broken_bundle(
    broken_bundle: tuple[Path, tuple[str, ...]], dirs: tuple[Path, Path], queries: pa.Table
) -> None:
    bundle, words = broken_bundle
    in_dir, out_dir = dirs
    src = in_dir / "q.parquet"
    pq.write_table(queries, src)
    code, stdout, stderr = invoke(
        "explain", str(src), "-o", str(out_dir / "r.parquet"), "--bundle", str(bundle)
    )
    assert_clean_failure(code, stdout, stderr, out_dir, str(bundle), *words)
    # inspect verifies the same way
    code, stdout, stderr = invoke("inspect", str(bundle))
    assert_clean_failure(code, stdout, stderr, out_dir, *words)


@pytest.mark.parametrize("broken_bundle", list(BUNDLE_PROBLEMS), indirect=True)
def test_api_rejects_a_broken_bundle(broken_bundle: tuple[Path, tuple[str, ...]]) -> None:
    bundle, words = broken_bundle
    with pytest.raises(BundleError) as info:
        Explainer.from_bundle(bundle)
    assert "\n" not in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_bad_settings_are_one_line_errors(
    adult_bundle: Path, dirs: tuple[Path, Path], queries: pa.Table
) -> None:
    with pytest.raises(GmcfError, match="threshold"):
        Explainer.from_bundle(adult_bundle, threshold=1.5)
    in_dir, out_dir = dirs
    src = in_dir / "q.parquet"
    pq.write_table(queries, src)
    for args, word in [
        (["--tol", "0"], "tol"),
        (["--batch-size", "0"], "batch size"),
        (["--workers", "2", "--batch-size", "0"], "batch size"),
        (["--threads", "0"], "threads"),
    ]:
        code, stdout, stderr = invoke(
            "explain",
            str(src),
            "-o",
            str(out_dir / "r.parquet"),
            "--bundle",
            str(adult_bundle),
            *args,
        )
        assert_clean_failure(code, stdout, stderr, out_dir, word)


# -- the range policy -----------------------------------------------------------------------------
def _ages(explainer: Explainer, queries: pa.Table, ages: list[int]) -> list[str | None]:
    """The reason of each of ``ages`` put into the first rows (None: the row is usable)."""
    table = queries.slice(0, len(ages))
    out = explainer.explain(replace_column(table, "age", pa.array(ages, pa.int64())))
    return [
        r if s == "invalid" else None
        for r, s in zip(
            out.column("reason").to_pylist(), out.column("status").to_pylist(), strict=True
        )
    ]


def test_values_beyond_the_training_range_by_more_than_the_margin_are_invalid(
    adult_bundle: Path, explainer: Explainer, queries: pa.Table
) -> None:
    # age was trained on 17..90 (width 73): the default margin of 5% accepts 13.35..93.65
    assert explainer.range_margin == 0.05
    reasons = _ages(explainer, queries, [17, 90, 14, 93, 13, 94, -5])
    assert reasons[:4] == [None] * 4
    for r in reasons[4:]:
        assert (
            r == "age: value far outside the training range [17, 90] (more than 5% of its width "
            "beyond it)"
        )
    wide = Explainer.from_bundle(adult_bundle, range_margin=0.5)  # the margin is a setting
    assert (
        _ages(wide, queries, [-5, 126])[0] is None
        and _ages(wide, queries, [-5, 128])[1] is not None
    )
    reasons = _ages(Explainer.from_bundle(adult_bundle, range_margin=0), queries, [17, 90, 16, 91])
    assert reasons[:2] == [None, None] and all(
        r is not None and "more than 0%" in r for r in reasons[2:]
    )
    with pytest.raises(GmcfError, match="range margin must be 0 or more"):
        Explainer.from_bundle(adult_bundle, range_margin=-0.1)


def test_cli_range_margin(dirs: tuple[Path, Path], queries: pa.Table, adult_bundle: Path) -> None:
    in_dir, out_dir = dirs
    src = in_dir / "q.parquet"
    pq.write_table(with_value(queries, "age", 4, -5), src)
    for margin, invalid in (("0.05", 1), ("0.5", 0)):
        dst = out_dir / f"r{margin}.parquet"
        code, stdout, stderr = invoke(
            "explain",
            str(src),
            "-o",
            str(dst),
            "--bundle",
            str(adult_bundle),
            "--range-margin",
            margin,
        )
        assert code == 0, stderr
        assert f"{invalid} invalid" in stdout
        assert (pq.read_table(dst).column("status")[4].as_py() == "invalid") == bool(invalid)


def test_a_declared_domain_is_a_hard_limit(
    adult_bundle: Path, tmp_path: Path, queries: pa.Table
) -> None:
    """capital-gain was trained on 0..99,999: a margin of 5% would accept -5,000. Declared
    non-negative (``"domain": {"capital-gain": [0, null]}`` in the training schema, kept in the
    manifest), any negative value makes its row invalid."""
    plain = Explainer.from_bundle(adult_bundle)
    bad = with_value(queries, "capital-gain", 6, -1)
    assert plain.explain(bad).column("status")[6].as_py() != "invalid"
    copy = tmp_path / "bundle"
    shutil.copytree(adult_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for f in manifest["preprocessing"]["features"]:
        if f["name"] == "capital-gain":
            f["domain"] = [0, None]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    strict = Explainer.from_bundle(copy)
    out = strict.explain(bad)
    assert out.column("status")[6].as_py() == "invalid"
    assert (
        out.column("reason")[6].as_py()
        == "capital-gain: value outside the declared domain [0, inf]"
    )
    others = [i for i in range(N_ROWS) if i != 6]
    assert (
        out.column("status").take(pa.array(others)).to_pylist()
        == plain.explain(bad).column("status").take(pa.array(others)).to_pylist()
    )
