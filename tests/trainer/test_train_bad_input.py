"""`gmcf-batch train` on bad input: a non-zero exit, one line naming the problem, nothing written.

The CSVs are built from real Adult rows. Every failure here happens before the explainer is
trained; --epochs 1 keeps any case that would get further fast.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from gmcf.cli.main import app  # noqa: E402
from gmcf.datasets import load_dataset, load_table  # noqa: E402
from gmcf.runtime.bundle import load_bundle  # noqa: E402
from gmcf.runtime.schema import DataSchema  # noqa: E402
from gmcf.trainer.prepare import prepare  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")

SCHEMA: dict[str, Any] = {
    "features": {
        "integer": ["age", "education-num", "capital-gain", "capital-loss"],
        "continuous": ["hours-per-week"],
        "categorical": ["education"],
    },
    "label": "income",
    "positive_class": ">50K",
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GMCF_PROGRESS", raising=False)
    monkeypatch.delenv("GMCF_BUNDLE", raising=False)


@pytest.fixture(scope="module")
def adult() -> pa.Table:
    return load_dataset("adult").table


def rows_of(table: pa.Table, start: int, step: int, n: int) -> dict[str, list[Any]]:
    return table.take(pa.array(range(start, start + step * n, step))).to_pydict()


def write_csv(path: Path, columns: dict[str, list[Any]]) -> Path:
    """A plain CSV (no quoting of numbers), as a user would have it."""
    names = list(columns)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*(columns[n] for n in names), strict=True))
    return path


def write_schema(path: Path, schema: dict[str, Any] = SCHEMA) -> Path:
    path.write_text(json.dumps(schema))
    return path


def export_onnx(module: torch.nn.Module, width: int, path: Path) -> Path:
    buf = io.BytesIO()
    module.eval()
    torch.onnx.export(
        module,
        (torch.zeros(2, width),),
        buf,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    path.write_bytes(buf.getvalue())
    return path


def model_width(data: Path, schema: Path) -> int:
    return prepare(load_table(data, DataSchema.from_file(schema)), 0.2, 0).pre.width


@dataclass
class Case:
    """Builds the files in tmp_path; returns the CLI arguments (without -o) and the expected
    fragment of the error line."""

    build: Callable[[Path, pa.Table], tuple[list[str], str]]


def good_files(tmp: Path, adult: pa.Table, n: int = 100) -> tuple[Path, Path]:
    return write_csv(tmp / "small.csv", rows_of(adult, 0, 300, n)), write_schema(
        tmp / "schema.json"
    )


def data_args(data: Path, schema: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--schema", str(schema), "--epochs", "1", *extra]


def case_unknown_dataset(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    return ["no-such-data", "--epochs", "1"], "unknown dataset 'no-such-data'"


def case_missing_column(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, _ = good_files(tmp, adult)
    schema = json.loads(json.dumps(SCHEMA))
    schema["features"]["categorical"].append("workclass")
    return data_args(data, write_schema(tmp / "schema.json", schema)), "lacks: 'workclass'"


def case_one_class(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    cols = rows_of(adult, 0, 300, 100)
    cols["income"] = ["<=50K"] * 100
    return data_args(
        write_csv(tmp / "d.csv", cols), write_schema(tmp / "s.json")
    ), "has a single class"


def case_positive_class_absent(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, _ = good_files(tmp, adult)
    schema = dict(SCHEMA, positive_class=">100K")
    return data_args(
        data, write_schema(tmp / "s.json", schema)
    ), "positive class '>100K' does not occur"


def case_non_numeric(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    cols = rows_of(adult, 0, 300, 100)
    cols["hours-per-week"][37] = "forty"
    return (
        data_args(write_csv(tmp / "d.csv", cols), write_schema(tmp / "s.json")),
        "column 'hours-per-week': expected a number",
    )


def case_header_only(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data = tmp / "empty.csv"
    data.write_text(",".join(adult.column_names) + "\n")
    return data_args(data, write_schema(tmp / "s.json")), "training data has 0 row(s)"


def case_classifier_width(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, schema = good_files(tmp, adult)
    width = model_width(data, schema)
    assert width != 5
    clf = export_onnx(
        torch.nn.Sequential(torch.nn.Linear(5, 1), torch.nn.Sigmoid()), 5, tmp / "f.onnx"
    )
    return (
        data_args(data, schema, "--classifier", str(clf)),
        f"input 'input' is a block of 5 columns; declare their features in order in the schema: "
        f'"classifier": {{"columns": {{"input": [...]}}}} (a model on the bundle\'s own encoding '
        f"takes {width} columns)",
    )


def case_classifier_output(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, schema = good_files(tmp, adult)
    width = model_width(data, schema)
    clf = export_onnx(
        torch.nn.Sequential(torch.nn.Linear(width, 3), torch.nn.Softmax(dim=1)),
        width,
        tmp / "f.onnx",
    )
    return data_args(
        data, schema, "--classifier", str(clf)
    ), "no float output shaped [N], [N, 1] or [N, 2]"


def case_classifier_constant(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, schema = good_files(tmp, adult)
    width = model_width(data, schema)
    lin = torch.nn.Linear(width, 1)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(3.0)
    clf = export_onnx(torch.nn.Sequential(lin, torch.nn.Sigmoid()), width, tmp / "f.onnx")
    return data_args(
        data, schema, "--classifier", str(clf)
    ), "predicts class 1 for every training row"


def case_classifier_not_onnx(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, schema = good_files(tmp, adult)
    clf = tmp / "f.onnx"
    clf.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    return data_args(data, schema, "--classifier", str(clf)), "not an ONNX model"


def case_classifier_missing(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, schema = good_files(tmp, adult)
    return data_args(
        data, schema, "--classifier", str(tmp / "nope.onnx")
    ), "nope.onnx does not exist"


def case_data_missing(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    return data_args(tmp / "nope.csv", write_schema(tmp / "s.json")), "nope.csv does not exist"


def case_schema_missing(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, _ = good_files(tmp, adult)
    return data_args(data, tmp / "nope.json"), "schema file"


def case_schema_not_json(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, _ = good_files(tmp, adult)
    bad = tmp / "s.json"
    bad.write_text('{"features": {"integer": ["age"]},\n "label": ')
    return data_args(data, bad), "cannot parse"


def case_schema_without_label(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, _ = good_files(tmp, adult)
    schema = {k: v for k, v in SCHEMA.items() if k != "label"}
    return data_args(data, write_schema(tmp / "s.json", schema)), "missing key 'label'"


def case_data_without_schema(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, _ = good_files(tmp, adult)
    return ["--data", str(data), "--epochs", "1"], "--data needs --schema"


def case_dataset_and_data(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data, schema = good_files(tmp, adult)
    return ["adult", *data_args(data, schema)], "give either a dataset name"


def case_nothing_to_train_on(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    return ["--epochs", "1"], "give either a dataset name"


def case_unreadable_csv(tmp: Path, adult: pa.Table) -> tuple[list[str], str]:
    data = tmp / "d.csv"
    data.write_text("age,income\n1,2,3,4\n5\n")
    return data_args(data, write_schema(tmp / "s.json")), "cannot read"


CASES = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")
}


def invoke(args: list[str]) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(app, ["train", *args])
    return (
        result.exit_code,
        ANSI.sub("", result.stdout),
        ANSI.sub("", result.stderr),
        result.exception,
    )


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers == [], leftovers


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_with_one_line(case: str, tmp_path: Path, adult: pa.Table) -> None:
    args, fragment = CASES[case](tmp_path, adult)
    out = tmp_path / "out" / "b"
    code, stdout, stderr, exc = invoke([*args, "-o", str(out)])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code != 0, stdout + stderr
    assert isinstance(exc, SystemExit), exc  # an error message, not a traceback
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert stdout.strip() == ""
    assert_nothing_written(out)


def test_existing_output_without_force_is_left_alone(tmp_path: Path, adult: pa.Table) -> None:
    data, schema = good_files(tmp_path, adult)
    out = tmp_path / "out" / "b"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    code, _, stderr, _ = invoke([*data_args(data, schema), "-o", str(out)])
    assert code != 0
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "exists; pass --force" in lines[0], stderr
    assert [p.name for p in out.parent.iterdir()] == ["b"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


#: The happy path declares its transforms (the schema's ``transforms`` key through the CLI): on
#: these 480 training rows the paper's 10-4-2 classifier, trained for one epoch's settings, finds
#: the positive class with min-max capital gains and none with the log default.
HAPPY_SCHEMA: dict[str, Any] = {
    **SCHEMA,
    "transforms": {"capital-gain": "minmax", "capital-loss": "minmax"},
}


def happy_files(tmp: Path, adult: pa.Table) -> tuple[Path, Path]:
    return write_csv(tmp / "small.csv", rows_of(adult, 2, 50, 600)), write_schema(
        tmp / "schema.json", HAPPY_SCHEMA
    )


def test_train_writes_a_loadable_bundle_and_prints_the_report(
    tmp_path: Path, adult: pa.Table
) -> None:
    data, schema = happy_files(tmp_path, adult)
    out = tmp_path / "b"
    code, stdout, stderr, exc = invoke([*data_args(data, schema), "-o", str(out)])
    assert code == 0, f"{stderr}\n{exc!r}"
    b = load_bundle(out)
    assert b.manifest.dataset == "small"
    assert b.manifest.train_config["epochs"] == 1
    kinds = {f.name: f.kind for f in b.preprocessor.features}
    assert kinds["hours-per-week"] == "continuous" and kinds["education"] == "categorical"
    transforms = {f.name: f.transform for f in b.preprocessor.numeric}
    assert transforms["capital-gain"] == transforms["capital-loss"] == transforms["age"] == "minmax"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")] == []
    r = b.report
    assert r["rows"]["train"] + r["rows"]["test"] <= 600 and r["rows"]["train"] >= 470
    assert f"wrote bundle {out}" in stdout.splitlines()  # one line, however long the path
    text = " ".join(stdout.split())
    for headline in (
        f"classifier: accuracy {r['classifier']['accuracy']:.3f}, "
        f"balanced accuracy {r['classifier']['balanced_accuracy']:.3f} (held out)",
        f"GM posterior agrees with f on {100 * r['gm_posterior_agreement']:.1f}% of held-out rows",
        f"z_u probe balanced accuracy {r['z_u_probe']['balanced_accuracy']:.3f}",
        f"majority rate {r['z_u_probe']['majority_rate']:.3f}",
        f"reconstruction MSE {r['reconstruction_mse']:.5f}",
        f"on {r['rows']['train']:,} rows",
    ):
        assert headline in text, (headline, stdout)


def test_a_failure_while_writing_keeps_the_old_bundle_and_no_temp_folder(
    tmp_path: Path, adult: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force over an existing folder, with export failing after the temp folder was made."""
    import gmcf.trainer.pipeline as pipeline
    from gmcf.runtime.errors import InputError

    data, schema = happy_files(tmp_path, adult)
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("old bundle")
    seen: list[Path] = []
    real_save = pipeline.save

    def failing_save(models: Any, folder: Path) -> dict[str, str]:
        real_save(models, folder)  # half a bundle in the temp folder ...
        seen.append(folder)
        raise InputError("disk full (simulated)")  # ... then the write fails

    monkeypatch.setattr(pipeline, "save", failing_save)
    code, _, stderr, _ = invoke([*data_args(data, schema, "--force"), "-o", str(out)])
    assert code != 0
    assert "disk full (simulated)" in stderr
    assert seen and seen[0].parent == tmp_path and seen[0].name.startswith(".b.")
    assert not seen[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")) == []
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_train_writes_into_the_current_folder_by_default(
    tmp_path: Path, adult: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -o the bundle goes to ./DATASET, never into the installed package."""
    data, schema = happy_files(tmp_path, adult)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, stdout, stderr, exc = invoke(data_args(data, schema))
    assert code == 0, f"{stderr}\n{exc!r}"
    assert load_bundle(work / "small").manifest.dataset == "small"
    assert "wrote bundle small" in stdout.splitlines()
