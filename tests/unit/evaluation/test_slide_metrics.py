"""Slide AUC, its bootstrap confidence interval, and the ROC / FROC figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalib_wsi.evaluation.slide_metrics import bootstrap_auc_ci, plot_froc_curve, plot_roc_curve, slide_auc


def test_auc_of_a_hand_counted_example():
    # tumour 0.35 beats normal 0.1 but not 0.4; tumour 0.8 beats both: 3 of 4 pairs
    assert slide_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_counts_ties_as_half_and_matches_sklearn():
    assert slide_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.5 * labels, 1)  # rounded: many ties
    assert slide_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_ci_contains_the_auc_and_is_reproducible():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(80, int), np.ones(49, int)]  # the Camelyon16 test set's 80 normal / 49 tumour
    scores = rng.normal(size=129) + 1.2 * labels
    auc = slide_auc(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, n_boot=1000, seed=0)
    assert low < auc < high
    assert 0.05 < high - low < 0.25  # about ±0.04-0.05 for 129 slides at this AUC (~0.8)
    assert bootstrap_auc_ci(labels, scores, n_boot=1000, seed=0) == (low, high)
    assert bootstrap_auc_ci(labels, scores, n_boot=1000, seed=1) != (low, high)


def test_bootstrap_ci_of_a_perfect_separation_is_one():
    assert bootstrap_auc_ci([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9], n_boot=200) == (1.0, 1.0)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both normal and tumour"):
        slide_auc([1, 1, 1], [0.2, 0.5, 0.9])


def test_figures_are_written_as_png(tmp_path):
    roc = plot_roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], tmp_path / "roc.png", ci=(0.5, 1.0))
    froc = plot_froc_curve([1.0, 0.5, 0.0], [0.8, 0.4, 0.0], tmp_path / "froc.png", 0.6, (0.25, 1), (0.2, 0.8))
    for path in (roc, froc):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 300


def test_bootstrap_in_chunks_keeps_the_interval(monkeypatch):
    # Resamples are drawn in chunks so that memory stays flat for any n_boot; 7 resamples a chunk here
    from anomalib_wsi.evaluation import slide_metrics

    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(80, int), np.ones(49, int)]
    scores = rng.normal(size=129) + 1.2 * labels
    whole = bootstrap_auc_ci(labels, scores, n_boot=2000, seed=0)
    monkeypatch.setattr(slide_metrics, "_BOOT_CHUNK_VALUES", 7 * 129)
    chunked = bootstrap_auc_ci(labels, scores, n_boot=2000, seed=0)
    assert chunked != whole  # other draws ...
    np.testing.assert_allclose(chunked, whole, atol=0.015)  # ... the same interval within Monte-Carlo error
    assert bootstrap_auc_ci(labels, scores, n_boot=2000, seed=0) == chunked
