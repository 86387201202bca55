"""A scoring team's own model on raw columns: scikit-learn, LightGBM and XGBoost models exported
by their converters with default options, explained through `gmcf-batch train --classifier`.

Each model is fitted on a sample of the shipped Adult rows; the bundle's scores are compared with
the user's model on other, held-out raw rows, and every counterfactual the bundle returns is
re-scored by the library itself (predict_proba on the raw counterfactual row), not by ONNX.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from gmcf.cli.main import app  # noqa: E402
from gmcf.datasets import load_dataset  # noqa: E402
from gmcf.runtime import Explainer  # noqa: E402
from gmcf.runtime.bundle import load_bundle  # noqa: E402

# skl2onnx 1.20 writes booleans into integer attributes of HistGradientBoosting's trees, which
# protobuf 6 accepts with a warning (and protobuf 7 refuses: hence the pin below 7).
pytestmark = pytest.mark.filterwarnings("ignore:Field onnx.AttributeProto.ints:DeprecationWarning")

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NUMERIC = ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
SCHEMA: dict[str, Any] = {
    "features": {"integer": NUMERIC, "categorical": ["education"]},
    "label": "income",
    "positive_class": ">50K",
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GMCF_PROGRESS", raising=False)
    monkeypatch.delenv("GMCF_BUNDLE", raising=False)


@pytest.fixture(scope="module")
def frames() -> tuple[Any, Any]:
    """3,000 Adult rows to fit the user's model and train the bundle on; 2,000 other rows held
    out."""
    df = load_dataset("adult").table.to_pandas()
    perm = np.random.default_rng(0).permutation(len(df))
    return df.iloc[perm[:3000]].reset_index(drop=True), df.iloc[perm[3000:5000]].reset_index(
        drop=True
    )


def train_cli(args: list[str]) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(app, ["train", *args])
    return (
        result.exit_code,
        ANSI.sub("", result.stdout),
        ANSI.sub("", result.stderr),
        result.exception,
    )


def write_data(tmp: Path, df: Any, schema: dict[str, Any]) -> tuple[Path, Path]:
    data, sch = tmp / "train.csv", tmp / "schema.json"
    df.to_csv(data, index=False)
    sch.write_text(json.dumps(schema))
    return data, sch


# -- the users' models ------------------------------------------------------------------------


def _column_pipeline(estimator: Any, scale: bool) -> Any:
    """One-hot education; numbers scaled for a linear model, raw for trees (as practitioners
    build them: skl2onnx scales in float32 where scikit-learn scales in float64, so a scaler in
    front of trees can move a value across a split point; docs/your-model.md)."""
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = make_column_transformer(
        (StandardScaler() if scale else "passthrough", NUMERIC),
        (OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["education"]),
    )
    return make_pipeline(pre, estimator)


class UserModel:
    """A fitted library model, its ONNX export (converter defaults), the schema it needs, and
    the library's own probability of '>50K' for raw rows."""

    def __init__(
        self,
        fitted: Any,
        onnx_bytes: bytes,
        schema: dict[str, Any],
        proba: Callable[[Any], np.ndarray],
    ):
        self.fitted, self.onnx_bytes, self.schema, self.proba = fitted, onnx_bytes, schema, proba


def sklearn_model(estimator: Any, scale: bool = False) -> Callable[[Any], UserModel]:
    def make(train: Any) -> UserModel:
        from skl2onnx import to_onnx

        x, y = train.drop(columns="income"), train["income"]
        pipe = _column_pipeline(estimator, scale).fit(x, y)
        pos = list(pipe.classes_).index(">50K")
        return UserModel(
            pipe,
            to_onnx(pipe, x[:1]).SerializeToString(),
            SCHEMA,
            lambda df: pipe.predict_proba(df[x.columns])[:, pos],
        )

    return make


def block_model(library: str) -> Callable[[Any], UserModel]:
    """LightGBM or XGBoost on a float block of the numeric columns (onnxmltools' usual input)."""

    def make(train: Any) -> UserModel:
        if library == "lightgbm":
            lightgbm = pytest.importorskip("lightgbm")
            from onnxmltools import convert_lightgbm as convert

            model = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, verbose=-1)
        else:
            xgboost = pytest.importorskip("xgboost")
            from onnxmltools import convert_xgboost as convert

            model = xgboost.XGBClassifier(n_estimators=40, max_depth=4)
        from onnxmltools.convert.common.data_types import FloatTensorType

        x = train[NUMERIC].to_numpy(np.float32)
        model.fit(x, (train["income"] == ">50K").to_numpy().astype(np.int64))
        onx = convert(model, initial_types=[("input", FloatTensorType([None, len(NUMERIC)]))])
        schema = {
            "features": {"integer": NUMERIC},
            "label": "income",
            "positive_class": ">50K",
            "classifier": {"columns": {"input": NUMERIC}, "positive_label": 1},
        }
        return UserModel(
            model,
            onx.SerializeToString(),
            schema,
            lambda df: model.predict_proba(df[NUMERIC].to_numpy(np.float32))[:, 1],
        )

    return make


def onnx_proba(onnx_bytes: bytes, df: Any) -> np.ndarray:
    """The user's ONNX model on raw columns, fed as its converter named and typed them."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    by_normal = {re.sub(r"[^0-9a-z]+", "_", c.lower()): c for c in df.columns}
    feed = {}
    for inp in sess.get_inputs():
        if inp.name == "input":  # onnxmltools' block of the numeric columns
            feed[inp.name] = df[NUMERIC].to_numpy(np.float32)
            continue
        col = df[by_normal[inp.name]]
        feed[inp.name] = (
            col.astype(str).to_numpy(object)
            if inp.type == "tensor(string)"
            else col.to_numpy(np.int64)
        ).reshape(-1, 1)
    prob = sess.run(None, feed)[1]
    if isinstance(prob, list):  # ZipMap: one {label: p} per row
        key = ">50K" if ">50K" in prob[0] else 1
        return np.array([d[key] for d in prob], np.float64)
    return np.asarray(prob, np.float64)[:, 1]


def _models() -> dict[str, Callable[[Any], UserModel]]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "logistic-regression": sklearn_model(LogisticRegression(max_iter=1000), scale=True),
        "hist-gradient-boosting": sklearn_model(
            HistGradientBoostingClassifier(max_iter=40, random_state=0)
        ),
        "random-forest": sklearn_model(
            RandomForestClassifier(n_estimators=30, max_depth=8, min_samples_leaf=3, random_state=0)
        ),
        "lightgbm": block_model("lightgbm"),
        "xgboost": block_model("xgboost"),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_a_converted_model_is_explained_as_it_is(
    name: str, frames: tuple[Any, Any], tmp_path: Path
) -> None:
    train, held = frames
    user = _models()[name](train)
    (tmp_path / "model.onnx").write_bytes(user.onnx_bytes)
    cols = [
        *user.schema["features"].get("integer", []),
        *user.schema["features"].get("categorical", []),
    ]
    data, schema = write_data(tmp_path, train[[*cols, "income"]], user.schema)
    out = tmp_path / "bundle"
    code, stdout, stderr, exc = train_cli(
        [
            "--data",
            str(data),
            "--schema",
            str(schema),
            "--classifier",
            str(tmp_path / "model.onnx"),
            "-o",
            str(out),
            "--epochs",
            "2",
        ]
    )
    assert code == 0, f"{stderr}\n{exc!r}"
    parity = load_bundle(out).report["classifier"]["user_model"]["parity"]
    assert parity["equal_decisions"] == 1.0 and parity["max_abs_dp"] <= 1e-5, parity
    assert "100.00% equal decisions" in stdout
    # a costly f gets a screen, and the search below runs with it (f confirms every answer)
    assert load_bundle(out).has_screen and "screen: g agrees with f on" in stdout

    # The bundle's scores of raw held-out rows are the user's model's (its ONNX file, run by
    # onnxruntime on the raw columns) ...
    ex = Explainer.from_bundle(out, threads=1)
    result = ex.explain(pa.Table.from_pandas(held[cols], preserve_index=False)).to_pandas()
    assert (result["status"] != "invalid").all()
    p_onnx = onnx_proba(user.onnx_bytes, held)
    score = result["score"].to_numpy(np.float64)
    assert np.abs(score - p_onnx).max() <= 1e-5
    assert ((score >= 0.5) == (p_onnx >= 0.5)).all()
    # ... and, to the converter's float32 precision, the library's.
    p_lib = user.proba(held)
    assert ((score >= 0.5) == (p_lib >= 0.5)).mean() >= 0.995

    # Every counterfactual is approved by the user's own model, run by the library.
    found = result[result["status"] == "found"]
    assert len(found) >= 0.5 * (score < 0.5).sum(), (len(found), (score < 0.5).sum())
    cf = found[[f"cf_{c}" for c in cols]].rename(columns=lambda c: c.removeprefix("cf_"))
    for c in cols:
        if c != "education":
            cf[c] = cf[c].astype(np.int64)
    cf["education"] = cf["education"].astype(str) if "education" in cf else None
    p_cf = user.proba(cf.reset_index(drop=True))
    assert (p_cf >= 0.5).all(), p_cf.min()
    assert np.abs(p_cf - found["cf_score"].to_numpy(np.float64)).max() <= 1e-5


# -- bad models: one line, before any training ------------------------------------------------


def _sk(
    estimator: Any,
    train: Any,
    columns: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    as_string: tuple[str, ...] = (),
    target: Any = None,
) -> bytes:
    """A scikit-learn pipeline on (renamed, reduced, re-typed) raw columns, exported by skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x = train.drop(columns=["income", *drop]).rename(columns=columns or {})
    for c in as_string:
        x[c] = x[c].astype(str)
    cats = [c for c in x.columns if c in ("education", *as_string)]
    nums = [c for c in x.columns if c not in cats]
    pipe = make_pipeline(
        make_column_transformer(
            (StandardScaler(), nums),
            (OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats),
        ),
        estimator,
    )
    pipe.fit(x, train["income"] if target is None else target)
    return to_onnx(pipe, x[:1]).SerializeToString()


def _lr() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=300)


def bad_three_classes(train: Any) -> tuple[bytes, str]:
    hours = pd.cut(
        train["hours-per-week"], [0, 35, 45, 100], labels=["part", "full", "long"]
    ).astype(str)
    return _sk(_lr(), train, target=hours), "has 3 classes"


def bad_regressor(train: Any) -> tuple[bytes, str]:
    from sklearn.linear_model import LinearRegression

    return _sk(
        LinearRegression(), train, target=(train["income"] == ">50K").astype(float)
    ), "a regressor (LinearRegressor)"


def bad_unknown_input(train: Any) -> tuple[bytes, str]:
    return _sk(
        _lr(), train, columns={"age": "years"}
    ), "input(s) 'years' match no feature of the schema (features without an input: 'age')"


def bad_feature_not_taken(train: Any) -> tuple[bytes, str]:
    return _sk(
        _lr(), train, drop=("capital-gain",)
    ), "the model takes no input for feature(s) 'capital-gain'"


def bad_string_input_for_numeric(train: Any) -> tuple[bytes, str]:
    return _sk(
        _lr(), train, as_string=("age",)
    ), "input 'age' takes strings, but feature 'age' is integer"


def bad_fails_on_rows(train: Any) -> tuple[bytes, str]:
    """Runs on one row but not on the sample: a reshape to a fixed number of rows."""
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    inputs = [oh.make_tensor_value_info(c, TensorProto.INT64, [None, 1]) for c in NUMERIC]
    inputs.append(oh.make_tensor_value_info("education", TensorProto.STRING, [None, 1]))
    nodes = [oh.make_node("Cast", [c], [f"{c}_f"], to=TensorProto.FLOAT) for c in NUMERIC]
    nodes += [
        oh.make_node("Concat", [f"{c}_f" for c in NUMERIC], ["all"], axis=1),
        oh.make_node("Reshape", ["all", "shape"], ["fixed"]),
        oh.make_node("ReduceMean", ["fixed"], ["m"], axes=[1], keepdims=1),
        oh.make_node("Sigmoid", ["m"], ["probability"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        inputs,
        [oh.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(np.array([7, -1], np.int64), "shape")],
    )
    return oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17)]
    ).SerializeToString(), "fails on 256 training rows"


def bad_not_onnx(train: Any) -> tuple[bytes, str]:
    return train.head(20).to_csv(index=False).encode(), "not an ONNX model"


def bad_opset_cannot_merge(train: Any) -> tuple[bytes, str]:
    """Opset 18's Mish has no version at the bundle's opset 17."""
    import onnx.helper as oh
    from onnx import TensorProto

    inputs = [oh.make_tensor_value_info(c, TensorProto.FLOAT, [None, 1]) for c in NUMERIC]
    inputs.append(oh.make_tensor_value_info("education", TensorProto.STRING, [None, 1]))
    nodes = [
        oh.make_node("Sum", NUMERIC, ["s"]),
        oh.make_node("Mish", ["s"], ["m"]),
        oh.make_node("Sigmoid", ["m"], ["p"]),
    ]
    graph = oh.make_graph(
        nodes, "g", inputs, [oh.make_tensor_value_info("p", TensorProto.FLOAT, [None, 1])]
    )
    return (
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]).SerializeToString(),
        "opset 18 (ai.onnx) cannot be converted to the bundle's opset 17",
    )


def bad_foreign_domain(train: Any) -> tuple[bytes, str]:
    import onnx.helper as oh
    from onnx import TensorProto

    inputs = [oh.make_tensor_value_info(c, TensorProto.FLOAT, [None, 1]) for c in NUMERIC]
    inputs.append(oh.make_tensor_value_info("education", TensorProto.STRING, [None, 1]))
    nodes = [
        oh.make_node("Sum", NUMERIC, ["s"]),
        oh.make_node("FastGelu", ["s"], ["p"], domain="com.microsoft"),
    ]
    graph = oh.make_graph(
        nodes, "g", inputs, [oh.make_tensor_value_info("p", TensorProto.FLOAT, [None, 1])]
    )
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)]
    )
    return model.SerializeToString(), "domain(s) ['com.microsoft'] cannot be merged"


def bad_block_without_order(train: Any) -> tuple[bytes, str]:
    lightgbm = pytest.importorskip("lightgbm")
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1)
    model.fit(
        train[NUMERIC].to_numpy(np.float32), (train["income"] == ">50K").to_numpy().astype(np.int64)
    )
    onx = convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, 5]))])
    return (
        onx.SerializeToString(),
        "input 'input' is a block of 5 columns; declare their features in order",
    )


def bad_numeric_block_like_the_encoding(train: Any) -> tuple[bytes, str, dict[str, Any]]:
    """An XGBoost block [N, 5] on a schema of 5 numeric features: as wide as the bundle's own
    encoding, so which one it is must be declared (it is not taken for the encoding)."""
    xgboost = pytest.importorskip("xgboost")
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = xgboost.XGBClassifier(n_estimators=5, max_depth=2)
    model.fit(
        train[NUMERIC].to_numpy(np.float32),
        (train["income"] == ">50K").to_numpy().astype(np.int64),
    )
    onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, 5]))])
    schema = {"features": {"integer": NUMERIC}, "label": "income", "positive_class": ">50K"}
    return (
        onx.SerializeToString(),
        "input 'input' is a block of 5 columns; declare their features in order in the schema: "
        '"classifier": {"columns": {"input": [...]}} (a model on the bundle\'s own encoding takes '
        '5 columns: declare it with "encoded": true)',
        schema,
    )


def bad_zero_one_labels_without_positive_label(train: Any) -> tuple[bytes, str, dict[str, Any]]:
    onx, _ = bad_block_without_order(train)
    schema = {
        "features": {"integer": NUMERIC},
        "label": "income",
        "positive_class": ">50K",
        "classifier": {"columns": {"input": NUMERIC}},
    }
    return (
        onx,
        "class labels ['0', '1'] of output 'probabilities' do not include the positive class "
        '\'>50K\'; name it in the schema: "classifier": {"positive_label": 1}',
        schema,
    )


BAD = {name.removeprefix("bad_"): fn for name, fn in globals().items() if name.startswith("bad_")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_model_fails_with_one_line_before_training(
    case: str, frames: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gmcf.trainer.pipeline as pipeline

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "fit_gmcf", no_training)
    train, _ = frames
    onnx_bytes, fragment, *schema_dict = BAD[case](train)
    (tmp_path / "model.onnx").write_bytes(onnx_bytes)
    data, schema = write_data(tmp_path, train, schema_dict[0] if schema_dict else SCHEMA)
    out = tmp_path / "out"
    code, _stdout, stderr, exc = train_cli(
        [
            "--data",
            str(data),
            "--schema",
            str(schema),
            "--classifier",
            str(tmp_path / "model.onnx"),
            "-o",
            str(out),
            "--epochs",
            "1",
        ]
    )
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code != 0 and isinstance(exc, SystemExit), f"{stderr}\n{exc!r}"
    assert len(lines) == 1 and lines[0].startswith("error: classifier"), stderr
    assert fragment in lines[0], lines[0]
    assert not out.exists()


def test_an_explicit_input_mapping_pairs_a_renamed_column(
    frames: tuple[Any, Any], tmp_path: Path
) -> None:
    """`years` is mapped to `age` in the schema; the bundle agrees with the model."""
    train, _ = frames
    from sklearn.linear_model import LogisticRegression

    (tmp_path / "model.onnx").write_bytes(
        _sk(LogisticRegression(max_iter=300), train, columns={"age": "years"})
    )
    data, schema = write_data(
        tmp_path, train, {**SCHEMA, "classifier": {"inputs": {"years": "age"}}}
    )
    code, _, stderr, exc = train_cli(
        [
            "--data",
            str(data),
            "--schema",
            str(schema),
            "--classifier",
            str(tmp_path / "model.onnx"),
            "-o",
            str(tmp_path / "b"),
            "--epochs",
            "1",
        ]
    )
    assert code == 0, f"{stderr}\n{exc!r}"
    um = load_bundle(tmp_path / "b").report["classifier"]["user_model"]
    assert um["inputs"]["years"] == "age" and um["inputs"]["education_num"] == "education-num"
    assert um["parity"]["equal_decisions"] == 1.0


def test_a_model_with_our_names_inside_is_prefixed(frames: tuple[Any, Any], tmp_path: Path) -> None:
    """A model on the bundle's encoding whose input is `x`, output `score` and an initializer
    `one` (names the bundle's graphs use) trains and scores as it did."""
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    from gmcf.datasets import Dataset
    from gmcf.runtime.schema import DataSchema
    from gmcf.trainer.prepare import prepare

    train, _ = frames
    data, schema = write_data(tmp_path, train, SCHEMA)
    ds = Dataset(
        "t", pa.Table.from_pandas(train, preserve_index=False), DataSchema.from_dict(SCHEMA)
    )
    p = prepare(ds, 0.2, 0)
    w = np.zeros((p.pre.width, 1), np.float32)
    w[1, 0], w[0, 0] = 8.0, 3.0  # education-num and age, scaled
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["h"]),
        oh.make_node("Sub", ["h", "one"], ["hm"]),
        oh.make_node("Sub", ["hm", "one"], ["h2"]),
        oh.make_node("Sigmoid", ["h2"], ["score"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [None, p.pre.width])],
        [oh.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(3.0, np.float32), "one"),
        ],
    )
    (tmp_path / "model.onnx").write_bytes(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()
    )
    out = tmp_path / "b"
    code, _, stderr, exc = train_cli(
        [
            "--data",
            str(data),
            "--schema",
            str(schema),
            "--classifier",
            str(tmp_path / "model.onnx"),
            "-o",
            str(out),
            "--epochs",
            "1",
        ]
    )
    assert code == 0, f"{stderr}\n{exc!r}"
    ex = Explainer.from_bundle(out, threads=1)
    got = ex.explain(ds.table.take(pa.array(p.test_rows))).column("score").to_numpy()
    want = 1.0 / (1.0 + np.exp(-(p.x_test @ w[:, 0] - 6.0)))
    assert np.abs(got - want).max() <= 1e-5


def test_rank_one_double_and_label_encoded_inputs(frames: tuple[Any, Any], tmp_path: Path) -> None:
    """Inputs of every shape and type the contract allows: `age` double [N], `education-num`
    declared categorical and fed as its int64 value [N, 1], `hours-per-week` float [N, 1]; one
    probability [N] out. The bundle's scores are the formula's on raw held-out rows."""
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    train, held = frames
    schema = {
        "features": {"integer": ["age", "hours-per-week"], "categorical": ["education-num"]},
        "label": "income",
        "positive_class": ">50K",
    }
    cols = ["age", "education-num", "hours-per-week"]
    data, sch = write_data(tmp_path, train[[*cols, "income"]], schema)
    inits = [
        numpy_helper.from_array(np.array(v, dtype), name)
        for name, v, dtype in [
            ("c_age", 0.05, np.float64),
            ("c_edu", 0.4, np.float32),
            ("c_hours", 0.04, np.float32),
            ("bias", -7.5, np.float32),
            ("flat", [-1], np.int64),
        ]
    ]
    nodes = [
        oh.make_node("Cast", ["age"], ["age_f"], to=TensorProto.FLOAT),
        oh.make_node("Mul", ["age", "c_age"], ["t_age64"]),
        oh.make_node("Cast", ["t_age64"], ["t_age"], to=TensorProto.FLOAT),
        oh.make_node("Cast", ["education-num"], ["edu_f"], to=TensorProto.FLOAT),
        oh.make_node("Reshape", ["edu_f", "flat"], ["edu_flat"]),
        oh.make_node("Mul", ["edu_flat", "c_edu"], ["t_edu"]),
        oh.make_node("Reshape", ["hours-per-week", "flat"], ["hours_flat"]),
        oh.make_node("Mul", ["hours_flat", "c_hours"], ["t_hours"]),
        oh.make_node("Sum", ["t_age", "t_edu", "t_hours", "bias"], ["logit"]),
        oh.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [
            oh.make_tensor_value_info("age", TensorProto.DOUBLE, [None]),
            oh.make_tensor_value_info("education-num", TensorProto.INT64, [None, 1]),
            oh.make_tensor_value_info("hours-per-week", TensorProto.FLOAT, [None, 1]),
        ],
        [oh.make_tensor_value_info("probability", TensorProto.FLOAT, [None])],
        initializer=inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    out = tmp_path / "b"
    code, _, stderr, exc = train_cli(
        [
            "--data",
            str(data),
            "--schema",
            str(sch),
            "--classifier",
            str(tmp_path / "model.onnx"),
            "-o",
            str(out),
            "--epochs",
            "1",
        ]
    )
    assert code == 0, f"{stderr}\n{exc!r}"
    result = Explainer.from_bundle(out, threads=1).explain(
        pa.Table.from_pandas(held[cols], preserve_index=False)
    )
    status = result.column("status").to_numpy(zero_copy_only=False)
    ok = status != "invalid"  # an education-num unseen in training is invalid
    assert ok.mean() > 0.99
    logit = (
        0.05 * held["age"] + 0.4 * held["education-num"] + 0.04 * held["hours-per-week"] - 7.5
    ).to_numpy(np.float64)
    want = 1.0 / (1.0 + np.exp(-logit))
    got = result.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    assert np.abs(got[ok] - want[ok]).max() <= 1e-5
    # Counterfactuals change education-num to another of its categories, read back as numbers.
    found = status == "found"
    cf = result.filter(pa.array(found)).to_pandas()
    assert set(cf["cf_education-num"].astype(int)) <= set(train["education-num"])
    logit_cf = (
        0.05 * cf["cf_age"]
        + 0.4 * cf["cf_education-num"].astype(int)
        + 0.04 * cf["cf_hours-per-week"]
        - 7.5
    ).to_numpy(np.float64)
    assert (1.0 / (1.0 + np.exp(-logit_cf)) >= 0.5).all()
