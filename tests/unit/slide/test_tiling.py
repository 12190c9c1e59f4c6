"""Tile tables: grid, tissue filter by integral image, level choice, cache keyed on the parameters."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from anomalib_wsi.errors import SlideReadError, SlideResolutionError, SlideTooSmallError
from anomalib_wsi.slide import TILE_COLUMNS, Slide, TilingConfig, load_or_tile, tile_slide, tiles_from_mask, tiling
from anomalib_wsi.slide.coverage import coverage_from_integral, mask_coverage, mask_integral
from anomalib_wsi.slide.reader import ReadPlan
from anomalib_wsi.slide.tiling import grid_positions
from anomalib_wsi.slide.tissue import TissueConfig, detect_tissue

CMU = "slides/real/CMU-1-Small-Region.svs"


def test_grid_positions_stay_inside() -> None:
    """Tiles start every stride from 0 and end at or before the slide edge (floored when the stride is fractional)."""
    np.testing.assert_array_equal(grid_positions(1000, 256, 256), [0, 256, 512])
    np.testing.assert_array_equal(grid_positions(1024, 256, 256), [0, 256, 512, 768])
    np.testing.assert_array_equal(grid_positions(1000, 256, 128), [0, 128, 256, 384, 512, 640])
    starts = grid_positions(2220, 513.03, 513.03)
    np.testing.assert_array_equal(starts, [0, 513, 1026, 1539])
    assert starts[-1] + 513.03 <= 2220
    assert grid_positions(200, 256, 256).size == 0


def test_tiles_from_mask_fractions() -> None:
    """A mask covering the left half of a 1024 px slide keeps the left tiles (1.0) and the straddling ones (0.5)."""
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True  # level-0 x < 512 at downsample 16
    plan = ReadPlan(
        target_mpp=0.5, tile_size_px=256, level=0, level_downsample=1.0, read_size_px=256, tile_size_lv0=256
    )
    table = tiles_from_mask(mask, 16.0, (1024, 1024), plan, min_tissue=0.5, slide_id="s")
    assert list(table.columns) == list(TILE_COLUMNS)
    assert len(table) == 8 and set(table.x) == {0, 256} and (table.tissue_fraction == 1).all()
    overlapping = tiles_from_mask(mask, 16.0, (1024, 1024), plan, stride_px=128, min_tissue=0.5)
    assert set(overlapping.x) == {0, 128, 256, 384}  # x=384 covers 384-640: half tissue, kept at 0.5
    assert overlapping.loc[overlapping.x == 384, "tissue_fraction"].eq(0.5).all()
    everything = tiles_from_mask(mask, 16.0, (1024, 1024), plan, min_tissue=0.0)
    assert len(everything) == 16 and everything.tissue_fraction.sum() == 8.0
    assert table.dtypes["x"] == np.int64 and table.dtypes["tissue_fraction"] == np.float32


def _every_grid_position(
    mask: np.ndarray, downsample: float, dims: tuple[int, int], plan: ReadPlan, stride_px: int, min_tissue: float
) -> pd.DataFrame:
    """The tile table as it was first built: score every grid position of the slide, keep the tissue ones."""
    stride_lv0 = stride_px * plan.tile_size_lv0 / plan.tile_size_px
    extent_lv0 = max(plan.tile_size_lv0, plan.read_size_px * plan.level_downsample)
    grid_y, grid_x = np.meshgrid(
        grid_positions(dims[1], extent_lv0, stride_lv0), grid_positions(dims[0], extent_lv0, stride_lv0), indexing="ij"
    )
    grid_x, grid_y = grid_x.ravel(), grid_y.ravel()
    fractions = mask_coverage(mask, downsample, grid_x, grid_y, plan.tile_size_lv0)
    keep = fractions >= min_tissue
    n = int(keep.sum())
    return pd.DataFrame(
        {
            "slide_id": pd.Series(["s"] * n, dtype=str),
            "x": grid_x[keep].astype(np.int64),
            "y": grid_y[keep].astype(np.int64),
            "level": np.full(n, plan.level, dtype=np.int64),
            "read_size_px": np.full(n, plan.read_size_px, dtype=np.int64),
            "tile_size_px": np.full(n, plan.tile_size_px, dtype=np.int64),
            "tissue_fraction": fractions[keep].astype(np.float32),
            "tile_size_lv0": np.full(n, plan.tile_size_lv0, dtype=np.float64),
        }
    )


def test_tiles_from_mask_equals_scoring_every_grid_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring only the grid rows / columns that meet tissue, in blocks, gives the very same table (rows, order,
    values, dtypes) as scoring every position: 5 masks x 3 strides x 6 thresholds, blocks of 7 tiles."""
    monkeypatch.setattr(tiling, "_BLOCK_TILES", 7)
    rng = np.random.default_rng(0)
    plan = ReadPlan(0.5, 64, 1, 4.0, 16, 60.5)  # tile side 60.5 level-0 px, read 16 px at downsample 4
    compared = 0
    for case in range(5):
        height, width = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2.0)
        mask = noise > np.quantile(noise, 0.8 + 0.04 * case)
        mask[:, : case * 3] = False  # empty columns on the left, as glass beside tissue
        downsample = 13.7 + case
        dims = (int(width * downsample) - case, int(height * downsample))
        for stride in (64, 32, 91):
            for min_tissue in (0.0, 1e-9, 1e-3, 0.25, 0.5, 1.0):
                expected = _every_grid_position(mask, downsample, dims, plan, stride, min_tissue)
                table = tiles_from_mask(mask, downsample, dims, plan, stride, min_tissue, slide_id="s")
                pd.testing.assert_frame_equal(table, expected, check_exact=True)
                compared += len(table)
    assert compared > 5000


def test_tile_table_memory_follows_the_tissue_not_the_claimed_size(make_claimed_slide: Callable[..., Path]) -> None:
    """Two small files claiming 102,400 and 409,600 px a side (16 times the area, 40,000 and 640,000 grid
    positions of 512 level-0 px) with the same 2048 px of tissue give the same (4 x 4) tiles, and tiling the
    larger claim takes no more memory (numpy, traced): 15 MiB for both, where scoring every grid position took
    15 and 95 MiB."""
    tissue = TissueConfig(mask_mpp=128.0, max_side_px=1024)  # both masks at 512 level-0 px per mask px
    config = TilingConfig(mpp=0.5, tile_size_px=256, tissue=tissue)
    tables, peaks = [], []
    for side in (102_400, 409_600):
        path = make_claimed_slide(f"claims_{side}.tif", (side, side))
        assert path.stat().st_size < 600_000
        with Slide(path) as slide:
            assert slide.dimensions == (side, side)
            mask = detect_tissue(slide, tissue)
            tracemalloc.start()
            try:
                tables.append(tile_slide(slide, config, mask))
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
    assert 14 <= len(tables[0]) <= 16 and (tables[0].tissue_fraction == 1).all()  # JPEG-softened corners
    assert set(tables[0].x) == set(tables[0].y) == {0, 512, 1024, 1536}
    pd.testing.assert_frame_equal(tables[0].drop(columns="slide_id"), tables[1].drop(columns="slide_id"))
    assert peaks[1] < peaks[0] + 4 * 2**20, peaks
    assert peaks[1] < 40 * 2**20, peaks  # the probe read of one 2048 px JPEG tile is most of it


def test_mask_integral_is_exact_in_int32() -> None:
    """The integral image counts tissue pixels exactly (int32), and coverage agrees with a float64 integral."""
    rng = np.random.default_rng(1)
    mask = rng.random((300, 200)) > 0.5
    integral = mask_integral(mask)
    assert integral.dtype == np.int32 and integral[-1, -1] == mask.sum()
    xs, ys = rng.uniform(-50, 3000, 500), rng.uniform(-50, 4500, 500)
    reference = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
    np.testing.assert_array_equal(
        coverage_from_integral(integral, 15.0, xs, ys, 100.0), coverage_from_integral(reference, 15.0, xs, ys, 100.0)
    )


def test_tiling_config_validation() -> None:
    """Bad settings are refused naming the field; a stride defaults to the tile size."""
    assert TilingConfig(tile_size_px=224).effective_stride_px == 224
    assert TilingConfig(stride_px=128).effective_stride_px == 128
    for kwargs, field in (
        ({"mpp": 0}, "mpp"),
        ({"tile_size_px": 0}, "tile_size_px"),
        ({"tile_size_px": 25.5}, "tile_size_px"),
        ({"stride_px": 0}, "stride_px"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"mpp_tolerance": -0.1}, "mpp_tolerance"),
    ):
        with pytest.raises(ValueError, match=f"TilingConfig.{field}"):
            TilingConfig(**kwargs)  # type: ignore[arg-type]


def test_synthetic_slide_tiles_cover_the_tissue_box_only(make_slide: Callable[..., Path]) -> None:
    """The 2048 x 1536 px tissue box at (1024, 512) gives exactly its 8 x 6 tiles; the green ink gives none."""
    slide = Slide(make_slide())
    table = tile_slide(slide, TilingConfig(mpp=0.5, tile_size_px=256))
    assert len(table) == 48
    assert sorted(set(table.x)) == list(range(1024, 3072, 256))
    assert sorted(set(table.y)) == list(range(512, 2048, 256))
    assert table.tissue_fraction.min() > 0.99
    assert (table.level == 0).all() and (table.read_size_px == 256).all() and (table.tile_size_lv0 == 256).all()
    assert (table.slide_id == "slide").all()
    half = tile_slide(slide, TilingConfig(stride_px=128, min_tissue=0.9))
    assert len(half) == 15 * 11  # tiles starting every 128 px that lie inside the box
    coarse = tile_slide(slide, TilingConfig(mpp=2.0, tile_size_px=64))  # level 1 (2 µm/px), 256 px at level 0
    assert len(coarse) == 48 and (coarse.level == 1).all() and (coarse.read_size_px == 64).all()


def test_tile_slide_errors(make_slide: Callable[..., Path]) -> None:
    """No mpp, a target finer than the slide, and a slide smaller than one tile each fail with their own error."""
    with pytest.raises(SlideResolutionError, match="--slide-mpp"):
        tile_slide(Slide(make_slide(name="nompp.tif", mpp=None)), TilingConfig())
    slide = Slide(make_slide())
    with pytest.raises(SlideResolutionError, match="finer than the slide"):
        tile_slide(slide, TilingConfig(mpp=0.25))
    with pytest.raises(SlideTooSmallError, match="smaller than one 4096 px tile"):
        tile_slide(slide, TilingConfig(tile_size_px=4096))


def test_cmu_tiles_at_half_micron_lie_on_the_tissue(shared_data: Path) -> None:
    """CMU-1-Small-Region at 0.5 µm/px: 32 tiles of 256 px, read as is, all on the vertical band of tissue.

    Checked on the tissue.png this writes (tile_command): the tissue is one band from x ~500 to ~1900, from the
    top (y ~90) down to the bottom edge, with glass on both sides; a thin strand of stroma reaches left at y ~1000
    and is too narrow for a tile. The 32 tiles fill the band in columns x = 512-1536, rows y = 256-2560; none lie
    in the glass left of x = 512 or right of x = 1792; the last row ends at 2816 (2967 leaves no room for another).
    """
    slide = Slide(shared_data / CMU)
    table = tile_slide(slide, TilingConfig(mpp=0.5, tile_size_px=256))
    assert 28 <= len(table) <= 36  # 32 with the default tissue settings
    assert (table.read_size_px == 256).all() and (table.tile_size_px == 256).all() and (table.level == 0).all()
    assert table.x.min() >= 512 and (table.x + 256).max() <= 1792
    assert table.y.min() >= 256 and (table.y + 256).max() <= 2816
    assert table.tissue_fraction.min() >= 0.5 and table.tissue_fraction.median() == 1.0
    # every kept tile is mostly stained: its mean saturation is well above glass (~5 on 0-255)
    plan = slide.plan_read(0.5, 256)
    tiles = [slide.read_tile(x, y, plan) for x, y in zip(table.x, table.y, strict=True)]
    assert min(cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)[..., 1].mean() for tile in tiles) > 25


def test_cmu_tiles_at_one_micron_are_downsampled_reads(shared_data: Path) -> None:
    """At 1.0 µm/px the 0.499 µm/px slide is read at 513 px and resized to 256; tiles span 513 level-0 px."""
    table = tile_slide(Slide(shared_data / CMU), TilingConfig(mpp=1.0, tile_size_px=256))
    assert 4 <= len(table) <= 8
    assert (table.read_size_px == 513).all() and (table.tile_size_px == 256).all()
    assert table.tile_size_lv0.iloc[0] == pytest.approx(513.03, abs=0.01)
    assert set(table.x) <= {0, 513, 1026, 1539} and table.x.min() >= 513  # the band, not the glass at x < 500


def test_unreadable_pixels_fail_at_tiling(shared_data: Path) -> None:
    """unreadable.svs opens but its pixels do not decode: tiling fails on the thumbnail read, not later."""
    slide = Slide(shared_data / "slides/broken/unreadable.svs")
    with pytest.raises(SlideReadError, match=r"unreadable\.svs: cannot read pixels"):
        tile_slide(slide, TilingConfig(tile_size_px=8))


def test_load_or_tile_cache(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """The second call reads the cache (no mask returned, tiles.csv untouched); a new parameter recomputes."""
    path = make_slide()
    cache = tmp_path / "cache" / "slide"
    first, tissue = load_or_tile(path, TilingConfig(), cache)
    assert tissue is not None and len(first) == 48
    csv = cache / "tiles.csv"
    assert csv.is_file() and (cache / "tiles.json").is_file()
    stamp = csv.stat().st_mtime_ns
    again, tissue = load_or_tile(path, TilingConfig(), cache)
    assert tissue is None and csv.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again, first)
    smaller, tissue = load_or_tile(path, TilingConfig(tile_size_px=128), cache)
    assert tissue is not None and len(smaller) == 4 * 48 and csv.stat().st_mtime_ns != stamp
    _, tissue = load_or_tile(path, TilingConfig(tile_size_px=128), cache, slide_mpp=0.5)  # mpp given: new key
    assert tissue is not None
    _, tissue = load_or_tile(path, TilingConfig(tile_size_px=128), cache, slide_mpp=0.5)
    assert tissue is None
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the slide file changed
    _, tissue = load_or_tile(path, TilingConfig(tile_size_px=128), cache, slide_mpp=0.5)
    assert tissue is not None


def test_load_or_tile_ignores_a_damaged_cache(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """A truncated tiles.csv or garbled tiles.json is recomputed, never trusted; slide ids stay text."""
    path = make_slide(name="001.tif")
    first, _ = load_or_tile(path, TilingConfig(), tmp_path)
    assert (first.slide_id == "001").all()
    (tmp_path / "tiles.csv").write_text("slide_id,x\n001,0\n")
    table, tissue = load_or_tile(path, TilingConfig(), tmp_path)
    assert tissue is not None and len(table) == 48
    (tmp_path / "tiles.json").write_text("{not json")
    table, tissue = load_or_tile(path, TilingConfig(), tmp_path)
    assert tissue is not None and len(table) == 48
    cached, tissue = load_or_tile(path, TilingConfig(), tmp_path)
    assert tissue is None and cached.slide_id.tolist() == ["001"] * 48
