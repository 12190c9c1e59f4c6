"""Tests of anomalib_wsi/post_processing/stitch.py: tile scores and maps onto a slide-sized grid."""

from __future__ import annotations

import numpy as np
import pytest

from anomalib_wsi.post_processing.stitch import HeatmapAccumulator, stitch_tile_scores


def _half_stride_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 x 3 tiles of 256 px at stride 128 on a 512 x 512 slide; tile (i, j) scores 1 + i + 3 j."""
    js, is_ = np.mgrid[0:3, 0:3]
    return (is_ * 128).ravel(), (js * 128).ravel(), (1 + is_ + 3 * js).ravel().astype(float)


def test_overlapping_tiles_are_averaged_per_cell() -> None:
    xs, ys, scores = _half_stride_grid()
    heatmap = stitch_tile_scores(xs, ys, scores, tile_size_lv0=256, stride_lv0=128, slide_size_lv0=(512, 512))
    assert heatmap.downsample == 128
    assert heatmap.shape == (4, 4)
    # cell (1, 1) lies under tiles (0,0)=1, (1,0)=2, (0,1)=4, (1,1)=5: their mean
    assert heatmap.values[1, 1] == pytest.approx((1 + 2 + 4 + 5) / 4)
    # hand-computed means of every cell (corners: one tile, edges: two, inside: four)
    expected = np.array(
        [
            [1.0, 1.5, 2.5, 3.0],
            [2.5, 3.0, 4.0, 4.5],
            [5.5, 6.0, 7.0, 7.5],
            [7.0, 7.5, 8.5, 9.0],
        ]
    )
    np.testing.assert_allclose(heatmap.values, expected, rtol=1e-6)
    assert heatmap.values.dtype == np.float32


def test_cells_without_tiles_are_nan() -> None:
    heatmap = stitch_tile_scores([0], [256], [0.7], tile_size_lv0=256, stride_lv0=256, slide_size_lv0=(768, 512))
    assert heatmap.shape == (2, 3)
    assert heatmap.values[1, 0] == pytest.approx(0.7)
    assert np.isnan(heatmap.values).sum() == 5
    assert heatmap.scored_fraction == pytest.approx(1 / 6)


def test_heatmap_of_a_camelyon_sized_slide_stays_small() -> None:
    width, height, tile = 100_000, 200_000, 256
    ys, xs = np.mgrid[0 : height - tile + 1 : tile, 0 : width - tile + 1 : tile]
    scores = np.random.default_rng(0).random(xs.size)
    heatmap = stitch_tile_scores(xs.ravel(), ys.ravel(), scores, tile, tile, (width, height))
    assert heatmap.shape == (782, 391)  # ceil(200000 / 256), ceil(100000 / 256)
    assert heatmap.values.nbytes < 1.3e6  # 1.2 MB, while a level-0 canvas would be 80 GB
    assert heatmap.values[10, 20] == pytest.approx(scores[10 * xs.shape[1] + 20])


def test_streaming_batches_equal_one_shot_stitching() -> None:
    xs, ys, scores = _half_stride_grid()
    acc = HeatmapAccumulator((512, 512), tile_size_lv0=256, stride_lv0=128, slide_id="s1")
    for part in np.array_split(np.arange(9), 3):
        acc.add(xs[part], ys[part], scores[part])
    one_shot = stitch_tile_scores(xs, ys, scores, 256, 128, (512, 512))
    result = acc.result()
    np.testing.assert_array_equal(result.values, one_shot.values)
    assert result.slide_id == "s1"
    assert acc.n_tiles == 9


def test_fractional_level0_tile_size_gives_one_cell_per_tile_without_gaps() -> None:
    # 256 px tiles at 0.5 µm/px on a 0.243 µm/px slide: 526.75 level-0 px, positions rounded by the tiler
    tile = 256 * 0.5 / 0.243
    cols, rows = 7, 5
    js, is_ = np.mgrid[0:rows, 0:cols]
    xs, ys = np.round(is_ * tile).ravel(), np.round(js * tile).ravel()
    scores = np.arange(rows * cols, dtype=float)
    heatmap = stitch_tile_scores(xs, ys, scores, tile, tile, (int(cols * tile), int(rows * tile)))
    assert heatmap.shape == (rows, cols)
    np.testing.assert_array_equal(heatmap.values, scores.reshape(rows, cols))


def test_anomaly_maps_are_pasted_at_finer_resolution() -> None:
    tile_map = np.zeros((1, 64, 64), dtype=np.float32)
    tile_map[0, :, :32] = 1.0  # left half of the tile anomalous
    acc = HeatmapAccumulator((512, 256), tile_size_lv0=256, stride_lv0=256, cells_per_tile=4)
    acc.add([256], [0], [0.5], maps=tile_map)
    heatmap = acc.result()
    assert heatmap.downsample == 64
    assert heatmap.shape == (4, 8)
    assert heatmap.source == "map"
    np.testing.assert_array_equal(heatmap.values[:, 4:6], 1.0)
    np.testing.assert_array_equal(heatmap.values[:, 6:8], 0.0)
    assert np.isnan(heatmap.values[:, :4]).all()


def test_overlapping_maps_are_averaged_and_odd_map_sizes_use_area_interpolation() -> None:
    # 50 x 50 maps do not divide into 4 x 4 cells: cv2 area interpolation (12.5 px per cell)
    left = np.zeros((50, 50), dtype=np.float32)
    left[:, :25] = 1.0
    maps = np.stack([left, np.full((50, 50), 0.5, dtype=np.float32)])
    acc = HeatmapAccumulator((384, 256), tile_size_lv0=256, stride_lv0=128, cells_per_tile=4)
    acc.add([0, 128], [0, 0], [0.0, 0.0], maps=maps)
    values = acc.result().values
    assert acc.downsample == 64
    np.testing.assert_allclose(values[:, 0:2], 1.0, rtol=1e-6)  # first tile's left half only
    np.testing.assert_allclose(values[:, 2:4], 0.25, rtol=1e-6)  # mean of 0 (first tile) and 0.5 (second)
    np.testing.assert_allclose(values[:, 4:6], 0.5, rtol=1e-6)  # second tile only


def test_tiles_reaching_past_the_slide_are_clipped_not_wrapped() -> None:
    heatmap = stitch_tile_scores([384], [0], [0.9], 256, 256, (500, 256))
    assert heatmap.shape == (1, 2)
    assert heatmap.values[0, 1] == pytest.approx(0.9)
    assert np.isnan(heatmap.values[0, 0])


def test_mismatched_inputs_are_rejected() -> None:
    acc = HeatmapAccumulator((512, 512), 256, 256)
    with pytest.raises(ValueError, match="one value per tile"):
        acc.add([0, 256], [0], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        acc.add([0], [0], [0.1], maps=np.zeros((2, 8, 8)))


def test_maps_pooled_beforehand_to_the_tile_span_give_the_same_heatmap() -> None:
    maps = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    full = HeatmapAccumulator((512, 256), tile_size_lv0=256, stride_lv0=128)
    assert full.cells_per_tile_side == 2  # half-stride tiles cover 2 x 2 cells
    full.add([0, 128], [0, 0], [0.0, 0.0], maps=maps)
    pooled = HeatmapAccumulator((512, 256), tile_size_lv0=256, stride_lv0=128)
    pooled.add([0, 128], [0, 0], [0.0, 0.0], maps=maps.reshape(2, 2, 32, 2, 32).mean(axis=(2, 4)))
    np.testing.assert_allclose(pooled.result().values, full.result().values, rtol=1e-6)
