"""Camelyon16 FROC: evaluation masks, lesion hits, the curve and its score, on hand-computed arrays and real
Camelyon16 lesion geometry."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Polygon
from skimage import measure

from anomalib_wsi.evaluation.froc import (
    compute_evaluation_mask,
    compute_fp_tp_probs,
    compute_froc_curve_data,
    compute_froc_score,
    evaluate_froc,
    froc_sensitivities,
    growth_threshold_px,
    itc_threshold_px,
)

UM_PER_PX5 = 0.243 * 32  # µm per level-5 pixel: 7.776


def _square_mask(shape=(100, 100), box=(20, 60, 20, 60)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = True
    return mask


def test_protocol_thresholds_match_the_official_formulas():
    # 75 / (0.243 * 2**5 * 2) and 275 / (0.243 * 2**5), as in Evaluation_FROC.py
    assert growth_threshold_px() == pytest.approx(4.8225, abs=1e-4)
    assert itc_threshold_px() == pytest.approx(35.365, abs=1e-3)


def test_detection_inside_a_lesion_is_a_hit_and_outside_is_a_false_positive():
    labels, itc = compute_evaluation_mask(_square_mask())
    assert labels.max() == 1 and itc == []
    detections = [(0.9, 40 * 32 + 5, 40 * 32 + 5), (0.4, 90 * 32, 90 * 32)]
    fp, tp, num_targets = compute_fp_tp_probs(detections, labels, itc)
    assert fp.tolist() == [0.4]
    assert tp.tolist() == [0.9]
    assert num_targets == 1


def test_detection_maps_to_mask_pixel_y_div_32_x_div_32():
    labels = np.zeros((4, 4), np.int32)
    labels[1, 2] = 1  # row 1 (y 32..63), column 2 (x 64..95)
    hit = [(0.7, 95, 32)]
    fp, tp, _ = compute_fp_tp_probs(hit, labels, [])
    assert tp.tolist() == [0.7] and fp.size == 0
    # x and y swapped, or one level-0 pixel past the cell, is background
    for x, y in [(32, 95), (96, 32), (95, 64)]:
        fp, tp, _ = compute_fp_tp_probs([(0.7, x, y)], labels, [])
        assert fp.tolist() == [0.7] and tp.tolist() == [0.0]


def test_detection_outside_the_mask_is_a_false_positive():
    labels, itc = compute_evaluation_mask(_square_mask())
    fp, tp, _ = compute_fp_tp_probs([(0.5, 100 * 32 + 3, 10), (0.6, -5, 10)], labels, itc)
    assert sorted(fp.tolist()) == [0.5, 0.6]
    assert tp.tolist() == [0.0]


def test_detection_in_an_isolated_tumour_cell_is_neither_hit_nor_false_positive():
    mask = _square_mask()
    mask[85:87, 85:87] = True  # 2 x 2 px = 15.6 µm: 82 µm major axis after growth, an ITC
    labels, itc = compute_evaluation_mask(mask)
    assert labels.max() == 2
    small = int(labels[86, 86])
    assert itc == [small]
    fp, tp, num_targets = compute_fp_tp_probs([(0.95, 86 * 32, 86 * 32)], labels, itc)
    assert fp.size == 0
    assert tp.tolist() == [0.0]  # the large lesion is undetected; the ITC has no entry
    assert num_targets == 1


def test_two_detections_in_one_lesion_give_one_hit_and_no_false_positive():
    labels, itc = compute_evaluation_mask(_square_mask())
    fp, tp, _ = compute_fp_tp_probs([(0.3, 30 * 32, 30 * 32), (0.8, 50 * 32, 50 * 32)], labels, itc)
    assert tp.tolist() == [0.8]
    assert fp.size == 0


def test_every_detection_on_a_normal_slide_is_a_false_positive():
    fp, tp, num_targets = compute_fp_tp_probs([(0.2, 10, 10), (0.9, 5000, 7000), (0.5, 0, 0)], None)
    assert fp.tolist() == [0.2, 0.9, 0.5]
    assert tp.size == 0 and num_targets == 0


def test_lesions_50_um_apart_merge_and_100_um_apart_stay_separate():
    gap_50um = round(50 / UM_PER_PX5)  # 6 px = 46.7 µm
    gap_100um = round(100 / UM_PER_PX5)  # 13 px = 101 µm
    for gap, expected in [(gap_50um, 1), (gap_100um, 2)]:
        mask = np.zeros((60, 120), bool)
        mask[20:40, 20:40] = True
        mask[20:40, 40 + gap : 60 + gap] = True
        labels, _ = compute_evaluation_mask(mask)
        assert labels.max() == expected, f"gap {gap} px"


def test_merge_distance_on_the_level5_grid_is_8_px():
    # The middle of a g-px gap is floor((g + 1) / 2) px from tumour; it joins when that is < 4.82 px.
    counts = {}
    for gap in (8, 9):
        mask = np.zeros((40, 80), bool)
        mask[10:30, 10:30] = True
        mask[10:30, 30 + gap : 50 + gap] = True
        counts[gap] = compute_evaluation_mask(mask)[0].max()
    assert counts == {8: 1, 9: 2}


def test_holes_inside_a_grown_lesion_are_filled():
    mask = _square_mask()
    mask[30:50, 30:50] = False  # a 20 px (156 µm) hole: too wide to close by growth, filled by the protocol
    labels, _ = compute_evaluation_mask(mask)
    assert labels[40, 40] == 1
    fp, tp, _ = compute_fp_tp_probs([(0.6, 40 * 32, 40 * 32)], labels, [])
    assert tp.tolist() == [0.6] and fp.size == 0


def test_empty_mask_has_no_lesion_and_detections_are_false_positives():
    labels, itc = compute_evaluation_mask(np.zeros((10, 10), bool))
    assert labels.max() == 0 and itc == []
    fp, tp, num_targets = compute_fp_tp_probs([(0.5, 32, 32)], labels, itc)
    assert fp.tolist() == [0.5] and tp.size == 0 and num_targets == 0


def test_froc_curve_and_score_hand_computed():
    # 2 slides; 3 lesions (0.9 and 0.6 detected, one missed); false positives 0.8 and 0.5.
    fps, sens = compute_froc_curve_data([0.8, 0.5], [0.9, 0.6, 0.0], num_targets=3, num_images=2)
    # thresholds 0.5, 0.6, 0.8, 0.9, then the (0, 0) point
    np.testing.assert_allclose(fps, [1.0, 0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(sens, [2 / 3, 2 / 3, 1 / 3, 1 / 3, 0.0])
    # 1/4 FP: between (0, 1/3) and (0.5, 1/3); 1/2 FP: the best sensitivity at 0.5; beyond 1 FP (never reached
    # past 1): the final value 2/3.
    np.testing.assert_allclose(froc_sensitivities(fps, sens), [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert compute_froc_score(fps, sens) == pytest.approx(11 / 18)


def test_froc_score_interpolates_linearly_and_holds_the_final_value_past_the_curve():
    # curve (official order) with points (0, 0.2) and (0.5, 0.6), never beyond 0.5 FP per slide
    fps, sens = np.array([0.5, 0.0, 0.0]), np.array([0.6, 0.2, 0.0])
    np.testing.assert_allclose(froc_sensitivities(fps, sens, (0.25, 0.5, 8)), [0.4, 0.6, 0.6])
    assert compute_froc_score(fps, sens) == pytest.approx((0.4 + 0.6 * 5) / 6)


def _official_froc(fp_probs, tp_probs, num_targets, num_images):
    """computeFROC of the official Evaluation_FROC.py, as published."""
    unlisted_fps, unlisted_tps = list(fp_probs), list(tp_probs)
    total_fps, total_tps = [], []
    all_probs = sorted(set(unlisted_fps + unlisted_tps))
    for thresh in all_probs[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= thresh).sum())
        total_tps.append((np.asarray(unlisted_tps) >= thresh).sum())
    total_fps.append(0)
    total_tps.append(0)
    return np.asarray(total_fps) / float(num_images), np.asarray(total_tps) / float(num_targets)


def test_curve_equals_the_official_code_whenever_a_lesion_is_missed():
    rng = np.random.default_rng(3)
    for _ in range(20):
        fp = rng.choice(np.linspace(0.05, 1, 20), size=rng.integers(0, 30))
        tp = rng.choice(np.linspace(0.05, 1, 20), size=rng.integers(1, 15))
        tp[rng.integers(0, tp.size)] = 0.0  # a missed lesion, as in every real Camelyon16 run
        ours = compute_froc_curve_data(fp, tp, tp.size, 7)
        official = _official_froc(fp, tp, tp.size, 7)
        np.testing.assert_allclose(ours[0], official[0])
        np.testing.assert_allclose(ours[1], official[1])


def test_lowest_confidence_counts_when_every_lesion_is_detected():
    # One lesion found at 0.3 below one false positive at 0.5 on one slide: 100 % sensitivity at 1 FP per slide.
    # (The official code drops its lowest threshold unconditionally and would report 0.)
    fps, sens = compute_froc_curve_data([0.5], [0.3], num_targets=1, num_images=1)
    np.testing.assert_allclose(fps, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(sens, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(froc_sensitivities(fps, sens), [0, 0, 1, 1, 1, 1])


def test_evaluate_froc_divides_false_positives_by_all_slides_including_normal_ones():
    tumour = _square_mask()
    slides: list[tuple[str, Any, np.ndarray | None]] = [
        ("tumour_a", [(0.9, 40 * 32, 40 * 32), (0.7, 5 * 32, 5 * 32)], tumour),
        ("normal_a", [(0.8, 100, 100), (0.6, 200, 200)], None),
        ("normal_b", np.zeros((0, 3)), None),
        ("normal_c", [(0.1, 7, 7)], None),
    ]
    result = evaluate_froc(slides)
    assert result.num_slides == 4 and result.num_lesions == 1 and result.num_itc == 0
    # false positives 0.8, 0.7, 0.6, 0.1 over 4 slides; the lesion is found at 0.9 before any of them
    np.testing.assert_allclose(result.fps_per_slide, [1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(result.sensitivity, [1, 1, 1, 1, 1, 0])
    assert result.score == pytest.approx(1.0)
    per_slide = {s.slide_id: (s.num_detected, s.num_fp) for s in result.slides}
    assert per_slide == {"tumour_a": (1, 1), "normal_a": (0, 2), "normal_b": (0, 0), "normal_c": (0, 1)}


def test_evaluate_froc_without_lesions_has_an_undefined_score():
    result = evaluate_froc([("normal", [(0.5, 1, 1)], None)])
    assert np.isnan(result.score) and result.num_lesions == 0


def test_negative_confidence_is_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        compute_fp_tp_probs([(-0.1, 1, 1)], None)


# -- real Camelyon16 geometry -------------------------------------------------------------------------------------


def _major_axis_lv0(polygon: Polygon) -> float:
    """Major axis (level-0 px) of a polygon as regionprops defines it, 4 sqrt(largest eigenvalue of the second
    central moments), from the exact polygon moments (Green's theorem)."""
    x, y = np.asarray(polygon.exterior.coords).T
    x, y = x - x.mean(), y - y.mean()
    xa, ya, xb, yb = x[:-1], y[:-1], x[1:], y[1:]
    cross = xa * yb - xb * ya
    area = cross.sum() / 2
    cx, cy = ((xa + xb) * cross).sum() / (6 * area), ((ya + yb) * cross).sum() / (6 * area)
    sxx = ((xa * xa + xa * xb + xb * xb) * cross).sum() / (12 * area) - cx * cx
    syy = ((ya * ya + ya * yb + yb * yb) * cross).sum() / (12 * area) - cy * cy
    sxy = ((xa * yb + 2 * xa * ya + 2 * xb * yb + xb * ya) * cross).sum() / (24 * area) - cx * cy
    return float(4 * np.sqrt(np.linalg.eigvalsh([[sxx, sxy], [sxy, syy]]).max()))


def _grown_parts(region, merge_um: float) -> list[Polygon]:
    """Independent growth: buffer by half the merge distance, fill holes, one polygon per lesion."""
    grown = region.buffer(merge_um / 2 / 0.243)
    return [Polygon(p.exterior) for p in getattr(grown, "geoms", [grown])]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("slide_id", "lesions", "itc", "bracket"),
    [("tumor_105", 76, 59, (57, 83)), ("tumor_110", 5, 0, (4, 9))],
)
def test_real_lesions_after_growth_match_an_independent_polygon_computation(
    shared_data, slide_id, lesions, itc, bracket
):
    from anomalib_wsi.annotations import rasterise, read_annotations
    from anomalib_wsi.evaluation.report import ground_truth_mask

    path = shared_data / "annotations" / "camelyon16" / f"{slide_id}.xml"
    # Level-5 mask as ASAP made the organisers' masks (corner samples), grown, filled, labelled.
    labels, itc_labels = compute_evaluation_mask(ground_truth_mask(path))
    assert (int(labels.max()), len(itc_labels)) == (lesions, itc)

    # Independent: shapely buffer of the polygons by 37.5 µm (half the 75 µm merge distance, as the official
    # threshold), holes filled, major axis from exact polygon moments. On the 7.8 µm level-5 grid, thin necks
    # and gaps near 75 µm come out differently, so the count must lie between the continuous counts at merge
    # distances of 90 and 60 µm...
    region = read_annotations(path).region
    low, high = bracket
    assert len(_grown_parts(region, 90)) == low
    assert len(_grown_parts(region, 60)) == high
    assert low <= lesions <= high
    # ... and a lesion that is one single lesion in both has the same major axis within 3 level-5 pixels (growth
    # starts from the tumour samples, one per 32 px block, not from the outline: axes ~10 µm shorter) and the
    # same ITC status; at least 80 % of the independent lesions are such one-to-one matches.
    parts = _grown_parts(region, 75)
    props = {p.label: p for p in measure.regionprops(labels)}
    part_labels = [set(np.unique(labels[rasterise(p, labels.shape, 32)]).tolist()) - {0} for p in parts]
    shared = Counter(label for found in part_labels for label in found)
    matched = 0
    for part, found in zip(parts, part_labels, strict=True):
        if len(found) == 1 and shared[next(iter(found))] == 1:
            label = next(iter(found))
            axis_um = _major_axis_lv0(part) * 0.243
            assert props[label].axis_major_length * UM_PER_PX5 == pytest.approx(axis_um, abs=3 * UM_PER_PX5)
            assert (axis_um < 275) == (label in itc_labels)
            matched += 1
    assert matched >= 0.8 * len(parts)
