"""Evaluation and figures for an image bundle (the paper's MNIST experiment): Table 1's metrics
and Figures 2-4. Needs no torch: everything runs through the bundle's ONNX graphs.

    >>> table1_metrics("exported/mnist-1-to-7")  # dict of mean and SD per metric
    >>> plot_figures("exported/mnist-1-to-7", "docs/figures")  # needs matplotlib (the plot extra)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gmcf.datasets import Dataset, heldout_base_rows, load_dataset
from gmcf.runtime.engine import open_session
from gmcf.runtime.errors import GmcfError, InputError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.schema import ImagePreprocessor
from gmcf.trainer.morphology import style_agreement
from gmcf.trainer.paper import PAPER

#: The decision boundary: the paper's T.
BOUNDARY = 0.5


def image_explainer(bundle: str | Path, **settings: Any) -> tuple[Explainer, Dataset]:
    """An explainer of an image bundle and the shipped dataset it was trained on."""
    ex = Explainer.from_bundle(bundle, **settings)
    if not isinstance(ex.bundle.preprocessor, ImagePreprocessor):
        raise InputError(f"bundle {bundle} explains tabular rows, not images")
    return ex, load_dataset(str(ex.bundle.manifest.dataset))


def heldout_base(ds: Dataset) -> tuple[pa.Table, np.ndarray]:
    """The held-out base-class rows (MNIST: the test-set 1s) without their label, and their row
    numbers."""
    rows = heldout_base_rows(ds)
    return ds.table.take(pa.array(rows)).drop_columns([ds.schema.label]), rows


def _mean_sd(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(v)), "sd": float(np.std(v))}


def _images(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size list column of images as [rows, pixels] float64; NaN rows where it is null."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(
        len(col), -1
    )
    out[np.asarray(col.is_null().to_numpy(zero_copy_only=False))] = np.nan
    return out


def _status(out: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(found, searched) masks of an explanation table: searched rows are those f rejected."""
    status = np.asarray(out.column("status").cast(pa.string()).to_pylist())
    found = status == "found"
    return found, found | (status == "not_found")


def _validity(found: np.ndarray, searched: np.ndarray) -> float:
    return 100.0 * float(found.sum()) / max(int(searched.sum()), 1)


def table1_metrics(bundle: str | Path, **settings: Any) -> dict[str, Any]:
    """The paper's Table 1 metrics for one bundle, on its held-out base-class images.

    validity: share of the queries f rejects that get a counterfactual f accepts (within tol);
    proximity: L2 distance between query and counterfactual in pixel space (0..1);
    sparsity: L1 norm of the change (the paper's) and L0, pixels changed by more than 1e-6;
    reconstruction: the bundle's autoencoder MSE on the counterfactual;
    time per query: wall time of the whole explanation (one thread) divided by the queries.
    Means and SDs are over the counterfactuals found."""
    ex, ds = image_explainer(bundle, **settings)
    queries, _ = heldout_base(ds)
    ex.explain(queries.slice(0, 8))  # warm-up: sessions and allocations
    t0 = time.perf_counter()
    out = ex.explain(queries)
    seconds = time.perf_counter() - t0
    found, searched = _status(out)
    f = out.filter(pa.array(found))

    def col(name: str) -> np.ndarray:
        return np.asarray(f.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    return {
        "bundle": str(bundle),
        "queries": len(found),
        "rejected_by_f": int(searched.sum()),
        "found": int(found.sum()),
        "validity_pct": _validity(found, searched),
        "time_per_query_s": seconds / len(found),
        "rows_per_s": len(found) / seconds,
        "threshold": ex.settings.threshold,
        "tol": ex.settings.tol,
        "proximity_l2": _mean_sd(col("proximity_l2")),
        "sparsity_l1": _mean_sd(col("sparsity_l1")),
        "sparsity_l0": _mean_sd(col("sparsity_l0")),
        "reconstruction": _mean_sd(col("reconstruction_error")),
        "cf_score": _mean_sd(col("cf_score")),
        "classifier": ex.bundle.report.get("classifier", {}),
    }


Judge = Callable[[np.ndarray], np.ndarray]


def style_metrics(
    bundle: str | Path, judges: Sequence[Judge] = (), **settings: Any
) -> dict[str, Any]:
    """Do the counterfactuals read as the target digit and keep the query's style? On the bundle's
    held-out base-class images, with ``settings`` over its search defaults:

    validity as in ``table1_metrics``; ``judge_target_pct``: share of the counterfactuals that
    the ``judges`` (each: flat images -> P(target), e.g. ``ImageJudge.predict``) read as the
    target class, on average over the judges (``judge_target_pct_each``: one per judge);
    slant and thickness of the stem (``gmcf.trainer.morphology``) of counterfactual against query:
    Pearson r and mean absolute difference. The same for the end of the path (a = 1: mu_1 decoded
    with the query's z_u), which shows what z_u keeps of the style."""
    ex, ds = image_explainer(bundle, **settings)
    pre = ex.bundle.preprocessor
    assert isinstance(pre, ImagePreprocessor)
    queries, _ = heldout_base(ds)
    out = ex.explain(queries)
    x, _ = pre.transform(queries)
    found, searched = _status(out)
    cf = _images(out.column(f"cf_{pre.image.name}"))[found]
    xq = x[found]
    ends, _ = ex.engine.candidates(xq, np.ones((len(xq), 1), dtype=np.float32))
    shape = pre.image.shape
    m: dict[str, Any] = {
        "bundle": str(bundle),
        "target": str(ex.bundle.manifest.positive_class or "the target"),
        "threshold": ex.settings.threshold,
        "tol": ex.settings.tol,
        "rejected_by_f": int(searched.sum()),
        "found": int(found.sum()),
        "validity_pct": _validity(found, searched),
        "proximity_l2": float(
            np.mean(out.column("proximity_l2").to_numpy(zero_copy_only=False)[found])
        ),
        "cf": style_agreement(xq, cf, shape),
        "path_end": style_agreement(xq, ends[:, 0], shape),
    }
    if judges:
        for key, images in (("cf", cf), ("path_end", ends[:, 0])):
            each = [100.0 * float((judge(images) > 0.5).mean()) for judge in judges]
            m[key]["judge_target_pct"] = float(np.mean(each))
            m[key]["judge_target_pct_each"] = each
    return m


def _judged(c: dict[str, Any]) -> str:
    each = c.get("judge_target_pct_each", [])
    if not each:
        return ""
    return f"{np.mean(each):.1f}" + (f" ({min(each):.1f}-{max(each):.1f})" if len(each) > 1 else "")


def style_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per ``style_metrics`` result, and one for the end of the path (a = 1). With several
    judges, the share read as the target is their mean (lowest-highest)."""
    target = rows[0].get("target", "the target") if rows else "the target"
    lines = [
        f"| counterfactual | validity (%) | read as {target} by the CNN judges (%) | slant r | "
        "slant diff (deg) | thickness r | thickness diff (px) | proximity L2 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        c = m["cf"]
        lines.append(
            f"| first image with T <= f < T + tol, T = {m['threshold']:g}, tol = {m['tol']:g} | "
            f"{m['validity_pct']:.1f} | {_judged(c)} | {c['slant_r']:.3f} | {c['slant_mad']:.1f} | "
            f"{c['thickness_r']:.3f} | {c['thickness_mad']:.2f} | {m['proximity_l2']:.2f} |"
        )
    e = rows[-1]["path_end"]
    lines.append(
        f"| end of the path (a = 1: mu_1 with the query's z_u) | | {_judged(e)} | "
        f"{e['slant_r']:.3f} | {e['slant_mad']:.1f} | {e['thickness_r']:.3f} | "
        f"{e['thickness_mad']:.2f} | |"
    )
    return "\n".join(lines)


def table1_markdown(m: dict[str, Any]) -> str:
    """Table 1 of the paper with a row for ``table1_metrics``' result."""
    ours = PAPER["mnist-1-to-7"]["Our Method"]

    def cell(key: str) -> str:
        v = m[key]
        return f"{v['mean']:.3f} ± {v['sd']:.3f}" if isinstance(v, dict) else f"{v:.3f}"

    return "\n".join(
        [
            "| method | time (s) | reconstruction | sparsity L1 | sparsity L0 (pixels) | validity "
            "(%) | proximity L2 |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| gmcf-batch, T = {m['threshold']:g} ({m['rejected_by_f']:,} test-set 1s with f < T) "
            f"| {m['time_per_query_s']:.5f} | {cell('reconstruction')} | {cell('sparsity_l1')} | "
            f"{m['sparsity_l0']['mean']:.0f} ± {m['sparsity_l0']['sd']:.0f} | "
            f"{m['validity_pct']:.1f} | {cell('proximity_l2')} |",
            "| paper, Our Method | " + " | ".join((*ours[:3], "-", *ours[3:])) + " |",
        ]
    )


# -- figures ---------------------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise GmcfError("plotting needs matplotlib: pip install 'gmcf-batch[plot]'") from exc
    return plt


def _score_text(v: float, threshold: float) -> str:
    """f's score with enough decimals to tell it from ``threshold`` (rounded down, so that a
    score below the threshold never prints as the threshold, nor one below 1 as 1)."""
    digits = max(2, round(-math.log10(max(1.0 - threshold, 1e-9))) + 1)
    scale = 10.0**digits
    return f"{np.floor(float(v) * scale) / scale:.{digits}f}"


def _show(
    ax: Any, img: np.ndarray, shape: tuple[int, ...], title: str = "", color: str = "black"
) -> None:
    ax.imshow(img.reshape(shape), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, color=color)


def plot_figures(
    bundle: str | Path,
    out: str | Path,
    n_queries: int = 10,
    n_paths: int = 4,
    seed: int = 0,
    **settings: Any,
) -> list[Path]:
    """Write figure2.png (queries above their counterfactuals), figure3.png (interpolation paths
    with f's score under each step) and figure4.png (PCA of the latent z by class) to ``out``,
    for held-out images of the bundle's dataset. ``settings`` override the bundle's search defaults
    (``threshold``, ``tol``, ...). Returns the files written."""
    plt = _pyplot()
    ex, ds = image_explainer(bundle, **settings)
    pre = ex.bundle.preprocessor
    assert isinstance(pre, ImagePreprocessor)
    shape = pre.image.shape
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    queries, _ = heldout_base(ds)
    pick = np.sort(
        np.random.default_rng(seed).choice(
            queries.num_rows, size=min(40, queries.num_rows), replace=False
        )
    )
    res = ex.explain(queries.take(pa.array(pick)))
    x, _ = pre.transform(queries.take(pa.array(pick)))
    hit = np.nonzero(_status(res)[0])[0]
    cf = _images(res.column(f"cf_{pre.image.name}"))
    score = res.column("score").to_numpy(zero_copy_only=False)
    cf_score = res.column("cf_score").to_numpy(zero_copy_only=False)
    written = []

    # Figure 2: queries (top) above their counterfactuals; below them, when the search asks f for
    # more than the decision boundary, the counterfactuals at the boundary (T = 0.5, the paper's).
    if not hit.size:
        raise GmcfError("no counterfactual found among the sampled queries; nothing to draw")
    show = hit[:n_queries]
    st = ex.settings
    rows_shown = [(cf, cf_score, f"T = {st.threshold:g}")]
    if st.threshold > BOUNDARY:
        boundary = Explainer.from_bundle(
            ex.bundle.path, threshold=BOUNDARY, tol=1.0 - BOUNDARY
        ).explain(queries.take(pa.array(pick[show])))
        b_score = pc.fill_null(boundary.column("cf_score"), float("nan")).to_numpy()
        full_cf, full_score = np.full(cf.shape, np.nan), np.full(cf_score.shape, np.nan)
        full_cf[show], full_score[show] = _images(boundary.column(f"cf_{pre.image.name}")), b_score
        rows_shown.append((full_cf, full_score, f"T = {BOUNDARY:g}"))
    n_rows = 1 + len(rows_shown)
    fig, axes = plt.subplots(
        n_rows, len(show), figsize=(1.1 * len(show), 0.4 + 1.3 * n_rows), squeeze=False
    )
    for j, i in enumerate(show):
        _show(axes[0, j], x[i], shape, f"f={_score_text(score[i], st.threshold)}")
        for r, (imgs, sc_, _) in enumerate(rows_shown, start=1):
            if np.isnan(sc_[i]):  # no counterfactual at this threshold: an empty panel
                _show(axes[r, j], np.zeros(x.shape[1]), shape, "not found")
            else:
                _show(axes[r, j], imgs[i], shape, f"f={_score_text(sc_[i], st.threshold)}")
    axes[0, 0].set_ylabel("query", fontsize=8)
    for r, (_, _, label) in enumerate(rows_shown, start=1):
        axes[r, 0].set_ylabel(f"cf, {label}", fontsize=8)
    title = (
        "Held-out 1s (top); their counterfactuals, the first image on the path with f = P(7) >= T: "
        f"T = {st.threshold:g}"
    )
    title += f", then T = {BOUNDARY:g} (the decision boundary)" if len(rows_shown) > 1 else ""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=1.2)
    written.append(out / "figure2.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # Figure 3: the path z_s = (1 - a) z_q + a mu_1 decoded with the query's z_u.
    paths = hit[:n_paths]
    alphas = np.linspace(0.0, 1.0, 9, dtype=np.float32)
    rows, sc = ex.engine.candidates(
        x[paths], np.broadcast_to(alphas, (paths.size, alphas.size)).copy()
    )
    threshold = ex.settings.threshold
    marks = [(threshold, "red")] + ([(BOUNDARY, "darkorange")] if threshold != BOUNDARY else [])
    fig, axes = plt.subplots(
        len(paths),
        alphas.size + 2,
        figsize=(1.05 * (alphas.size + 2), 1.25 * len(paths)),
        squeeze=False,
    )
    for r, i in enumerate(paths):
        _show(axes[r, 0], x[i], shape, f"query {_score_text(score[i], threshold)}")
        firsts = {
            int(np.argmax(sc[r] >= t)): colour
            for t, colour in reversed(marks)
            if (sc[r] >= t).any()
        }
        for k, a in enumerate(alphas):
            _show(
                axes[r, k + 1],
                rows[r, k],
                shape,
                f"a={a:.2f}: {_score_text(sc[r, k], threshold)}",
                firsts.get(k, "black"),
            )
        alpha = res.column("alpha")[int(i)].as_py()
        _show(
            axes[r, -1],
            cf[i],
            shape,
            f"cf a={alpha:.2f}: {_score_text(cf_score[i], threshold)}",
            "red",
        )
    legend = f"red: first >= T = {threshold:g}" + (
        f"; orange: first >= {BOUNDARY:g}" if len(marks) > 1 else ""
    )
    fig.suptitle(
        f"Interpolation toward mu_1 with the query's z_u; f's score under each step ({legend})",
        fontsize=9,
    )
    fig.tight_layout()
    written.append(out / "figure3.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # Figure 4: PCA (numpy SVD) of z for held-out images of both classes, with mu_0 and mu_1.
    if ds.test_mask is None:
        raise InputError(f"dataset {ds.name} has no held-out images to draw")
    test_rows = np.nonzero(ds.test_mask)[0]
    xt, _ = pre.transform(ds.table.take(pa.array(test_rows)))
    enc = open_session(str(ex.bundle.graph_path("encoder")), 1)
    z = np.asarray(enc.run(None, {"x": xt})[0], dtype=np.float64)
    mu = np.asarray(ex.bundle.manifest.latent.mu, dtype=np.float64)
    center = z.mean(axis=0)
    _, sv, vt = np.linalg.svd(z - center, full_matrices=False)
    pz, pmu = (z - center) @ vt[:2].T, (mu - center) @ vt[:2].T
    explained = (sv[:2] ** 2).sum() / (sv**2).sum()
    label = pc.cast(
        ds.table.column(ds.schema.label).take(pa.array(test_rows)), pa.string()
    ).to_numpy(zero_copy_only=False)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for value, colour in zip(sorted(set(label)), ("tab:blue", "tab:orange"), strict=False):
        m = label == value
        ax.scatter(
            pz[m, 0],
            pz[m, 1],
            s=4,
            alpha=0.4,
            c=colour,
            label=f"digit {value} ({m.sum():,} held out)",
        )
    for k, colour in enumerate(("navy", "darkred")):
        ax.scatter(
            pmu[k, 0], pmu[k, 1], marker="X", s=90, c=colour, edgecolors="white", label=f"mu_{k}"
        )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(
        f"PCA of z ({z.shape[1]} dims; 2 PCs hold {100 * explained:.1f}% of the variance)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "figure4.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


__all__ = [
    "heldout_base",
    "plot_figures",
    "style_markdown",
    "style_metrics",
    "table1_markdown",
    "table1_metrics",
]
