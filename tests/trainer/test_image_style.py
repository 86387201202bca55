"""Style of digit images (slant, stroke thickness), the CNN judge, and what the MNIST bundle's
counterfactuals keep of their query at the bundle's search defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gmcf.datasets import load_dataset, load_mnist_1_7
from gmcf.runtime import Explainer
from gmcf.trainer.morphology import stem_style, style_agreement

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "exported" / "mnist-1-to-7"


def stroke(slope: float, width: int, bar: bool = False) -> np.ndarray:
    """A 28x28 stroke from row 4 to 23, ``slope`` columns per row (negative: bottom to the left),
    ``width`` pixels wide on each row; with ``bar``, a horizontal bar across its top rows."""
    img = np.zeros((28, 28))
    for r in range(4, 24):
        c = round(14 - width / 2 + slope * (r - 13.5))
        img[r, c : c + width] = 1.0
    if bar:
        img[4:6, 4:22] = 1.0
    return img


def test_a_vertical_stroke_has_no_slant_and_its_width_as_thickness() -> None:
    slant, thick = stem_style(np.stack([stroke(0.0, 2), stroke(0.0, 5)]))
    np.testing.assert_allclose(slant, 0.0, atol=1e-9)
    np.testing.assert_allclose(thick, [2.0, 5.0])


def test_slant_is_the_stem_angle_and_thickness_is_measured_across_the_stroke() -> None:
    slant, thick = stem_style(stroke(-0.5, 3)[None])  # "/": the bottom lies left of the top
    assert slant[0] == pytest.approx(np.degrees(np.arctan(0.5)), abs=2.0)
    # 3 pixels across each row of a stroke at 26.6 degrees: 3 cos(26.6) = 2.68 across the stroke
    assert thick[0] == pytest.approx(3 * np.cos(np.arctan(0.5)), abs=0.15)
    mirrored, _ = stem_style(stroke(0.5, 3)[None])  # "\"
    assert mirrored[0] == pytest.approx(-slant[0], abs=1e-6)


def test_the_bar_of_a_seven_does_not_change_its_stem() -> None:
    slant, thick = stem_style(np.stack([stroke(-0.3, 2), stroke(-0.3, 2, bar=True)]))
    assert slant[1] == pytest.approx(slant[0], abs=1.5) and slant[0] > 10.0
    assert thick[1] == pytest.approx(thick[0], abs=0.1)


def test_an_image_without_ink_has_no_style() -> None:
    slant, thick = stem_style(np.zeros((1, 784)))
    assert np.isnan(slant[0]) and np.isnan(thick[0])


def test_style_agreement_is_perfect_for_the_same_images_and_not_for_shuffled_ones() -> None:
    images, digits, is_test = load_mnist_1_7()
    ones = images[is_test & (digits == 1)][:300].reshape(300, -1) / 255.0
    same = style_agreement(ones, ones)
    assert same["slant_r"] == pytest.approx(1.0) and same["slant_mad"] == 0.0
    assert same["thickness_r"] == pytest.approx(1.0) and same["thickness_rows"] == 300
    shuffled = style_agreement(ones, ones[np.random.default_rng(0).permutation(300)])
    assert abs(shuffled["slant_r"]) < 0.3 and shuffled["slant_mad"] > 5.0
    # held-out 1s really vary in slant and thickness, so keeping them is a claim that can fail
    slant, thick = stem_style(ones)
    assert np.nanstd(slant) > 8.0 and np.nanstd(thick) > 0.4


def test_the_image_bundle_asks_f_for_confidence_and_tabular_bundles_for_the_boundary() -> None:
    from gmcf.trainer.images import IMAGE_SEARCH, default_search

    assert default_search(load_dataset("mnist-1-to-7").schema) == IMAGE_SEARCH
    assert default_search(load_dataset("adult").schema) == {}
    s = Explainer.from_bundle(MNIST).settings
    assert (s.threshold, s.tol) == (IMAGE_SEARCH["threshold"], IMAGE_SEARCH["tol"])
    assert Explainer.from_bundle(ROOT / "exported" / "adult").settings.threshold == 0.5


def test_a_threshold_given_alone_keeps_accepting_every_score_up_to_one() -> None:
    """The bundles accept any score from T up to 1 (0.5 + 0.5, 0.99 + 0.01); moving T alone must
    not shrink that band to the bundle's tol (MNIST at T = 0.5 would search [0.5, 0.51))."""
    assert Explainer.from_bundle(MNIST, threshold=0.5).settings.tol == pytest.approx(0.5)
    assert Explainer.from_bundle(
        ROOT / "exported" / "adult", threshold=0.7
    ).settings.tol == pytest.approx(0.3)
    assert Explainer.from_bundle(MNIST, threshold=0.5, tol=0.1).settings.tol == pytest.approx(0.1)
    assert Explainer.from_bundle(MNIST, tol=0.005).settings.threshold == pytest.approx(0.99)


@pytest.mark.slow
def test_counterfactuals_keep_the_query_style_and_read_as_sevens_to_an_independent_judge() -> None:
    pytest.importorskip("torch")
    from gmcf.trainer.baselines import train_image_judge
    from gmcf.trainer.image_report import style_metrics

    images, digits, is_test = load_mnist_1_7()
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    judge = train_image_judge(
        flat[~is_test], (digits[~is_test] == 7).astype(np.int64), (28, 28), epochs=1
    )
    accuracy = ((judge.predict(flat[is_test]) > 0.5) == (digits[is_test] == 7)).mean()
    assert accuracy > 0.99
    default = style_metrics(MNIST, [judge.predict])
    boundary = style_metrics(MNIST, [judge.predict], threshold=0.5, tol=0.5)
    assert default["validity_pct"] >= 89.5 and boundary["validity_pct"] >= 89.5
    # at the bundle's defaults most counterfactuals read as 7s; at the boundary few do
    assert default["cf"]["judge_target_pct"] >= 85.0  # 95-98% with 1-epoch judges of seeds 0-2
    assert boundary["cf"]["judge_target_pct"] < default["cf"]["judge_target_pct"]
    for m in (default, boundary):
        assert m["cf"]["slant_r"] > 0.85 and m["cf"]["thickness_r"] > 0.85
    assert default["path_end"]["judge_target_pct"] > 95.0


def test_style_correlation_is_nan_when_one_side_does_not_vary() -> None:
    images = np.stack([stroke(s, 2) for s in (-0.4, -0.2, 0.0, 0.2, 0.4)]).reshape(5, -1)
    same = np.repeat(images[:1], 5, axis=0)
    out = style_agreement(images, same)
    assert np.isnan(out["slant_r"]) and out["slant_rows"] == 5 and out["slant_mad"] > 0


def test_images_search_in_small_chunks_and_wide_tables_keep_theirs() -> None:
    from gmcf.runtime.explainer import SEARCH_CHUNK, search_chunk
    from gmcf.runtime.search import WIDE_CHUNK_ENTRIES

    assert search_chunk(784, image=True) == 64
    assert search_chunk(21) == search_chunk(98) == SEARCH_CHUNK  # tables up to 98 entries per row
    assert search_chunk(100) == WIDE_CHUNK_ENTRIES // 100 < SEARCH_CHUNK
    assert search_chunk(1000) == WIDE_CHUNK_ENTRIES // 1000
