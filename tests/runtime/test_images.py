"""Images: the MNIST 1 -> 7 bundle, the image column of the Parquet contract, its bad inputs,
and export parity of the convolutional graphs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import adult_queries, assert_clean_failure, invoke

from gmcf.datasets import heldout_base_rows, load_dataset
from gmcf.runtime import Explainer
from gmcf.runtime.errors import ConstraintError, InputError, SchemaError
from gmcf.runtime.schema import DataSchema, ImagePreprocessor, Preprocessor, usable_rows

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "exported" / "mnist-1-to-7"
N = 12


@pytest.fixture(scope="module")
def mnist() -> pa.Table:
    """N held-out test-set 1s (uint8 pixels, as shipped) with their row numbers as ``id``."""
    ds = load_dataset("mnist-1-to-7")
    rows = heldout_base_rows(ds)[:N]
    return ds.table.take(pa.array(rows)).drop_columns(["digit"]).append_column("id", pa.array(rows))


@pytest.fixture(scope="module")
def pre() -> ImagePreprocessor:
    p = Preprocessor.from_dict(Explainer.from_bundle(MNIST).bundle.manifest.preprocessing.to_dict())
    assert isinstance(p, ImagePreprocessor)
    return p


def as_float_lists(table: pa.Table, values: np.ndarray, fixed: bool = True) -> pa.Table:
    """``table`` with its pixels replaced by ``values`` [n, 784] as float32 lists."""
    flat = pa.array(values.reshape(-1).astype(np.float32))
    col = (
        pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        if fixed
        else pa.ListArray.from_arrays(
            pa.array(np.arange(0, len(flat) + 1, values.shape[1], dtype=np.int32)), flat
        )
    )
    return table.set_column(0, "pixels", col)


def pixels_of(table: pa.Table) -> np.ndarray:
    col = table.column("pixels").combine_chunks()
    return np.asarray(col.values.to_numpy(zero_copy_only=False), np.float64).reshape(len(col), -1)


# -- schema ----------------------------------------------------------------------------------------
def test_image_schema_round_trips_and_reads_every_documented_form(
    mnist: pa.Table, pre: ImagePreprocessor
) -> None:
    assert pre.width == 784 and pre.image.shape == (28, 28)
    assert Preprocessor.from_dict(pre.to_dict()).to_dict() == pre.to_dict()
    raw = pixels_of(mnist)
    assert raw.max() == 255  # the shipped table holds 8-bit pixels
    x8, r8 = pre.transform(mnist)
    xf, rf = pre.transform(as_float_lists(mnist, raw / 255.0))
    xl, rl = pre.transform(as_float_lists(mnist, raw / 255.0, fixed=False))
    assert usable_rows(r8).all() and usable_rows(rf).all() and usable_rows(rl).all()
    np.testing.assert_allclose(x8, raw / 255.0, atol=1e-7)
    np.testing.assert_array_equal(x8, xf)
    np.testing.assert_array_equal(xf, xl)
    back = pre.inverse(xf)["pixels"]
    assert back.type == pa.list_(pa.float32(), 784)
    np.testing.assert_array_equal(pixels_of(pa.table({"pixels": back})), xf)
    # hard decoding of an image clips to [0, 1] and does not round
    soft = np.random.default_rng(0).uniform(-0.2, 1.2, (3, 784)).astype(np.float32)
    clipped = pixels_of(pa.table({"pixels": pre.inverse(soft)["pixels"]}))
    np.testing.assert_array_equal(clipped, np.clip(soft, 0.0, 1.0))


def test_image_schema_declaration_errors() -> None:
    image = {"name": "pixels", "kind": "image", "shape": [28, 28]}
    assert (
        DataSchema.from_dict({"features": [image], "label": "y", "positive_class": "7"})
        .features[0]
        .size
        == 784
    )
    with pytest.raises(SchemaError, match="only feature"):
        DataSchema.from_dict(
            {
                "features": [image, {"name": "age", "kind": "integer"}],
                "label": "y",
                "positive_class": "1",
            }
        )
    with pytest.raises(SchemaError, match="shape of positive integers"):
        DataSchema.from_dict(
            {"features": [{"name": "pixels", "kind": "image"}], "label": "y", "positive_class": "1"}
        )
    with pytest.raises(SchemaError, match="list form"):
        DataSchema.from_dict(
            {"features": {"image": ["pixels"]}, "label": "y", "positive_class": "1"}
        )


# -- the committed bundle --------------------------------------------------------------------------
def test_committed_bundle_turns_held_out_ones_into_sevens(mnist: pa.Table) -> None:
    ex = Explainer.from_bundle(MNIST)
    out = ex.explain(mnist, id_column="id")
    assert out.column("id").to_pylist() == mnist.column("id").to_pylist()
    status = out.column("status").cast(pa.string()).to_pylist()
    assert set(status) <= {"found", "not_found", "already_target"}
    found = np.array([s == "found" for s in status])
    assert found.sum() >= 0.8 * N, status
    assert out.schema.field("cf_pixels").type == pa.list_(pa.float32(), 784)
    assert out.schema.field("pixels").type == pa.list_(pa.float32(), 784)
    np.testing.assert_allclose(
        pixels_of(out.select(["pixels"])), pixels_of(mnist) / 255.0, atol=1e-7
    )
    cf_col = out.column("cf_pixels").combine_chunks()
    assert cf_col.null_count == N - found.sum()
    cf = pixels_of(pa.table({"pixels": cf_col.filter(pa.array(found))}))
    assert cf.shape == (found.sum(), 784) and cf.min() >= 0.0 and cf.max() <= 1.0
    # f scores the returned image (not a soft decoding) at or above the threshold, within tol
    score = ex.engine.score(cf.astype(np.float32))
    t = ex.settings.threshold
    assert (score >= t).all() and (score < t + ex.settings.tol).all()
    np.testing.assert_allclose(
        score, out.column("cf_score").filter(pa.array(found)).to_numpy(), atol=1e-6
    )
    queries = pixels_of(mnist)[found] / 255.0
    l2 = np.sqrt(((cf - queries) ** 2).sum(axis=1))
    np.testing.assert_allclose(
        out.column("proximity_l2").filter(pa.array(found)).to_numpy(), l2, rtol=1e-4
    )


def test_sample_writes_held_out_ones_that_explain(tmp_path: Path) -> None:
    q, o = tmp_path / "q.parquet", tmp_path / "o.parquet"
    code, stdout, _ = invoke("sample", str(q), "--dataset", "mnist-1-to-7", "--rows", "6")
    assert code == 0, stdout
    table = pq.read_table(q)
    assert table.schema.field("pixels").type == pa.list_(pa.float32(), 784)
    ds = load_dataset("mnist-1-to-7")
    assert set(table.column("id").to_pylist()) <= set(heldout_base_rows(ds).tolist())
    code, stdout, stderr = invoke(
        "explain", str(q), "-o", str(o), "--bundle", str(MNIST), "--id-column", "id"
    )
    assert code == 0, stderr
    assert "6 rows" in stdout and pq.read_table(o).num_rows == 6


# -- bad input -------------------------------------------------------------------------------------
def test_rows_with_bad_pixels_are_invalid_and_the_rest_explained(
    mnist: pa.Table, tmp_path: Path
) -> None:
    good = pixels_of(mnist) / 255.0
    lists = [list(r) for r in good]
    lists[1] = lists[1][:700]  # wrong length
    lists[2] = None  # no image
    lists[3][5] = 1.5  # outside the scale
    lists[4][7] = float("nan")
    table = mnist.set_column(0, "pixels", pa.array(lists, pa.list_(pa.float32())))
    src, dst = tmp_path / "q.parquet", tmp_path / "o.parquet"
    pq.write_table(table, src)
    code, _, stderr = invoke(
        "explain", str(src), "-o", str(dst), "--bundle", str(MNIST), "--id-column", "id"
    )
    assert code == 0, stderr
    out = pq.read_table(dst)
    assert out.column("id").to_pylist() == mnist.column("id").to_pylist()
    status = out.column("status").cast(pa.string()).to_pylist()
    reason = out.column("reason").to_pylist()
    assert status[1:5] == ["invalid"] * 4
    assert reason[1] == "pixels: 700 pixel values, expected 784"
    assert reason[2] == "pixels: missing image"
    assert reason[3] == "pixels: pixel values outside the scale 0..1"
    assert reason[4] == "pixels: missing or non-finite pixel value"
    assert "invalid" not in status[:1] + status[5:]
    echo = out.column("pixels")
    assert (
        echo[1].as_py() is None
        and echo[2].as_py() is None
        and echo[3].as_py()[5] == pytest.approx(1.5)
    )


def test_8_bit_pixels_outside_0_255_are_invalid(mnist: pa.Table, pre: ImagePreprocessor) -> None:
    values = pixels_of(mnist).astype(np.int16)
    values[0, 3] = 300
    flat = pa.array(values.reshape(-1))
    x, reason = pre.transform(
        mnist.set_column(0, "pixels", pa.FixedSizeListArray.from_arrays(flat, 784))
    )
    assert reason[0] == "pixels: pixel values outside the scale 0..255 (8-bit integers)"
    assert usable_rows(reason)[1:].all() and (x[0] == 0).all()


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (
            pa.array([[0.5] * 100] * N, pa.list_(pa.float32(), 100)),
            ["'pixels'", "fixed-size lists of 100 values", "784"],
        ),
        (pa.array(["x"] * N), ["'pixels'", "expected a list of 784 pixels", "got string"]),
        (pa.array([0.5] * N), ["'pixels'", "got double"]),
        (
            pa.array([["a"] * 784] * N, pa.list_(pa.string())),
            ["'pixels'", "pixel values must be numbers"],
        ),
    ],
    ids=["fixed-size-100", "string", "scalar", "list-of-strings"],
)
def test_a_pixel_column_of_the_wrong_type_stops_the_run(
    mnist: pa.Table, tmp_path: Path, column: pa.Array, words: list[str]
) -> None:
    src, out_dir = tmp_path / "q.parquet", tmp_path / "out"
    out_dir.mkdir()
    pq.write_table(mnist.set_column(0, "pixels", column), src)
    code, stdout, stderr = invoke(
        "explain", str(src), "-o", str(out_dir / "o.parquet"), "--bundle", str(MNIST)
    )
    assert_clean_failure(code, stdout, stderr, out_dir, *words)


def test_tabular_input_to_an_image_bundle_and_the_reverse(
    mnist: pa.Table, adult_bundle: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    adult, images = tmp_path / "adult.parquet", tmp_path / "images.parquet"
    pq.write_table(adult_queries(5), adult)
    pq.write_table(mnist, images)
    code, stdout, stderr = invoke(
        "explain", str(adult), "-o", str(out_dir / "o.parquet"), "--bundle", str(MNIST)
    )
    assert_clean_failure(code, stdout, stderr, out_dir, "image column 'pixels'", "'age'")
    code, stdout, stderr = invoke(
        "explain", str(images), "-o", str(out_dir / "o.parquet"), "--bundle", str(adult_bundle)
    )
    assert_clean_failure(code, stdout, stderr, out_dir, "'age'", "looks like images")


def test_constraints_are_refused_for_an_image_bundle() -> None:
    with pytest.raises(ConstraintError, match="not supported for image bundles"):
        Explainer.from_bundle(MNIST, constraints={"pixels": {"immutable": True}})


def test_image_input_without_the_pixel_column_is_an_input_error(pre: ImagePreprocessor) -> None:
    with pytest.raises(InputError, match="lacks the image column 'pixels'"):
        pre.check_columns(pa.schema([("image", pa.list_(pa.float32(), 784))]))


# -- export parity ---------------------------------------------------------------------------------
def test_image_graphs_match_torch() -> None:
    """A tiny convolutional GMCF (400 real images, 1 epoch): every graph against torch."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from gmcf.trainer.export import PlainSearchFront, export_classifier, export_graphs
    from gmcf.trainer.fit import TrainConfig, fit_gmcf
    from gmcf.trainer.images import mnist_config
    from gmcf.trainer.model import ReferenceClassifier
    from gmcf.trainer.pipeline import networks_for

    torch.set_num_threads(1)
    ds = load_dataset("mnist-1-to-7")
    rows = np.random.default_rng(0).choice(ds.table.num_rows, 400, replace=False)
    pre = Preprocessor.fit(ds.table, ds.schema.features)
    x, _ = pre.transform(ds.table.take(pa.array(rows)))
    y = (ds.table.column("digit").to_numpy()[rows] == 7).astype(np.int64)
    cfg = replace(mnist_config(TrainConfig()), epochs=1, select_every=0)
    model, _ = fit_gmcf(x, y, pre.n_numeric, pre.cat_sizes, cfg, networks=networks_for(pre, cfg))
    clf = ReferenceClassifier(784, cfg.classifier_hidden).eval()
    graphs = export_graphs(model, pre, export_classifier(clf, 784))

    def run(name: str, **feeds: np.ndarray) -> list[np.ndarray]:
        sess = ort.InferenceSession(
            graphs[name].SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return [np.asarray(o) for o in sess.run(None, feeds)]

    q = x[:6]
    with torch.no_grad():
        xt = torch.from_numpy(q)
        z, zu = model.encoder(xt), model.encoder_u(xt)
        np.testing.assert_allclose(run("encoder", x=q)[0], z.numpy(), atol=1e-4)
        np.testing.assert_allclose(run("encoder_u", x=q)[0], zu.numpy(), atol=1e-4)
        dec = model.decoder(torch.cat([z, zu], 1)).numpy()
        np.testing.assert_allclose(run("decoder", z=z.numpy(), z_u=zu.numpy())[0], dec, atol=1e-5)
        np.testing.assert_allclose(run("classifier", x=q)[0], clf(xt).numpy(), atol=1e-5)
        np.testing.assert_allclose(run("reconstruct", x=q)[0], ((dec - q) ** 2).mean(1), atol=1e-5)
        alphas = np.tile(np.array([0.0, 0.5, 1.0], np.float32), (6, 1))
        target = np.tile(model.mu[1].numpy(), (6, 1)).astype(np.float32)
        front = PlainSearchFront(model, pre)(
            xt, torch.from_numpy(alphas), torch.from_numpy(target)
        ).numpy()
        rows_onnx, score = run("search", x=q, alphas=alphas, target=target)
        np.testing.assert_allclose(rows_onnx, front, atol=1e-5)
        np.testing.assert_allclose(score, clf(torch.from_numpy(front)).numpy(), atol=1e-5)
        # alpha = 0 decodes the query's own (z, z_u): the reconstruction
        np.testing.assert_allclose(rows_onnx.reshape(6, 3, -1)[:, 0], dec, atol=1e-5)
    assert front.min() >= 0.0 and front.max() <= 1.0


# -- report ----------------------------------------------------------------------------------------
def test_table1_metrics_on_the_held_out_ones() -> None:
    from gmcf.trainer.image_report import table1_markdown, table1_metrics

    m = table1_metrics(MNIST, threshold=0.5, tol=0.5)
    assert (
        m["queries"] == 1135 and m["threshold"] == 0.5 and m["found"] <= m["rejected_by_f"] <= 1135
    )
    assert m["validity_pct"] >= 89.5  # the paper's figure
    assert 0.0 < m["reconstruction"]["mean"] < 0.05
    assert m["proximity_l2"]["mean"] <= m["sparsity_l1"]["mean"]  # L2 <= L1 for every row
    assert m["time_per_query_s"] > 0
    assert "| paper, Our Method |" in table1_markdown(m)


def test_plot_writes_the_three_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code, _stdout, stderr = invoke("plot", str(MNIST), "--out", str(tmp_path))
    assert code == 0, stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["figure2.png", "figure3.png", "figure4.png"]
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_refuses_a_tabular_bundle(adult_bundle: Path, tmp_path: Path) -> None:
    code, _stdout, stderr = invoke("plot", str(adult_bundle), "--out", str(tmp_path / "figs"))
    assert code != 0 and "tabular" in stderr and len(stderr.strip().splitlines()) == 1


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


@pytest.mark.slow
def test_plot_at_the_boundary_draws_one_counterfactual_row_and_checks_its_threshold(
    tmp_path: Path,
) -> None:
    """The bundle's T = 0.99 adds a row of boundary counterfactuals to Figure 2; at T = 0.5 there
    is nothing to compare with, so the figure is shorter. A bad threshold is a one-line error."""
    pytest.importorskip("matplotlib")
    code, _, stderr = invoke("plot", str(MNIST), "--out", str(tmp_path / "default"))
    assert code == 0, stderr
    code, _, stderr = invoke(
        "plot",
        str(MNIST),
        "--out",
        str(tmp_path / "boundary"),
        "--threshold",
        "0.5",
        "--tol",
        "0.5",
    )
    assert code == 0, stderr
    w_default, h_default = _png_size(tmp_path / "default" / "figure2.png")
    w_boundary, h_boundary = _png_size(tmp_path / "boundary" / "figure2.png")
    assert w_default == w_boundary and h_default > h_boundary
    code, _, stderr = invoke(
        "plot", str(MNIST), "--out", str(tmp_path / "bad"), "--threshold", "1.5"
    )
    assert code != 0 and "threshold" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "figure2.png").exists()
