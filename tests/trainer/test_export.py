"""Export parity: every ONNX graph of a bundle against the torch modules it was exported from."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from gmcf.datasets import Dataset, load_dataset  # noqa: E402
from gmcf.runtime.bundle import GRAPHS, OPSET  # noqa: E402
from gmcf.runtime.errors import InputError  # noqa: E402
from gmcf.trainer.export import (  # noqa: E402
    HardDecode,
    SearchFront,
    adapt_classifier,
    export_classifier,
    export_graphs,
)
from gmcf.trainer.fit import TrainConfig, fit_gmcf, train_classifier  # noqa: E402
from gmcf.trainer.model import GMCF, ReferenceClassifier  # noqa: E402
from gmcf.trainer.prepare import Prepared, prepare  # noqa: E402

TOL = 1e-5


@dataclass
class Trained:
    model: GMCF
    clf: ReferenceClassifier
    p: Prepared
    graphs: dict[str, Any]


def session(model: Any) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: Any, **feeds: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(o) for o in session(model).run(None, feeds)]


def search_feeds(
    m: Any, x: np.ndarray, alphas: np.ndarray, bounded: bool = False
) -> dict[str, np.ndarray]:
    """Inputs of a search graph for the paper's unconstrained walk toward mu_1."""
    target = np.broadcast_to(m.mu[1].detach().numpy(), (len(x), m.mu.shape[1])).copy()
    feeds = {"x": x, "alphas": alphas, "target": target}
    if bounded:
        feeds.update(lower=np.zeros_like(x), upper=np.ones_like(x))
    return feeds


def search_rows(graph: Any, pre: Any, **feeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a search graph; its candidates' compact code expanded to model-space rows."""
    code, score = run(graph, **feeds)
    assert code.shape == (score.shape[0], pre.code_width)
    return pre.expand_code(code), score


def front_of(m: Any, pre: Any, x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    feeds = search_feeds(m, x, alphas, bounded=True)
    return SearchFront(m, pre)(
        *[t(feeds[k]) for k in ("x", "alphas", "target", "lower", "upper")]
    ).numpy()


def test_plain_and_bounded_search_agree_without_constraints(trained: Trained) -> None:
    x = trained.p.x_test
    alphas = alphas_for(len(x), 4)
    plain = run(trained.graphs["search"], **search_feeds(trained.model, x, alphas))
    bounded = run(
        trained.graphs["search_bounded"], **search_feeds(trained.model, x, alphas, bounded=True)
    )
    np.testing.assert_array_equal(plain[0], bounded[0])
    np.testing.assert_allclose(plain[1], bounded[1], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A tiny GMCF: 500 real Adult rows, 1 epoch; and a reference classifier f."""
    torch.set_num_threads(1)
    ds = load_dataset("adult")
    small = Dataset("adult-500", ds.table.take(pa.array(range(1, 25000, 50))), ds.schema)
    p = prepare(small, 0.2, 0)
    cfg = TrainConfig(epochs=1, classifier_epochs=20, classifier_restarts=1)
    clf = train_classifier(p.x_train, p.y_train, cfg)
    model, _ = fit_gmcf(p.x_train, p.y_train, p.pre.n_numeric, p.pre.cat_sizes, cfg)
    graphs = export_graphs(model, p.pre, export_classifier(clf, p.pre.width), clf)
    return Trained(model, clf, p, graphs)


@pytest.fixture(scope="module")
def x(trained: Trained) -> np.ndarray:
    """Real held-out rows (more than the 5 rows the graphs were traced with) plus random ones."""
    rnd = np.random.default_rng(0).random((7, trained.p.pre.width), dtype=np.float32)
    return np.concatenate([trained.p.x_test, rnd]).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def max_diff(a: np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_export_writes_every_graph_of_the_contract(trained: Trained) -> None:
    assert set(trained.graphs) == set(GRAPHS)
    for name, (inputs, outputs) in GRAPHS.items():
        g = trained.graphs[name].graph
        inits = {i.name for i in g.initializer}
        assert tuple(i.name for i in g.input if i.name not in inits) == inputs, name
        assert tuple(o.name for o in g.output) == outputs, name


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_every_graph_has_the_pinned_opset(trained: Trained, name: str) -> None:
    model = trained.graphs[name]
    onnx.checker.check_model(model)
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    # (onnx.compose.merge_models lists the default domain once per merged model: search.onnx
    # carries it twice, both times at the pinned version.)
    assert default and set(default) == {OPSET}


def test_encoders_match_torch(trained: Trained, x: np.ndarray) -> None:
    m = trained.model
    with torch.no_grad():
        (z,) = run(trained.graphs["encoder"], x=x)
        (zu,) = run(trained.graphs["encoder_u"], x=x)
        assert max_diff(z, m.encoder(t(x))) < TOL
        assert max_diff(zu, m.encoder_u(t(x))) < TOL
    assert z.shape == (len(x), m.mu.shape[1])


def test_decoder_matches_torch(trained: Trained) -> None:
    m = trained.model
    rng = np.random.default_rng(1)
    z = rng.normal(size=(11, m.mu.shape[1])).astype(np.float32)
    zu = rng.normal(size=(11, m.encoder_u[-1].out_features)).astype(np.float32)
    (x_soft,) = run(trained.graphs["decoder"], z=z, z_u=zu)
    with torch.no_grad():
        want = m.decoder(torch.cat([t(z), t(zu)], dim=1))
    assert max_diff(x_soft, want) < TOL
    # Soft decoding: continuous values in [0, 1], each categorical block a distribution.
    n = trained.p.pre.n_numeric
    assert (x_soft[:, :n] >= 0).all() and (x_soft[:, :n] <= 1).all()
    np.testing.assert_allclose(x_soft[:, n:].sum(1), 1.0, rtol=1e-5)


def test_classifier_matches_torch(trained: Trained, x: np.ndarray) -> None:
    (score,) = run(trained.graphs["classifier"], x=x)
    with torch.no_grad():
        assert max_diff(score, trained.clf(t(x))) < TOL
    assert score.shape == (len(x),)
    assert score.std() > 1e-3  # f is not constant on these rows


def test_reconstruct_matches_torch(trained: Trained, x: np.ndarray) -> None:
    m = trained.model
    (err,) = run(trained.graphs["reconstruct"], x=x)
    with torch.no_grad():
        xr = m.decoder(torch.cat([m.encoder(t(x)), m.encoder_u(t(x))], dim=1))
        want = ((t(x) - xr) ** 2).mean(dim=1)
    assert max_diff(err, want) < TOL


def alphas_for(n: int, steps: int) -> np.ndarray:
    return np.random.default_rng(2).uniform(0.05, 2.0, size=(n, steps)).astype(np.float32)


def test_search_matches_searchfront_then_classifier(trained: Trained, x: np.ndarray) -> None:
    alphas = alphas_for(len(x), 6)
    rows, score = search_rows(
        trained.graphs["search"], trained.p.pre, **search_feeds(trained.model, x, alphas)
    )
    with torch.no_grad():
        want_rows = front_of(trained.model, trained.p.pre, x, alphas)
        want_score = trained.clf(t(want_rows)).numpy()
        score_of_rows = trained.clf(t(rows)).numpy()
    assert rows.shape == want_rows.shape and score.shape == (rows.shape[0],)
    # Hard decoding rounds integer features, so a 1e-7 difference before rounding can move a
    # value by one step of its grid (1/span, e.g. one dollar of capital-gain). Every cell agrees
    # within TOL or differs by exactly one grid step of an integer feature, on few cells.
    pre = trained.p.pre
    lo, hi = pre.lo_hi()
    step = np.concatenate(
        [
            np.where(pre.integer_mask(), 1.0 / np.where(hi > lo, hi - lo, 1.0), 0.0),
            np.zeros(sum(pre.cat_sizes)),
        ]
    )
    diff = np.abs(rows - want_rows)
    off = diff > TOL
    assert off.sum() <= 0.01 * rows.shape[0], off.sum()
    cols = np.nonzero(off)[1]
    np.testing.assert_allclose(diff[off], step[cols], rtol=0, atol=1e-7)  # float32 rows ~ 0.5
    assert (step[cols] > 0).all()  # never a categorical block or a continuous feature
    # The fused classifier scores exactly the rows the graph returns ...
    assert max_diff(score, score_of_rows) < TOL
    # ... which are, up to those one-step flips, the rows torch decodes.
    assert max_diff(score, want_score) < 1e-4


def test_searchfront_is_algorithm_2(trained: Trained, x: np.ndarray) -> None:
    """SearchFront's folded first layer equals decoding z_s = (1 - a) z + a mu_1 with z_u kept."""
    m, pre = trained.model, trained.p.pre
    b, s = 20, 5
    xq = x[:b]
    alphas = alphas_for(b, s)
    with torch.no_grad():
        z, zu = m.encoder(t(xq)), m.encoder_u(t(xq))
        a = t(alphas)[:, :, None]
        zs = ((1 - a) * z[:, None, :] + a * m.mu[1]).reshape(b * s, -1)
        zus = zu[:, None, :].expand(b, s, zu.shape[1]).reshape(b * s, -1)
        cont, logits = m.decoder.raw(m.decoder.body(torch.cat([zs, zus], dim=1)))
        soft = m.decoder(torch.cat([zs, zus], dim=1))
        xs = t(np.repeat(xq, s, axis=0))  # each candidate's query: the band widens to its values
        naive = HardDecode(pre)(
            cont, logits, torch.zeros(pre.width), torch.ones(pre.width), xs
        ).numpy()
        front = front_of(m, pre, xq, alphas)
    # The search graph may put the queries first (B + B*S rows) or only the candidates (B*S).
    assert front.shape[0] in (b * s, b + b * s)
    cand = front[-b * s :]
    if front.shape[0] == b + b * s:
        np.testing.assert_array_equal(front[:b], xq)
    # Hard decoding: integers on the training grid, categorical blocks one-hot at the soft argmax.
    n = pre.n_numeric
    raw = pre.raw_values(cand)
    is_int = pre.integer_mask()
    np.testing.assert_allclose(raw[:, is_int], np.round(raw[:, is_int]), atol=1e-3)
    assert ((cand[:, :n] >= 0) & (cand[:, :n] <= 1)).all()
    np.testing.assert_array_equal(cand[:, n:].sum(1), 1.0)
    np.testing.assert_array_equal(cand[:, n:].argmax(1), soft[:, n:].numpy().argmax(1))
    # Same rows as the naive interpolation; a float32 rounding difference can only flip an
    # integer feature by one grid step, which we allow on at most a few cells.
    diff = np.abs(cand - naive)
    assert (diff > TOL).sum() <= 2, diff.max()


def _user_classifier(module: torch.nn.Module, width: int, opset: int = OPSET) -> Any:
    buf = io.BytesIO()
    module.eval()
    torch.onnx.export(
        module,
        (torch.zeros(2, width),),
        buf,
        input_names=["features"],
        output_names=["probs"],
        dynamic_axes={"features": {0: "n"}, "probs": {0: "n"}},
        opset_version=opset,
        dynamo=False,
    )
    return onnx.load_from_string(buf.getvalue())


class SoftmaxTwo(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.lin(x), dim=1)


class SigmoidOne(torch.nn.Module):
    def __init__(self, width: int, squeeze: bool = False) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(width, 1)
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(self.lin(x))
        return out.squeeze(1) if self.squeeze else out


@pytest.mark.parametrize("opset", [OPSET, 13])
def test_adapt_classifier_takes_column_1_of_two_class_probabilities(
    trained: Trained, x: np.ndarray, opset: int
) -> None:
    width = trained.p.pre.width
    torch.manual_seed(0)
    user = SoftmaxTwo(width)
    adapted = adapt_classifier(_user_classifier(user, width, opset), width)
    assert [i.name for i in adapted.graph.input] == ["x"]
    assert [o.name for o in adapted.graph.output] == ["score"]
    assert [o.version for o in adapted.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    (score,) = run(adapted, x=x)
    with torch.no_grad():
        probs = user(t(x))
    assert max_diff(score, probs[:, 1]) < TOL
    assert max_diff(score, 1 - probs[:, 0]) < 1e-5


@pytest.mark.parametrize("squeeze", [False, True], ids=["N-1", "N"])
def test_adapt_classifier_takes_a_single_probability(
    trained: Trained, x: np.ndarray, squeeze: bool
) -> None:
    width = trained.p.pre.width
    torch.manual_seed(0)
    user = SigmoidOne(width, squeeze)
    adapted = adapt_classifier(_user_classifier(user, width), width)
    (score,) = run(adapted, x=x)
    with torch.no_grad():
        assert max_diff(score, user(t(x)).reshape(-1)) < TOL


def test_a_user_classifier_fuses_into_the_search_graph(trained: Trained, x: np.ndarray) -> None:
    width = trained.p.pre.width
    torch.manual_seed(0)
    user = SoftmaxTwo(width)
    graphs = export_graphs(
        trained.model, trained.p.pre, adapt_classifier(_user_classifier(user, width), width)
    )
    alphas = alphas_for(len(x), 3)
    rows, score = search_rows(
        graphs["search"], trained.p.pre, **search_feeds(trained.model, x, alphas)
    )
    with torch.no_grad():
        assert max_diff(score, user(t(rows))[:, 1]) < TOL


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (torch.nn.Sequential(torch.nn.Linear(5, 1), torch.nn.Sigmoid()), "has 5 features"),
        (None, "no float output shaped"),
    ],
    ids=["width", "output"],
)
def test_adapt_classifier_rejects_a_misfit(trained: Trained, module: Any, match: str) -> None:
    width = trained.p.pre.width
    if module is None:
        module = torch.nn.Sequential(torch.nn.Linear(width, 3), torch.nn.Softmax(dim=1))
        onnx_model = _user_classifier(module, width)
    else:
        onnx_model = _user_classifier(module, 5)
    with pytest.raises(InputError, match=match):
        adapt_classifier(onnx_model, width)


def test_row_and_column_layouts_agree(trained: Trained, x: np.ndarray) -> None:
    """The row layout (for networks the column layout cannot run, e.g. convolutions) returns the
    same codes and scores as the column layout, with and without bounds."""
    pre = trained.p.pre
    rows_graphs = export_graphs(
        trained.model, pre, export_classifier(trained.clf, pre.width), layout="rows"
    )
    alphas = alphas_for(len(x), 5)
    lower, upper = np.zeros_like(x), np.ones_like(x)
    lower[:, 0], upper[:, 0] = 0.3, 0.6  # a numeric window
    upper[:, pre.n_numeric + 1] = 0.0  # a category the rows may not take
    for name, bounded in (("search", False), ("search_bounded", True)):
        feeds = search_feeds(trained.model, x, alphas, bounded)
        if bounded:
            feeds.update(lower=lower, upper=upper)
        code_c, score_c = run(trained.graphs[name], **feeds)
        code_r, score_r = run(rows_graphs[name], **feeds)
        # as in the torch comparison: an integer may land one grid step apart on a few cells
        off = np.abs(code_c - code_r) > TOL
        assert off.sum() <= 0.01 * len(code_c), off.sum()
        assert not off[:, pre.n_numeric :].any()  # categories agree exactly
        assert max_diff(score_c[~off.any(axis=1)], score_r[~off.any(axis=1)]) < 1e-4


def test_search_bounds_hold_on_every_candidate(trained: Trained) -> None:
    """lower/upper keep the returned rows in bounds: pinning a row to the query (lower = upper =
    x, one-hot upper = the query's category) returns the query itself at every alpha."""
    x = trained.p.x_test
    feeds = search_feeds(trained.model, x, alphas_for(len(x), 4), bounded=True)
    feeds["lower"], feeds["upper"] = x.copy(), x.copy()
    rows, _ = search_rows(trained.graphs["search_bounded"], trained.p.pre, **feeds)
    np.testing.assert_array_equal(rows, np.repeat(x, 4, axis=0))
    # A numeric window: every numeric value lands inside it.
    n = trained.p.pre.n_numeric
    lower, upper = np.zeros_like(x), np.ones_like(x)
    lower[:, :n], upper[:, :n] = 0.2, 0.4
    feeds["lower"], feeds["upper"] = lower, upper
    rows, _ = search_rows(trained.graphs["search_bounded"], trained.p.pre, **feeds)
    assert (rows[:, :n] >= 0.2 - 1e-6).all() and (rows[:, :n] <= 0.4 + 1e-6).all()
