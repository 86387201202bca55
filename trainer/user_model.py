"""A user's own classifier on raw columns, as scikit-learn, LightGBM or XGBoost models come out
of the ONNX converters (skl2onnx, onnxmltools), made into the bundle's ``classifier.onnx``.

The contract a user's model meets:

- inputs: one per feature column, [N, 1] or [N] of float, double, int32, int64 or string (as
  skl2onnx exports a DataFrame), or numeric blocks [N, k] whose column order the schema file
  declares (``"classifier": {"columns": {"input": ["age", ...]}}``, as onnxmltools exports a
  LightGBM or XGBoost model). Inputs map to features by name, with the converters' renames
  (``education-num`` becomes ``education_num``) and an explicit ``"inputs"`` mapping;
- outputs: class probabilities as a tensor [N, 2], [N, 1] or [N], or a ZipMap (a sequence of
  maps, skl2onnx's default); a label output is ignored. The positive class is matched against
  the model's own class labels (strings or integers), or named with ``"positive_label"``.

``UserModel.composed`` builds ``x [N, width] -> score [N]``: an adapter from the bundle's
encoded row (a hard-decoded candidate in model space) to the model's raw inputs (min-max
scaling inverted in double precision, integer features rounded, a category's index gathered
from a constant tensor of its values, casts to the input's type), then the user's graph with
every name prefixed (``u_``), cut before its ZipMap, then the positive class's column. That is
the bundle's ``classifier.onnx``, fused after the search graph like any classifier: the user's
model runs inside the search, with no round trip to Python per candidate.

Everything is checked before any training (``load_user_model``): the file parses, inputs map,
the model runs on a sample of the training rows, its outputs parse, its opset converts to the
bundle's and its domains and names compose with a search graph.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.compose
import onnx.helper as oh
import onnx.numpy_helper
import onnx.shape_inference
import onnx.version_converter
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.runtime import transforms
from gmcf.runtime.bundle import OPSET
from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import Preprocessor

PREFIX = "u_"
DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
SAMPLE_ROWS = 256

_NUMPY: dict[int, Any] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
}
_TYPE_NAMES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float",
    onnx.TensorProto.DOUBLE: "double",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.STRING: "string",
}


def _fail(text: str) -> InputError:
    return InputError(f"classifier: {text}")


def _names(items: Sequence[str], cap: int = 5) -> str:
    shown = ", ".join(repr(s) for s in items[:cap])
    return shown + (f" ... ({len(items)} in all)" if len(items) > cap else "")


@dataclass(frozen=True)
class ClassifierSpec:
    """The ``"classifier"`` section of a schema file: how a user's model meets the schema."""

    inputs: Mapping[str, str] = field(default_factory=dict)
    """Model input -> feature, for names the automatic matching does not pair."""
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Block input [N, k] -> its k features, in column order."""
    positive_label: str | None = None
    """The model's class label of the positive class, when it differs from the schema's
    ``positive_class`` (e.g. 1 for a model trained on 0/1 targets)."""
    encoded: bool = False
    """The model takes the bundle's own encoding [N, width] (only needed where that width could
    also be a block of the raw columns: a schema of numeric features only)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassifierSpec:
        unknown = sorted(set(d) - {"inputs", "columns", "positive_label", "encoded"})
        if unknown:
            raise InputError(
                f'schema: unknown key(s) {unknown} under "classifier"; expected inputs, columns, '
                "positive_label, encoded"
            )
        if not isinstance(d.get("encoded", False), bool):
            raise InputError('schema: "classifier" "encoded" must be true or false')
        inputs = d.get("inputs", {})
        columns = d.get("columns", {})
        if not isinstance(inputs, Mapping) or not all(isinstance(v, str) for v in inputs.values()):
            raise InputError(
                'schema: "classifier" "inputs" must map model input names to feature names'
            )
        if not isinstance(columns, Mapping) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in columns.values()
        ):
            raise InputError(
                'schema: "classifier" "columns" must map a model input to a list of feature names'
            )
        label = d.get("positive_label")
        return cls(
            dict(inputs),
            {k: tuple(v) for k, v in columns.items()},
            None if label is None else str(label),
            bool(d.get("encoded", False)),
        )

    @classmethod
    def from_schema_file(cls, path: Path | None) -> ClassifierSpec:
        """The ``classifier`` section of a JSON or TOML schema file (empty when there is none)."""
        if path is None or not path.exists():
            return cls()
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                from gmcf.runtime import toml

                data = toml.loads(text)
            else:
                data = json.loads(text)
        except Exception:
            return cls()  # the schema loader reports a file it cannot parse
        section = data.get("classifier", {}) if isinstance(data, Mapping) else {}
        if not isinstance(section, Mapping):
            raise InputError(
                'schema: "classifier" must be a table of inputs, columns, positive_label'
            )
        return cls.from_dict(section)


@dataclass(frozen=True)
class ModelInput:
    """One input of the user's model and the features it takes (one, or a block's columns)."""

    name: str
    elem: int
    rank: int
    features: tuple[str, ...]

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.elem, str(self.elem))


def _normal(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def map_inputs(model: onnx.ModelProto, pre: Preprocessor, spec: ClassifierSpec) -> list[ModelInput]:
    """Pair every model input with its feature(s); one error lists everything that does not pair."""
    feats = {f.name: f for f in pre.features}
    by_normal: dict[str, list[str]] = {}
    for f in pre.features:
        by_normal.setdefault(_normal(f.name), []).append(f.name)
    out: list[ModelInput] = []
    unmatched: list[str] = []
    for inp in _graph_inputs(model):
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        if tt is None:
            raise _fail(f"input {inp.name!r} is not a tensor")
        if tt.elem_type not in _TYPE_NAMES:
            raise _fail(
                f"input {inp.name!r} has element type "
                f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; expected float, double, int32, "
                "int64 or string"
            )
        dims = tt.shape.dim if tt.HasField("shape") else []
        rank = len(dims) if tt.HasField("shape") else 2
        if rank not in (1, 2):
            raise _fail(
                f"input {inp.name!r} has {rank} dimensions; expected [N, 1], [N] or a block [N, k]"
            )
        width = dims[1].dim_value if rank == 2 and dims[1].HasField("dim_value") else None
        if inp.name in spec.columns:
            cols = spec.columns[inp.name]
            missing = [c for c in cols if c not in feats]
            if missing:
                raise _fail(
                    f"input {inp.name!r}: declared column(s) {_names(missing)} are not features of "
                    "the schema"
                )
            if rank != 2 or (width is not None and width != len(cols)):
                raise _fail(
                    f"input {inp.name!r} has {width if rank == 2 else 1} column(s), but the schema "
                    f"declares {len(cols)}"
                )
            out.append(ModelInput(inp.name, tt.elem_type, rank, tuple(cols)))
            continue
        if rank == 2 and width is not None and width != 1:
            raise _fail(
                f"input {inp.name!r} is a block of {width} columns; declare their features in "
                f'order in the schema: "classifier": {{"columns": {{"{inp.name}": [...]}}}} (a '
                f"model on the bundle's own encoding takes {pre.width} columns"
                + (': declare it with "encoded": true)' if width == pre.width else ")")
            )
        if inp.name in spec.inputs:
            name = spec.inputs[inp.name]
            if name not in feats:
                raise _fail(
                    f"input {inp.name!r} is mapped to {name!r}, which is not a feature of the "
                    "schema"
                )
        elif inp.name in feats:
            name = inp.name
        elif len(by_normal.get(_normal(inp.name), [])) == 1:
            name = by_normal[_normal(inp.name)][0]
        else:
            unmatched.append(inp.name)
            continue
        out.append(ModelInput(inp.name, tt.elem_type, rank, (name,)))
    taken = [n for m in out for n in m.features]
    untaken = [f.name for f in pre.features if f.name not in taken]
    if unmatched:
        raise _fail(
            f"input(s) {_names(unmatched)} match no feature of the schema (features without an "
            f'input: {_names(untaken) or "none"}); map them in the schema: "classifier": '
            f'{{"inputs": {{"{unmatched[0]}": "<feature>"}}}}'
        )
    twice = sorted({n for n in taken if taken.count(n) > 1})
    if twice:
        raise _fail(f"feature(s) {_names(twice)} feed more than one input")
    if untaken:
        raise _fail(
            f"the model takes no input for feature(s) {_names(untaken)} (inputs: "
            f"{_names([m.name for m in out])}); drop them from the schema's features or map them"
        )
    for m in out:
        for name in m.features:
            f = feats[name]
            if m.elem == onnx.TensorProto.STRING and f.is_numeric:
                raise _fail(f"input {m.name!r} takes strings, but feature {name!r} is {f.kind}")
            if m.elem != onnx.TensorProto.STRING and not f.is_numeric:
                bad = [c for c in f.categories if not _is_number(c)]
                if bad:
                    raise _fail(
                        f"input {m.name!r} takes {m.type_name} numbers, but feature {name!r} is "
                        f"categorical with categories such as {_names(bad, 3)}"
                    )
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- outputs ----------------------------------------------------------------------------------

_LABEL_ATTRS = ("classlabels_strings", "classlabels_int64s")


def _class_labels(node: onnx.NodeProto) -> list[str] | None:
    for a in node.attribute:
        if a.name in _LABEL_ATTRS:
            values = list(a.strings) if a.name == "classlabels_strings" else list(a.ints)
            if values:
                return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return None


@dataclass(frozen=True)
class Probabilities:
    """Where the positive class's probability is: tensor ``name``, its ``column`` (None for a
    tensor [N] or [N, 1]), and the model's class labels when it carries them."""

    name: str
    column: int | None
    labels: list[str] | None


def find_probabilities(
    model: onnx.ModelProto,
    outputs: Mapping[str, np.ndarray | None],
    positive: str,
    classes: Sequence[str],
    spec: ClassifierSpec,
) -> Probabilities:
    """The probability tensor among the model's outputs (``outputs``: name -> the value it gave
    on sample rows, None for a ZipMap), cutting a ZipMap; a label output is ignored."""
    producer = {o: n for n in model.graph.node for o in n.output}
    ops = {n.op_type for n in model.graph.node}
    regressors = sorted(o for o in ops if o.endswith("Regressor"))
    if regressors and not any(o.endswith("Classifier") for o in ops):
        raise _fail(
            f"a regressor ({regressors[0]}); a binary classifier with class probabilities is needed"
        )
    labels = next((lb for n in model.graph.node if (lb := _class_labels(n)) is not None), None)
    chosen: tuple[str, tuple[int, ...], str] | None = None
    seen = []
    for out in model.graph.output:
        value = outputs[out.name]
        if out.type.HasField("sequence_type") or value is None:
            node = producer.get(out.name)
            if node is None or node.op_type != "ZipMap":
                raise _fail(f"output {out.name!r} is a sequence not produced by a ZipMap")
            labels = _class_labels(node) or labels
            chosen = (node.input[0], (-1, len(labels) if labels else -1), out.name)
            break
        arr = np.asarray(value)
        seen.append(f"{out.name} {arr.dtype}{list(arr.shape)}")
        if arr.dtype.kind == "f" and chosen is None:
            if arr.ndim == 2 and arr.shape[1] > 2:
                raise _fail(
                    f"output {out.name!r} has {arr.shape[1]} classes; only binary classifiers can "
                    "be explained"
                )
            if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] in (1, 2)):
                chosen = (out.name, arr.shape, out.name)
    if chosen is None:
        raise _fail(
            f"no class probabilities among the outputs ({', '.join(seen)}); expected a ZipMap or a "
            "float tensor [N, 2], [N, 1] or [N]"
        )
    name, shape, output = chosen
    if labels is not None and len(labels) > 2:
        raise _fail(
            f"output {output!r} has {len(labels)} classes ({_names(labels)}); only binary "
            "classifiers can be explained"
        )
    if len(shape) == 1 or shape[1] == 1:
        return Probabilities(name, None, labels)
    wanted = spec.positive_label if spec.positive_label is not None else positive
    if labels is None:
        labels = list(classes)  # scikit-learn's order: the sorted classes
    if wanted not in labels:
        hint = labels[-1] if _is_number(labels[-1]) else json.dumps(labels[-1])
        raise _fail(
            f"class labels {labels} of output {output!r} do not include the positive class "
            f'{wanted!r}; name it in the schema: "classifier": {{"positive_label": {hint}}}'
        )
    return Probabilities(name, labels.index(wanted), labels)


# -- graph surgery ----------------------------------------------------------------------------


def _cut(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The part of ``model`` that computes ``output`` alone (its only graph output)."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    keep: set[int] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        i = producer.get(name)
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(x for x in g.node[i].input if x)
    nodes = [n for i, n in enumerate(g.node) if i in keep]
    used = {x for n in nodes for x in n.input} | {output}
    info = {v.name: v for v in [*g.value_info, *g.output]}
    if output not in info:
        with contextlib.suppress(Exception):
            inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
            info.update({v.name: v for v in inferred})
    out_info = info.get(output)
    if out_info is None or not out_info.type.tensor_type.HasField("shape"):
        elem = (
            out_info.type.tensor_type.elem_type if out_info is not None else onnx.TensorProto.FLOAT
        )
        out_info = oh.make_tensor_value_info(output, elem or onnx.TensorProto.FLOAT, ["n", None])
    graph = oh.make_graph(
        nodes,
        g.name or "classifier",
        list(g.input),
        [out_info],
        initializer=[t for t in g.initializer if t.name in used],
        value_info=[v for v in g.value_info if v.name in used and v.name != output],
    )
    cut = oh.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    cut.functions.extend(model.functions)
    return cut


def align_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at the bundle's ai.onnx opset (converted when it differs); other domains than
    ai.onnx and ai.onnx.ml are refused."""
    domains = {o.domain: o.version for o in model.opset_import}
    other = sorted(d for d in domains if d not in DOMAINS)
    used_other = sorted({n.domain for n in model.graph.node} - set(DOMAINS))
    if other or used_other:
        raise _fail(
            f"operators of domain(s) {(other or used_other)} cannot be merged with the bundle's "
            "graphs (only ai.onnx and ai.onnx.ml)"
        )
    version = domains.get("", domains.get("ai.onnx"))
    if version is None:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.opset_import.append(oh.make_opsetid("", OPSET))
        return model
    if version == OPSET:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.rsplit("failed: ", 1)[-1]
        raise _fail(
            f"opset {version} (ai.onnx) cannot be converted to the bundle's opset {OPSET}: {first}"
        ) from exc
    return converted


def _inverse_params(f: Any) -> tuple[float, float, float, float]:
    """(t_lo, t_span, is_log, a) of a numeric feature: its model-space value u goes back to raw
    as t = t_lo + u t_span, then, for a log-transformed feature, a + sign(t) (exp|t| - 1)."""
    transform = f.transform
    if transform == "minmax":
        lo, hi = float(f.lo), float(f.hi)
        return lo, (hi - lo if hi > lo else 1.0), 0.0, 0.0
    if transform == "log":
        t_lo, t_span = transforms.t_range(f)
        return float(t_lo), float(t_span), 1.0, float(transforms.log_offset(f.lo or 0.0))
    raise _fail(
        f"feature {f.name!r}: its transform {transform!r} cannot be inverted inside the graph"
    )


def _adapter(pre: Preprocessor, inputs: Sequence[ModelInput]) -> onnx.ModelProto:
    """x [N, width] (encoded, hard) -> the model's raw inputs, named PREFIX + input name."""
    params = np.array([_inverse_params(f) for f in pre.numeric], np.float64).reshape(-1, 4)
    t_lo, t_span, is_log, offset_a = params.T
    n = pre.n_numeric
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    col: dict[str, str] = {}  # feature -> [N, 1] tensor of raw values
    cats: dict[
        str, tuple[str, tuple[str, ...]]
    ] = {}  # categorical feature -> (index [N, 1], categories)

    def const(name: str, value: np.ndarray) -> str:
        inits.append(onnx.numpy_helper.from_array(value, name))
        return name

    if n:
        const("ad_starts", np.array([0], np.int64))
        const("ad_ends", np.array([n], np.int64))
        const("ad_axis1", np.array([1], np.int64))
        nodes += [
            oh.make_node("Slice", ["x", "ad_starts", "ad_ends", "ad_axis1"], ["ad_num"]),
            oh.make_node("Cast", ["ad_num"], ["ad_num64"], to=onnx.TensorProto.DOUBLE),
            oh.make_node("Mul", ["ad_num64", const("ad_span", t_span[None, :])], ["ad_scaled"]),
            oh.make_node("Add", ["ad_scaled", const("ad_lo", t_lo[None, :])], ["ad_t"]),
        ]
        raw = "ad_t"
        if is_log.any():
            # log transform: raw = a + sign(t) (exp(|t|) - 1)
            nodes += [
                oh.make_node("Abs", ["ad_t"], ["ad_abs"]),
                oh.make_node("Exp", ["ad_abs"], ["ad_exp"]),
                oh.make_node(
                    "Sub", ["ad_exp", const("ad_one64", np.array(1.0, np.float64))], ["ad_expm1"]
                ),
                oh.make_node("Sign", ["ad_t"], ["ad_sign"]),
                oh.make_node("Mul", ["ad_sign", "ad_expm1"], ["ad_signed"]),
                oh.make_node("Add", ["ad_signed", const("ad_a", offset_a[None, :])], ["ad_log"]),
                oh.make_node(
                    "Where",
                    [const("ad_is_log", is_log[None, :] > 0), "ad_log", "ad_t"],
                    ["ad_raw0"],
                ),
            ]
            raw = "ad_raw0"
        nodes += [
            oh.make_node("Round", [raw], ["ad_round"]),
            oh.make_node(
                "Where", [const("ad_int", pre.integer_mask()[None, :]), "ad_round", raw], ["ad_raw"]
            ),
        ]
        for j, f in enumerate(pre.numeric):
            col[f.name] = f"ad_col{j}"
            nodes.append(
                oh.make_node(
                    "Gather",
                    ["ad_raw", const(f"ad_j{j}", np.array([j], np.int64))],
                    [col[f.name]],
                    axis=1,
                )
            )
    offset = n
    for j, f in enumerate(pre.categorical):
        k = len(f.categories)
        const(f"ad_cs{j}", np.array([offset], np.int64))
        const(f"ad_ce{j}", np.array([offset + k], np.int64))
        nodes += [
            oh.make_node(
                "Slice",
                [
                    "x",
                    f"ad_cs{j}",
                    f"ad_ce{j}",
                    "ad_axis1" if n else const("ad_axis1", np.array([1], np.int64)),
                ],
                [f"ad_block{j}"],
            ),
            oh.make_node("ArgMax", [f"ad_block{j}"], [f"ad_idx{j}"], axis=1, keepdims=1),
        ]
        cats[f.name] = (f"ad_idx{j}", f.categories)
        offset += k
    flat = const("ad_flat", np.array([-1], np.int64)) if any(m.rank == 1 for m in inputs) else ""
    outputs = []
    for i, m in enumerate(inputs):
        parts = []
        for name in m.features:
            if name in cats:
                idx, categories = cats[name]
                if m.elem == onnx.TensorProto.STRING:
                    inits.append(
                        oh.make_tensor(
                            f"ad_cats{i}_{name}",
                            onnx.TensorProto.STRING,
                            [len(categories)],
                            [c.encode() for c in categories],  # type: ignore[misc]
                        )
                    )
                else:
                    const(
                        f"ad_cats{i}_{name}",
                        np.array([float(c) for c in categories], _NUMPY[m.elem]),
                    )
                parts.append(f"ad_in{i}_{name}")
                nodes.append(
                    oh.make_node("Gather", [f"ad_cats{i}_{name}", idx], [parts[-1]], axis=0)
                )
            else:
                parts.append(f"ad_in{i}_{name}")
                nodes.append(oh.make_node("Cast", [col[name]], [parts[-1]], to=m.elem))
        joined = parts[0]
        if len(parts) > 1:
            joined = f"ad_block_in{i}"
            nodes.append(oh.make_node("Concat", parts, [joined], axis=1))
        target = PREFIX + m.name
        if m.rank == 1:
            nodes.append(oh.make_node("Reshape", [joined, flat], [target]))
        else:
            nodes.append(oh.make_node("Identity", [joined], [target]))
        shape: list[Any] = ["n"] if m.rank == 1 else ["n", len(m.features)]
        outputs.append(oh.make_tensor_value_info(target, m.elem, shape))
    graph = oh.make_graph(
        nodes,
        "adapter",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", pre.width])],
        outputs,
        initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])


@dataclass
class UserModel:
    """A user's classifier on raw columns, cut to its probabilities and aligned to our opset."""

    model: onnx.ModelProto
    """The user's graph with only its probability output (ZipMap and label cut off)."""
    inputs: list[ModelInput]
    probabilities: Probabilities
    _session: Any = field(default=None, init=False, repr=False)

    def feed(self, table: pa.Table, pre: Preprocessor) -> dict[str, np.ndarray]:
        """Raw columns of ``table`` as the model's inputs (rows must be usable)."""
        feats = {f.name: f for f in pre.features}
        out = {}
        for m in self.inputs:
            cols = []
            for name in m.features:
                c = table.column(name)
                if pa.types.is_dictionary(c.type):
                    c = c.cast(c.type.value_type)
                if m.elem == onnx.TensorProto.STRING:
                    cols.append(np.asarray(c.cast(pa.string()).to_pylist(), dtype=object))
                elif feats[name].is_numeric:
                    cols.append(np.asarray(pc.cast(c, pa.float64()).to_numpy(zero_copy_only=False)))
                else:
                    cols.append(np.asarray([float(v) for v in c.cast(pa.string()).to_pylist()]))
            arr = np.stack(cols, axis=1)
            if m.elem != onnx.TensorProto.STRING:
                arr = arr.astype(_NUMPY[m.elem])
            out[m.name] = arr.reshape(-1) if m.rank == 1 else arr
        return out

    def score_raw(self, table: pa.Table, pre: Preprocessor) -> np.ndarray:
        """The probability of the positive class the user's model gives raw rows (float32 [N])."""
        if self._session is None:
            self._session = _session(self.model)
        (prob,) = self._session.run([self.probabilities.name], self.feed(table, pre))
        prob = np.asarray(prob, dtype=np.float32)
        col = self.probabilities.column
        return prob.reshape(-1) if col is None else prob[:, col]

    def composed(self, pre: Preprocessor) -> onnx.ModelProto:
        """The bundle's classifier: x [N, width] -> score [N], the user's graph inside."""
        user = onnx.compose.add_prefix(self.model, PREFIX)
        adapter = _adapter(pre, self.inputs)
        adapter.ir_version = user.ir_version = max(adapter.ir_version, user.ir_version)
        for o in user.opset_import:
            if o.domain not in ("", "ai.onnx") and not any(
                a.domain == o.domain for a in adapter.opset_import
            ):
                adapter.opset_import.append(oh.make_opsetid(o.domain, o.version))
        merged = onnx.compose.merge_models(
            adapter,
            user,
            io_map=[(PREFIX + m.name, PREFIX + m.name) for m in self.inputs],
        )
        g = merged.graph
        prob = PREFIX + self.probabilities.name
        nodes = [oh.make_node("Cast", [prob], ["score_prob"], to=onnx.TensorProto.FLOAT)]
        if self.probabilities.column is None:
            nodes.append(oh.make_node("Reshape", ["score_prob", "score_flat"], ["score"]))
            extra = [onnx.numpy_helper.from_array(np.array([-1], np.int64), "score_flat")]
        else:
            nodes.append(oh.make_node("Gather", ["score_prob", "score_col"], ["score"], axis=1))
            extra = [
                onnx.numpy_helper.from_array(
                    np.array(self.probabilities.column, np.int64), "score_col"
                )
            ]
        graph = oh.make_graph(
            [*g.node, *nodes],
            "classifier",
            list(g.input),
            [oh.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["n"])],
            initializer=[*g.initializer, *extra],
            value_info=list(g.value_info),
        )
        out = oh.make_model(
            graph, opset_imports=list(merged.opset_import), ir_version=merged.ir_version
        )
        out.functions.extend(merged.functions)
        onnx.checker.check_model(out)
        return out


def load_model_file(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise InputError(f"classifier {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise InputError(f"classifier {path}: not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise InputError(f"classifier {path}: not an ONNX model (no graph)")
    return model


def encoded_contract(model: onnx.ModelProto, pre: Preprocessor, spec: ClassifierSpec) -> bool:
    """True for a model that takes the bundle's own encoding: one float input [N, width] that
    is neither a feature's name nor a declared block. Where the width is also the number of
    features (numeric features only), the input could be either: the schema says which."""
    inputs = _graph_inputs(model)
    if spec.encoded:
        return True
    if len(inputs) != 1 or spec.columns or spec.inputs or pre.width == len(pre.features):
        return False
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims = tt.shape.dim
    feats = {_normal(f.name) for f in pre.features}
    return (
        tt.elem_type == onnx.TensorProto.FLOAT
        and len(dims) == 2
        and dims[1].HasField("dim_value")
        and dims[1].dim_value == pre.width
        and _normal(inp.name) not in feats
        and pre.width > 1
    )


def load_user_model(
    model: onnx.ModelProto,
    pre: Preprocessor,
    sample: pa.Table,
    positive: str,
    classes: Sequence[str],
    spec: ClassifierSpec,
) -> UserModel:
    """Check a user's raw-column model against the schema and on ``sample`` (usable training
    rows) and cut it to its probabilities; one-line errors, before any training."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise _fail(f"not a valid ONNX model: {str(exc).strip().splitlines()[0]}") from exc
    inputs = map_inputs(model, pre, spec)
    aligned = align_opset(model)
    probe = UserModel(aligned, inputs, Probabilities("", None, None))
    feed = probe.feed(sample, pre)
    try:
        values = _session(aligned).run(None, feed)
    except Exception as exc:
        raise _fail(
            f"fails on {sample.num_rows} training rows: {str(exc).strip().splitlines()[0]}"
        ) from exc
    outputs = {
        o.name: (None if isinstance(v, list) else np.asarray(v))
        for o, v in zip(aligned.graph.output, values, strict=True)
    }
    probs = find_probabilities(aligned, outputs, positive, classes, spec)
    user = UserModel(_cut(aligned, probs.name), inputs, probs)
    score = user.score_raw(sample, pre)
    if not np.all(np.isfinite(score)) or score.min() < -1e-6 or score.max() > 1.0 + 1e-6:
        raise _fail(
            f"output {probs.name!r} is not a probability on the training rows (range "
            f"{score.min():g}..{score.max():g})"
        )
    return user


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check_fusion(classifier: onnx.ModelProto, x: np.ndarray) -> None:
    """Fuse ``classifier`` after a stand-in search graph, as the export will, and run it on
    ``x``: opsets, domains and names must compose before any training starts."""
    from gmcf.trainer.export import fuse_search

    width = x.shape[1]
    f32 = onnx.TensorProto.FLOAT
    front = oh.make_model(
        oh.make_graph(
            [oh.make_node("Identity", ["x"], ["code"]), oh.make_node("Identity", ["x"], ["rows"])],
            "front",
            [
                oh.make_tensor_value_info("x", f32, ["b", width]),
                oh.make_tensor_value_info("alphas", f32, ["b", "s"]),
                oh.make_tensor_value_info("target", f32, ["b", "d"]),
            ],
            [
                oh.make_tensor_value_info("code", f32, ["n", width]),
                oh.make_tensor_value_info("rows", f32, ["n", width]),
            ],
        ),
        opset_imports=[oh.make_opsetid("", OPSET)],
    )
    try:
        fused = fuse_search(front, classifier)
        (score,) = _session(fused).run(
            ["score"],
            {
                "x": x,
                "alphas": np.zeros((len(x), 1), np.float32),
                "target": np.zeros((len(x), 1), np.float32),
            },
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(f"does not compose with the search graph: {first}") from exc
    if np.asarray(score).shape != (len(x),):
        raise _fail(
            f"the fused search graph gives scores shaped {np.asarray(score).shape}, expected "
            f"({len(x)},)"
        )


@dataclass
class Labelled:
    """The bundle's classifier and f's probabilities of the training and held-out rows."""

    onnx_model: onnx.ModelProto
    f_train: np.ndarray
    f_test: np.ndarray
    report: dict[str, Any]


def label_with_user_model(
    model: onnx.ModelProto, ds: Any, p: Any, spec: ClassifierSpec
) -> Labelled:
    """A user's classifier made into the bundle's, checked, and f's probabilities of the rows.

    A raw-column model labels the training rows on their raw values; the report records the
    bundle's classifier against it on the held-out raw rows (share of equal decisions at 0.5,
    max |dp|). A model on the bundle's own encoding (``encoded_contract``) is adapted as is."""
    from gmcf.runtime.schema import ImagePreprocessor
    from gmcf.trainer.export import adapt_classifier

    pre: Preprocessor = p.pre
    if isinstance(pre, ImagePreprocessor) or encoded_contract(model, pre, spec):
        clf = adapt_classifier(model, pre.width)
        check_fusion(clf, p.x_train[:SAMPLE_ROWS])
        sess = _session(clf)
        f_train, f_test = (
            np.asarray(sess.run(["score"], {"x": x})[0]) for x in (p.x_train, p.x_test)
        )
        return Labelled(clf, f_train, f_test, {"contract": "encoded"})
    label = ds.table.column(ds.schema.label)
    if pa.types.is_floating(label.type):
        label = pc.cast(label, pa.int64())
    classes = sorted(str(c) for c in pc.unique(pc.drop_null(label.cast(pa.string()))).to_pylist())
    train_raw = ds.table.take(pa.array(p.train_rows))
    test_raw = ds.table.take(pa.array(p.test_rows))
    user = load_user_model(
        model, pre, train_raw.slice(0, SAMPLE_ROWS), ds.schema.positive_class, classes, spec
    )
    clf = user.composed(pre)
    check_fusion(clf, p.x_train[:SAMPLE_ROWS])
    f_train = user.score_raw(train_raw, pre)
    f_test = user.score_raw(test_raw, pre)
    bundle_test = np.asarray(_session(clf).run(["score"], {"x": p.x_test})[0])
    probs = user.probabilities
    report = {
        "contract": "raw columns",
        "inputs": {
            m.name: list(m.features) if len(m.features) > 1 else m.features[0] for m in user.inputs
        },
        "probabilities": probs.name,
        "class_labels": probs.labels,
        "positive_column": probs.column,
        "parity": {
            "rows": len(f_test),
            "equal_decisions": float(((bundle_test >= 0.5) == (f_test >= 0.5)).mean())
            if len(f_test)
            else 1.0,
            "max_abs_dp": float(np.abs(bundle_test - f_test).max()) if len(f_test) else 0.0,
        },
    }
    return Labelled(clf, f_train, f_test, report)
