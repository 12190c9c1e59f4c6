"""Tests of anomalib_wsi/post_processing/lesions.py: lesions, detection points, slide scores and their files."""

from __future__ import annotations

import numpy as np
import pytest

from anomalib_wsi.annotations.reader import read_annotations
from anomalib_wsi.post_processing.lesions import (
    detection_points,
    extract_lesions,
    write_detections_csv,
    write_lesions_geojson,
)
from anomalib_wsi.post_processing.slide_score import slide_score
from anomalib_wsi.post_processing.stitch import Heatmap

DS = 64.0  # level-0 px per cell
MPP = 0.5  # µm per level-0 px: one cell is 32 µm wide, 1024 µm²
CELL_UM2 = (DS * MPP) ** 2


def _heatmap(values: np.ndarray, ds: float = DS, size: tuple[int, int] | None = None) -> Heatmap:
    values = np.asarray(values, dtype=np.float32)
    size = size or (int(values.shape[1] * ds), int(values.shape[0] * ds))
    return Heatmap(values, ds, "slide", size)


def _two_blobs() -> np.ndarray:
    values = np.full((20, 20), 0.1, dtype=np.float32)
    values[2:6, 2:7] = 0.8  # 4 x 5 = 20 cells
    values[3, 4] = 0.95
    values[10:16, 12:15] = 0.6  # 6 x 3 = 18 cells
    return values


def test_two_separate_blobs_give_two_lesions_with_their_level0_areas() -> None:
    lesions = extract_lesions(_heatmap(_two_blobs()), threshold=0.5, mpp=MPP)
    assert len(lesions) == 2
    first, second = lesions  # by decreasing max score
    assert first.area_um2 == pytest.approx(20 * CELL_UM2)
    assert second.area_um2 == pytest.approx(18 * CELL_UM2)
    assert first.polygon.bounds == (2 * DS, 2 * DS, 7 * DS, 6 * DS)  # level-0 px, cell edges
    assert second.polygon.bounds == (12 * DS, 10 * DS, 15 * DS, 16 * DS)
    assert first.max_score == pytest.approx(0.95)
    assert first.mean_score == pytest.approx((19 * 0.8 + 0.95) / 20)
    assert second.max_score == pytest.approx(0.6)
    assert all(lesion.polygon.is_valid for lesion in lesions)


def test_ring_blob_gives_a_polygon_with_a_hole() -> None:
    values = np.zeros((12, 12), dtype=np.float32)
    values[2:10, 2:10] = 0.9
    values[4:8, 4:8] = 0.2  # 4 x 4 hole
    (lesion,) = extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP)
    assert lesion.polygon.geom_type == "Polygon"
    assert len(lesion.polygon.interiors) == 1
    hole = lesion.polygon.interiors[0]
    assert hole.bounds == (4 * DS, 4 * DS, 8 * DS, 8 * DS)
    assert lesion.area_um2 == pytest.approx((64 - 16) * CELL_UM2)
    assert lesion.mean_score == pytest.approx(0.9)


def test_min_area_drops_small_lesions() -> None:
    values = np.zeros((10, 10), dtype=np.float32)
    values[1, 1] = 0.9  # one cell: 1024 µm²
    values[5:8, 5:8] = 0.7  # nine cells: 9216 µm²
    kept = extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP, min_area_um2=5000)
    assert [round(lesion.area_um2) for lesion in kept] == [9216]
    assert len(extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP)) == 2


def test_threshold_is_inclusive_and_unscored_cells_are_never_lesions() -> None:
    values = np.full((4, 4), np.nan, dtype=np.float32)
    values[0, 0] = 0.5
    values[3, 3] = 0.49
    lesions = extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP)
    assert len(lesions) == 1
    assert lesions[0].polygon.bounds == (0, 0, DS, DS)


def test_lesions_are_clipped_to_the_slide() -> None:
    values = np.zeros((4, 4), dtype=np.float32)
    values[:, 3] = 0.9  # last column of cells reaches 1024 px, the slide ends at 1000
    (lesion,) = extract_lesions(_heatmap(values, ds=256, size=(1000, 1024)), threshold=0.5, mpp=1.0)
    assert lesion.polygon.bounds == (768, 0, 1000, 1024)
    assert lesion.area_um2 == pytest.approx(232 * 1024)


def test_simplification_smooths_staircases_within_tolerance() -> None:
    yy, xx = np.mgrid[0:40, 0:40]
    values = (np.hypot(xx - 20, yy - 20) < 15).astype(np.float32)
    exact = extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP)[0]
    smooth = extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP, simplify_tolerance_px_lv0=DS)[0]
    assert len(smooth.polygon.exterior.coords) < len(exact.polygon.exterior.coords) / 2
    assert smooth.polygon.is_valid
    assert smooth.area_um2 == pytest.approx(exact.area_um2, rel=0.05)
    assert exact.area_um2 == pytest.approx(values.sum() * CELL_UM2)


def test_nms_keeps_the_higher_peak_within_the_radius_in_um() -> None:
    values = np.full((20, 20), 0.1, dtype=np.float32)
    values[5, 5] = 0.9
    values[5, 8] = 0.8  # 3 cells = 96 µm from the first peak
    values[15, 15] = 0.7  # far away
    # min_score above the flat background (a plateau is its own local maximum)
    points = detection_points(_heatmap(values), mpp=MPP, nms_radius_um=100.0, min_score=0.2)
    np.testing.assert_array_equal(points[:, 1:], [[5.5 * DS, 5.5 * DS], [15.5 * DS, 15.5 * DS]])
    np.testing.assert_allclose(points[:, 0], [0.9, 0.7], rtol=1e-6)
    points = detection_points(_heatmap(values), mpp=MPP, nms_radius_um=90.0, min_score=0.2)
    np.testing.assert_array_equal(points[:, 1], [5.5 * DS, 8.5 * DS, 15.5 * DS])


def test_detections_are_local_maxima_at_integer_cell_centres() -> None:
    yy, xx = np.mgrid[0:15, 0:15]
    values = np.exp(-((xx - 7.0) ** 2 + (yy - 4.0) ** 2) / 8.0).astype(np.float32)  # one smooth peak
    # a radius smaller than a cell suppresses nothing: the slope cells still are no local maxima
    points = detection_points(_heatmap(values, ds=526.75), mpp=0.243, nms_radius_um=10.0, min_score=0.01)
    assert points.shape == (1, 3)
    assert points[0, 0] == pytest.approx(1.0)
    assert points[0, 1] == np.floor(7.5 * 526.75)
    assert points[0, 2] == np.floor(4.5 * 526.75)
    assert np.all(points[:, 1:] == np.round(points[:, 1:]))


def test_detection_limits_and_edge_cells() -> None:
    values = np.full((4, 4), np.nan, dtype=np.float32)
    values[0, 0], values[3, 3], values[0, 3] = 0.3, 0.6, 0.0
    heatmap = _heatmap(values, ds=256, size=(1000, 1000))
    points = detection_points(heatmap, mpp=1.0, nms_radius_um=1.0)
    assert points.tolist() == [[pytest.approx(0.6), 896.0, 896.0], [pytest.approx(0.3), 128.0, 128.0]]
    assert detection_points(heatmap, mpp=1.0, max_points=1).shape == (1, 3)
    assert detection_points(heatmap, mpp=1.0, min_score=0.6).shape == (0, 3)  # strictly above
    last = np.full((4, 4), np.nan, dtype=np.float32)
    last[3, 3] = 0.9  # the last cell spans 768-1024 px, its centre 896 lies outside an 800 px slide
    assert detection_points(_heatmap(last, ds=256, size=(800, 800)), mpp=1.0)[0, 1:].tolist() == [799, 799]


def test_slide_score_methods_on_hand_numbers() -> None:
    scores = np.array([0.1, 0.9, 0.6, np.nan, 0.4])
    assert slide_score(scores, "max") == pytest.approx(0.9)
    assert slide_score(scores, "topk", top_k=2) == pytest.approx(0.75)
    assert slide_score(scores, "topk", top_k=10) == pytest.approx(0.5)  # fewer values than k: all of them
    assert slide_score(scores, "mean_above", threshold=0.5) == pytest.approx(0.75)
    assert slide_score(scores, "mean_above", threshold=0.95) == 0.0
    assert slide_score(_heatmap(np.array([[0.2, np.nan], [0.7, 0.3]])), "max") == pytest.approx(0.7)
    assert slide_score(np.array([np.nan]), "max") == 0.0
    with pytest.raises(ValueError, match="mean_above"):
        slide_score(scores, "median")


def test_detections_csv_is_camelyon16_format_and_written_when_empty(tmp_path) -> None:
    path = write_detections_csv(tmp_path / "s" / "detections.csv", np.array([[0.875, 352.0, 928.0], [0.5, 10, 20]]))
    assert path.read_text() == "0.875,352,928\n0.5,10,20\n"
    empty = write_detections_csv(tmp_path / "empty.csv", np.zeros((0, 3)))
    assert empty.exists() and empty.read_text() == ""
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["detections.csv", "empty.csv"]


def test_lesion_geojson_reads_back_with_the_same_areas(tmp_path) -> None:
    values = _two_blobs()
    values[16:20, 0:6] = 0.9
    values[17:19, 2:4] = 0.0  # a third lesion with a hole
    lesions = extract_lesions(_heatmap(values), threshold=0.5, mpp=MPP)
    path = write_lesions_geojson(tmp_path / "lesions.geojson", lesions)
    annotations = read_annotations(path)
    assert [p.kind for p in annotations.polygons] == ["tumour"] * 3
    read_areas = sorted(p.geometry.area * MPP**2 for p in annotations.polygons)
    assert read_areas == pytest.approx(sorted(lesion.area_um2 for lesion in lesions))
    assert annotations.region.area == pytest.approx((20 + 18 + 20) * DS**2)
