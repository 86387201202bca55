"""Export of a trained model to a bundle: ONNX graphs with one pinned opset, and manifest.json.

Graphs (every one takes float32 and is batch-dynamic):

- ``encoder.onnx``      x [N, F] -> z [N, d]
- ``encoder_u.onnx``    x [N, F] -> z_u [N, d_u]
- ``decoder.onnx``      z [N, d], z_u [N, d_u] -> x_soft [N, F]
- ``classifier.onnx``   x [N, F] -> score [N]  (probability of the positive class)
- ``search.onnx``       x [B, F], alphas [B, S], target [B, d] -> code [B*S, C], score [B*S]:
  the hard-decoded candidates of Algorithm 2 (row b*S + s is query b at alphas[b, s], walking
  toward target[b]), scored by f. ``code`` is the candidate in compact form, C = numeric
  features + categorical features: numeric values in model space, then each categorical
  feature's category index (as float32); ``Preprocessor.expand_code`` makes model-space rows.
- ``search_bounded.onnx`` the same with lower [B, F], upper [B, F]: per-row bounds on the
  returned rows (constraints), applied before f scores them.
- ``reconstruct.onnx``  x [N, F] -> error [N]: mean squared error of the autoencoder on x.

The search graphs are laid out as [features, S*B] inside (long rows for the small matrix
products), keep only the compact code of each candidate, and take the arg-max of a categorical
block as the first maximum, built from element-wise maxima: about 1.6x faster in onnxruntime than
the row layout of ``SearchFront``, which stays as the readable reference the tests compare with
and as the layout for networks the columns cannot run (convolutions).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import onnx.compose
import onnx.helper as oh
import onnx.version_converter
import torch
from torch import nn

from gmcf.runtime.bundle import OPSET
from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import Preprocessor
from gmcf.trainer.hard_numeric import NumericHard
from gmcf.trainer.model import GMCF, ReferenceClassifier

#: A decoder's ``raw``: hidden features -> (numeric values in [0, 1], one logit block per category).
RawDecode = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


class HardDecode(nn.Module):
    """Decoder output -> the row a user receives: integers rounded, one-hots arg-maxed."""

    def __init__(self, pre: Preprocessor) -> None:
        super().__init__()
        self.numeric = NumericHard(pre)
        self.cat_sizes = pre.cat_sizes
        self.aranges = nn.ParameterList(
            [
                nn.Parameter(torch.arange(k, dtype=torch.int64), requires_grad=False)
                for k in self.cat_sizes
            ]
        )

    def forward(
        self,
        cont: torch.Tensor,
        logits: list[torch.Tensor],
        lower: torch.Tensor | None = None,
        upper: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``lower``/``upper`` bound every entry of the row (broadcastable to it). Numeric values
        are clamped to them before and after rounding (``NumericHard``); a one-hot entry whose
        upper bound is 0 is a category the row may not take. Without bounds (the training range),
        the sigmoid keeps numeric values in [0, 1] and rounding keeps integers on their grid
        within it. ``x``, the query's row, widens the training band to include its values."""
        n = cont.shape[-1]
        cont = self.numeric(
            cont,
            None if x is None else x[..., :n],
            None if lower is None else lower[..., :n],
            None if upper is None else upper[..., :n],
        )
        blocks = []
        offset = n
        cat_upper = None
        if lower is not None and upper is not None:
            cat_upper = upper[..., n:]
            mask = self.numeric.category_mask(lower[..., :n], upper[..., :n], cat_upper.shape[-1])
            cat_upper = cat_upper if mask is None else cat_upper * mask
        for lg, ar in zip(logits, self.aranges, strict=True):
            k = lg.shape[-1]
            if cat_upper is not None:
                lg = lg - 1e9 * (1.0 - cat_upper[..., offset - n : offset - n + k])
            blocks.append((ar == torch.argmax(lg, dim=-1, keepdim=True)).to(torch.float32))
            offset += k
        if blocks:
            cont = self.numeric.follow(cont, torch.cat(blocks, dim=-1))
        return torch.cat([cont, *blocks], dim=-1)


def split_first_layer(
    model: GMCF,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Sequential]:
    """The decoder's first layer W [z; z_u] + b as (W_z, W_u, b), copies, and the layers after
    it."""
    body = list(cast(nn.Sequential, model.decoder.body))
    first = body[0]
    assert isinstance(first, nn.Linear)
    d = model.mu.shape[1]
    w = first.weight.detach()
    return w[:, :d].clone(), w[:, d:].clone(), first.bias.detach().clone(), nn.Sequential(*body[1:])


class SearchFront(nn.Module):
    """Algorithm 2 for a batch and a per-row alpha grid, up to (not including) the classifier.

    Inputs: x [B, F]; alphas [B, S]; target [B, d], the latent point each query walks toward
    (mu_1 for the paper's search); lower, upper [B, F], per-row bounds on the returned row in
    model space (0 and 1 where unconstrained; see ``HardDecode``).

    The first decoder layer is applied once per query and interpolated:
    W [(1-a) z + a t ; z_u] + b = P + a Q with P = W [z; z_u] + b and Q = W_z (t - z).
    """

    def __init__(self, model: GMCF, pre: Preprocessor) -> None:
        super().__init__()
        self.encoder, self.encoder_u = model.encoder, model.encoder_u
        w_z, w_u, b, rest = split_first_layer(model)
        self.register_buffer("w_z", w_z.t().contiguous())
        self.register_buffer("w_u", w_u.t().contiguous())
        self.register_buffer("b", b)
        self.rest = rest
        self.decoder = model.decoder
        self.hard = HardDecode(pre)
        self.pre = pre

    def decode(
        self, x: torch.Tensor, alphas: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Soft decoder outputs of every candidate, as [B, S, .] blocks."""
        z, zu = self.encoder(x), self.encoder_u(x)
        p = z @ self.w_z + zu @ self.w_u + self.b  # [B, H]
        q = (target - z) @ self.w_z  # [B, H]
        b, s = alphas.shape
        h = (p[:, None, :] + alphas[:, :, None] * q[:, None, :]).reshape(b * s, -1)
        cont, logits = cast(RawDecode, self.decoder.raw)(
            self.rest(h)
        )  # 2-D: each layer is one Gemm
        return cont.reshape(b, s, -1), [lg.reshape(b, s, -1) for lg in logits]

    def forward(
        self,
        x: torch.Tensor,
        alphas: torch.Tensor,
        target: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
    ) -> torch.Tensor:
        cont, logits = self.decode(x, alphas, target)
        rows = self.hard(cont, logits, lower[:, None, :], upper[:, None, :], x[:, None, :])
        return rows.reshape(-1, rows.shape[-1])


class PlainSearchFront(SearchFront):
    """``SearchFront`` without bounds: the paper's search, about 1.5x faster in onnxruntime."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, alphas: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        cont, logits = self.decode(x, alphas, target)
        rows = self.hard(cont, logits, x=x[:, None, :])
        return rows.reshape(-1, rows.shape[-1])


def _code_of(rows: torch.Tensor, pre: Preprocessor) -> torch.Tensor:
    """Hard rows [N, F] -> compact code [N, C]: numeric values, then each category's index."""
    n = pre.n_numeric
    parts = [rows[:, :n]]
    offset = n
    for k in pre.cat_sizes:
        parts.append(
            torch.argmax(rows[:, offset : offset + k], dim=1, keepdim=True).to(torch.float32)
        )
        offset += k
    return torch.cat(parts, dim=1)


class RowSearchPlain(PlainSearchFront):
    """The search in row layout, for networks the column layout cannot run (convolutions):
    (code, rows) for ``fuse_search`` to score with the ONNX classifier."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, alphas: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = super().forward(x, alphas, target)
        return _code_of(rows, self.pre), rows


class RowSearchBounded(SearchFront):
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        alphas: torch.Tensor,
        target: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = super().forward(x, alphas, target, lower, upper)
        return _code_of(rows, self.pre), rows


def _mlp(seq: nn.Module) -> bool:
    return isinstance(seq, nn.Sequential) and all(
        isinstance(m, nn.Linear | nn.ReLU | nn.LeakyReLU) for m in seq
    )


def column_ready(model: GMCF) -> bool:
    """The column layout runs MLP encoders and a decoder whose body and head are linear layers."""
    dec = model.decoder
    return (
        _mlp(model.encoder)
        and _mlp(model.encoder_u)
        and _mlp(getattr(dec, "body", nn.Identity()))
        and isinstance(getattr(dec, "head", None), nn.Linear)
    )


def _chain_t(layers: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """An nn.Sequential of Linear layers and element-wise activations, on columns [features, N]."""
    for layer in layers:
        h = layer.weight @ h + layer.bias[:, None] if isinstance(layer, nn.Linear) else layer(h)
    return h


def transposable_classifier(clf: nn.Module | None) -> nn.Sequential | None:
    """The layer stack of a classifier the search graph can run on columns (the reference
    classifier: Linear and ReLU layers, then a sigmoid), else None."""
    net = getattr(clf, "net", None)
    if (
        isinstance(clf, ReferenceClassifier)
        and isinstance(net, nn.Sequential)
        and all(isinstance(m, nn.Linear | nn.ReLU | nn.LeakyReLU) for m in net)
    ):
        return net
    return None


class ColumnSearch(nn.Module):
    """The exported search graph: Algorithm 2 on columns [features, S*B] (alpha-major inside;
    the outputs are in the contract's order, candidate b*S + s).

    Same arithmetic as ``SearchFront`` (folded first decoder layer, the same ``HardDecode`` grid
    and bounds), then f. Returns (code [B*S, C], score [B*S]); with no column-ready classifier,
    (code, rows [B*S, F]) for ``fuse_search`` to score with an ONNX classifier."""

    w_z: torch.Tensor
    w_u: torch.Tensor
    b: torch.Tensor
    index: torch.Tensor

    def __init__(self, model: GMCF, pre: Preprocessor, clf: nn.Sequential | None) -> None:
        super().__init__()
        # column_ready(model): both encoders are nn.Sequential MLPs
        self.encoder, self.encoder_u = (
            cast(nn.Sequential, model.encoder),
            cast(nn.Sequential, model.encoder_u),
        )
        w_z, w_u, b, rest = split_first_layer(model)
        self.register_buffer("w_z", w_z)
        self.register_buffer("w_u", w_u)
        self.register_buffer("b", b[:, None])
        self.layers = nn.Sequential(
            *rest, cast(nn.Module, model.decoder.head)
        )  # after the folded first layer
        self.numeric = NumericHard(pre, columns=True)
        self.n = pre.n_numeric
        self.cat_sizes = list(pre.cat_sizes)
        self.register_buffer(
            "index", torch.arange(max(self.cat_sizes, default=1), dtype=torch.float32)[None, :]
        )
        self.clf = clf

    def run(
        self,
        x: torch.Tensor,
        alphas: torch.Tensor,
        target: torch.Tensor,
        lower: torch.Tensor | None,
        upper: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Columns are ordered s * B + b inside (alpha-major), so that every per-query vector
        # broadcasts over the middle axis, which onnxruntime does at full speed; the outputs are
        # put back in the contract's order b * S + s at the end.
        b, s = alphas.shape
        xt = x.t()
        z, zu = _chain_t(self.encoder, xt), _chain_t(self.encoder_u, xt)  # [d, B], [d_u, B]
        p = self.w_z @ z + self.w_u @ zu + self.b  # [H, B]
        q = self.w_z @ (target.t() - z)
        h = p[:, None, :] + q[:, None, :] * alphas.t()[None]  # [H, S, B]
        out = _chain_t(self.layers, h.reshape(h.shape[0], s * b))
        lo_t = None if lower is None else lower.t()[:, None, :]  # [F, 1, B]
        up_t = None if upper is None else upper.t()[:, None, :]
        cont = torch.sigmoid(out[: self.n]).reshape(self.n, s, b)
        cont = self.numeric(
            cont,
            xt[: self.n][:, None, :],
            None if lo_t is None else lo_t[: self.n],
            None if up_t is None else up_t[: self.n],
        )
        cont = cont.reshape(self.n, s * b)
        blocks, codes = [], []
        offset = self.n
        cat_up = None
        if lo_t is not None and up_t is not None:
            cat_up = up_t[self.n :]
            mask = self.numeric.category_mask(lo_t[: self.n], up_t[: self.n], cat_up.shape[0])
            cat_up = cat_up if mask is None else cat_up * mask
        for k in self.cat_sizes:
            lg = out[offset : offset + k]
            if cat_up is not None:
                lg = (
                    lg.reshape(k, s, b)
                    - 1e9 * (1.0 - cat_up[offset - self.n : offset - self.n + k])
                ).reshape(k, s * b)
            top = lg[0:1]
            for j in range(1, k):
                top = torch.maximum(top, lg[j : j + 1])
            hit = (lg == top).to(torch.float32)
            one_hot = hit * (torch.cumsum(hit, dim=0) == 1).to(torch.float32)  # first maximum
            blocks.append(one_hot)
            codes.append(self.index[:, :k] @ one_hot)
            offset += k
        if blocks:
            cont = self.numeric.follow(cont, torch.cat(blocks, dim=0))
        blocks, codes = [cont, *blocks], [cont, *codes]
        code = torch.cat(codes, dim=0)
        code = code.reshape(code.shape[0], s, b).permute(2, 1, 0).reshape(b * s, -1)
        row = torch.cat(blocks, dim=0)  # [F, S*B]
        if self.clf is None:
            return code, row.reshape(row.shape[0], s, b).permute(2, 1, 0).reshape(b * s, -1)
        score = torch.sigmoid(_chain_t(self.clf, row)).reshape(s, b)
        return code, score.t().reshape(-1)


class ColumnSearchPlain(ColumnSearch):
    def forward(
        self, x: torch.Tensor, alphas: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(x, alphas, target, None, None)


class ColumnSearchBounded(ColumnSearch):
    def forward(
        self,
        x: torch.Tensor,
        alphas: torch.Tensor,
        target: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(x, alphas, target, lower, upper)


class Reconstruct(nn.Module):
    def __init__(self, model: GMCF) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        xr = m.decoder(torch.cat([m.encoder(x), m.encoder_u(x)], dim=1))
        return ((x - xr) ** 2).mean(dim=1)


class _Decoder(nn.Module):
    def __init__(self, model: GMCF) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, z: torch.Tensor, zu: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, zu], dim=1))


def to_onnx(
    module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str]
) -> onnx.ModelProto:
    """Trace ``module`` to an ONNX model with dynamic leading dimensions and the pinned opset."""
    dyn: dict[str, dict[int, str]] = {
        name: ({0: "batch", 1: "steps"} if name == "alphas" else {0: "batch"}) for name in inputs
    }
    dyn.update({name: {0: "n"} for name in outputs})
    buf = io.BytesIO()
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            buf,  # type: ignore[arg-type]  # a file object works; the stub says path only
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dyn,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return model


def export_classifier(clf: nn.Module, width: int) -> onnx.ModelProto:
    return to_onnx(clf, (torch.zeros(4, width),), ["x"], ["score"])


def adapt_classifier(model: onnx.ModelProto, width: int) -> onnx.ModelProto:
    """Bring a user's ONNX classifier to the bundle's contract: input ``x`` [N, width] float32,
    output ``score`` [N], the probability of the positive class.

    Accepted outputs: the first float output shaped [N], [N, 1] (a probability) or [N, 2]
    (class probabilities; column 1 is taken).
    """
    import onnxruntime as ort

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"classifier: not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise InputError(f"classifier: expected one input, found {len(graph_inputs)}")
    inp = graph_inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 2:
        raise InputError(
            f"classifier: input {inp.name!r} must be 2-D [rows, {width}], has {len(dims)} dims"
        )
    if dims[1].HasField("dim_value") and dims[1].dim_value != width:
        raise InputError(
            f"classifier: input {inp.name!r} has {dims[1].dim_value} features, but the "
            f"preprocessed data has {width}"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if opset != OPSET:
        model = onnx.version_converter.convert_version(model, OPSET)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).random((3, width), dtype=np.float32)
    try:
        outs = sess.run(None, {inp.name: probe})
    except Exception as exc:
        raise InputError(
            f"classifier: fails on a [3, {width}] float32 input: {str(exc).splitlines()[0]}"
        ) from exc
    chosen = None
    for meta, val in zip(sess.get_outputs(), outs, strict=True):
        arr = np.asarray(val)
        if arr.dtype.kind == "f" and arr.shape in ((3,), (3, 1), (3, 2)):
            chosen = (meta.name, arr.shape)
            break
    if chosen is None:
        shapes = ", ".join(
            f"{m.name} {np.asarray(v).shape}" for m, v in zip(sess.get_outputs(), outs, strict=True)
        )
        raise InputError(
            f"classifier: no float output shaped [N], [N, 1] or [N, 2] (found: {shapes})"
        )
    name, shape = chosen
    # The user's names are prefixed, so that none can collide with ours ("x", "score", ...).
    user = onnx.compose.add_prefix(model, "u_")
    nodes = [oh.make_node("Identity", ["x"], ["u_" + inp.name])]
    if shape == (3, 2):
        nodes.append(oh.make_node("Gather", ["u_" + name, "score_col"], ["score"], axis=1))
        inits_new = [oh.make_tensor("score_col", onnx.TensorProto.INT64, [], [1])]
    else:
        nodes.append(oh.make_node("Reshape", ["u_" + name, "score_flat"], ["score"]))
        inits_new = [oh.make_tensor("score_flat", onnx.TensorProto.INT64, [1], [-1])]
    g = user.graph
    new_graph = oh.make_graph(
        [nodes[0], *g.node, nodes[1]],
        "classifier",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width])],
        [oh.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["n"])],
        initializer=[*g.initializer, *inits_new],
    )
    out = oh.make_model(new_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    out.functions.extend(user.functions)
    onnx.checker.check_model(out)
    return out


def fuse_search(front: onnx.ModelProto, classifier: onnx.ModelProto) -> onnx.ModelProto:
    """search.onnx = classifier(rows of front(x, alphas)), keeping the candidates' code."""
    clf = onnx.compose.add_prefix(classifier, "f_")
    clf.ir_version = front.ir_version
    fused = onnx.compose.merge_models(
        front, clf, io_map=[("rows", "f_x")], outputs=["code", "f_score"]
    )
    # Rename the classifier's output to the contract's name.
    for node in fused.graph.node:
        node.output[:] = ["score" if o == "f_score" else o for o in node.output]
    for o in fused.graph.output:
        if o.name == "f_score":
            o.name = "score"
    onnx.checker.check_model(fused)
    return fused


def export_graphs(
    model: GMCF,
    pre: Preprocessor,
    classifier: onnx.ModelProto,
    torch_classifier: nn.Module | None = None,
    layout: str = "auto",
) -> dict[str, onnx.ModelProto]:
    """Every graph of the bundle contract.

    The search graphs use the column layout when the networks allow it (``column_ready``), else
    the row layout (``layout`` = "columns" or "rows" forces one). ``torch_classifier``, when it is
    the module that ``classifier`` was exported from and a plain MLP, is built into column-layout
    search graphs directly; otherwise the ONNX classifier is fused after them."""
    width = pre.width
    d, du = model.mu.shape[1], model.latent_u_dim
    x = torch.rand(5, width)
    walk = (x, torch.rand(5, 4), torch.rand(5, d))
    bounds = (torch.zeros(5, width), torch.ones(5, width))
    if layout not in ("auto", "columns", "rows"):
        raise ValueError(f"layout must be auto, columns or rows, got {layout!r}")
    columns = column_ready(model) if layout == "auto" else layout == "columns"
    clf = transposable_classifier(torch_classifier) if columns else None
    last = "score" if clf is not None else "rows"
    plain_module: nn.Module = (
        ColumnSearchPlain(model, pre, clf) if columns else RowSearchPlain(model, pre)
    )
    bounded_module: nn.Module = (
        ColumnSearchBounded(model, pre, clf) if columns else RowSearchBounded(model, pre)
    )
    plain = to_onnx(plain_module, walk, ["x", "alphas", "target"], ["code", last])
    bounded = to_onnx(
        bounded_module,
        (*walk, *bounds),
        ["x", "alphas", "target", "lower", "upper"],
        ["code", last],
    )
    if clf is None:
        plain, bounded = fuse_search(plain, classifier), fuse_search(bounded, classifier)
    return {
        "encoder": to_onnx(model.encoder, (x,), ["x"], ["z"]),
        "encoder_u": to_onnx(model.encoder_u, (x,), ["x"], ["z_u"]),
        "decoder": to_onnx(
            _Decoder(model), (torch.rand(5, d), torch.rand(5, du)), ["z", "z_u"], ["x_soft"]
        ),
        "classifier": classifier,
        "search": plain,
        "search_bounded": bounded,
        "reconstruct": to_onnx(Reconstruct(model), (x,), ["x"], ["error"]),
    }


def save(models: dict[str, onnx.ModelProto], folder: Path) -> dict[str, str]:
    files = {}
    for name, m in models.items():
        fname = f"{name}.onnx"
        (folder / fname).write_bytes(m.SerializeToString())
        files[name] = fname
    return files
