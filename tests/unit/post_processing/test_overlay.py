"""Tests of anomalib_wsi/post_processing/overlay.py: the heatmap as a pyramidal TIFF read back by openslide.

A level-0 point of the slide is mapped through the heatmap (cell ``point // heatmap.downsample``) and through the
overlay (pixel ``point // level_downsample``, read with openslide and tifffile); both must give the same score.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from anomalib_wsi.post_processing.overlay import heatmap_tiff_levels, write_heatmap_tiff
from anomalib_wsi.post_processing.stitch import Heatmap

CELL, LEVEL_DS, MPP, TILE = 256.0, 4.0, 0.25, 128
SLIDE = (1250, 1500)  # 5 x 6 cells, the last ones partial; overlay pages 312 x 375, 156 x 188, 78 x 94


def _heatmap() -> Heatmap:
    rng = np.random.default_rng(7)
    values = rng.random((6, 5)).astype(np.float32)
    values[0, 1] = values[4, 4] = np.nan  # not scored
    values[2, 2], values[3, 0] = 1.7, -0.3  # outside [0, 1]: clipped by uint8 / rgba, kept by float32
    return Heatmap(values, CELL, "s", SLIDE)


def _points() -> np.ndarray:
    """Level-0 points (x, y) inside the overlay's first page (its last partial pixel column/row excluded)."""
    rng = np.random.default_rng(0)
    width, height = heatmap_tiff_levels(SLIDE, LEVEL_DS, TILE)[0]
    points = rng.integers(0, [width * LEVEL_DS, height * LEVEL_DS], size=(300, 2))
    corners = np.array([[0, 0], [255, 255], [256, 256], [1023, 767], [1024, 1279], [1247, 1499]])
    return np.concatenate([points, corners])


def _cell_value(heatmap: Heatmap, x: int, y: int) -> float:
    return float(heatmap.values[int(y // CELL), int(x // CELL)])


def _as_uint8(value: float) -> int:
    return 0 if np.isnan(value) else round(min(max(value, 0.0), 1.0) * 255)


def test_openslide_reads_levels_mpp_and_the_heatmap_value_of_every_point(tmp_path: Path) -> None:
    heatmap = _heatmap()
    path = write_heatmap_tiff(tmp_path / "heatmap.tif", heatmap, MPP, level_downsample=LEVEL_DS, tile_size=TILE)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == ((312, 375), (156, 188), (78, 94))  # floor(slide / 4), then halved
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP * LEVEL_DS)  # 1 µm per pixel
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP * LEVEL_DS)
        page = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))
        reduced = [np.asarray(slide.read_region((0, 0), k, slide.level_dimensions[k])) for k in (1, 2)]
    for x, y in _points():
        expected = _as_uint8(_cell_value(heatmap, x, y))
        pixel = page[int(y // LEVEL_DS), int(x // LEVEL_DS)]
        assert pixel.tolist() == [expected, expected, expected, 255], (x, y)  # grey, opaque
    # reduced levels: every pixel whose level-0 footprint lies inside one heatmap cell has that cell's value
    checked = 0
    for k, level in enumerate(reduced, start=1):
        ds_y, ds_x = SLIDE[1] // LEVEL_DS / level.shape[0] * LEVEL_DS, SLIDE[0] // LEVEL_DS / level.shape[1] * LEVEL_DS
        for i in range(level.shape[0]):
            row0, row1 = int(i * ds_y // CELL), int(((i + 1) * ds_y - 1e-6) // CELL)
            for j in range(level.shape[1]):
                col0, col1 = int(j * ds_x // CELL), int(((j + 1) * ds_x - 1e-6) // CELL)
                if row0 == row1 and col0 == col1:
                    assert level[i, j, 0] == _as_uint8(float(heatmap.values[row0, col0])), (k, i, j)
                    checked += 1
    assert checked > 0.8 * sum(level.shape[0] * level.shape[1] for level in reduced)


def test_tifffile_sees_a_tiled_lossless_pyramid_with_scaled_resolution(tmp_path: Path) -> None:
    path = write_heatmap_tiff(tmp_path / "heatmap.tif", _heatmap(), MPP, level_downsample=LEVEL_DS, tile_size=TILE)
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert [p.shape for p in pages] == [(375, 312), (188, 156), (94, 78)]
        assert [int(p.subfiletype) for p in pages] == [0, 1, 1]  # reduced-resolution pages, as openslide reads them
        for page, ds in zip(pages, (4.0, 8.0, 16.0), strict=True):
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (TILE, TILE)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE  # zlib: lossless
            assert page.dtype == np.uint8
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            x_res, y_res = page.resolution
            assert 1e4 / x_res == pytest.approx(MPP * ds, rel=0.01)  # µm per pixel of the page
            assert 1e4 / y_res == pytest.approx(MPP * ds, rel=0.01)


def test_float32_keeps_the_scores_and_nan_and_openslide_reports_but_cannot_decode_it(tmp_path: Path) -> None:
    heatmap = _heatmap()
    path = write_heatmap_tiff(
        tmp_path / "heatmap.tif", heatmap, MPP, level_downsample=LEVEL_DS, mode="float32", tile_size=TILE
    )
    page = tifffile.imread(path)
    assert page.dtype == np.float32 and page.shape == (375, 312)
    for x, y in _points():
        value = _cell_value(heatmap, x, y)
        got = page[int(y // LEVEL_DS), int(x // LEVEL_DS)]
        assert (np.isnan(got) and np.isnan(value)) or got == np.float32(value), (x, y)  # 1.7 and -0.3 kept
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 3
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP * LEVEL_DS)
        with pytest.raises(openslide.OpenSlideError, match="32-bit samples"):
            slide.read_region((0, 0), 0, (1, 1))


def test_rgba_is_the_turbo_colour_map_transparent_where_not_scored(tmp_path: Path) -> None:
    from matplotlib import colormaps

    heatmap = _heatmap()
    path = write_heatmap_tiff(
        tmp_path / "heatmap.tif", heatmap, MPP, level_downsample=LEVEL_DS, mode="rgba", tile_size=TILE
    )
    exact = tifffile.imread(path)
    assert exact.shape == (375, 312, 4)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 3
        seen = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))
    for x, y in _points():
        value = _cell_value(heatmap, x, y)
        row, col = int(y // LEVEL_DS), int(x // LEVEL_DS)
        if np.isnan(value):
            assert exact[row, col].tolist() == [0, 0, 0, 0] and seen[row, col, 3] == 0
            continue
        level = _as_uint8(value) / 255
        rgb = np.round(np.asarray(colormaps["turbo"](level)[:3]) * 255)
        alpha = round((0.08 + 0.72 * level) * 255)  # opacity rising with the score, as heatmap.png
        assert exact[row, col].tolist() == [*rgb.astype(int).tolist(), alpha], (x, y)
        # openslide premultiplies by the alpha and back: exact up to 255 / alpha levels
        assert seen[row, col, 3] == alpha
        assert np.abs(seen[row, col, :3].astype(int) - rgb).max() <= 255 / alpha + 1, (x, y)


def test_camelyon_sized_overlay_uses_tiles_not_a_canvas(tmp_path: Path) -> None:
    width, height = 100_003, 200_007  # not a multiple of the downsample
    values = np.random.default_rng(0).random((391, 196)).astype(np.float32)
    heatmap = Heatmap(values, 512.0, "big", (width, height))
    levels = heatmap_tiff_levels((width, height), 32, 256)
    assert levels[0] == (3125, 6250)
    # ASAP scales an overlay by the whole-number ratio of the sizes, and needs it to be the same on both axes
    assert width // levels[0][0] == height // levels[0][1] == 32
    tracemalloc.start()
    try:
        write_heatmap_tiff(tmp_path / "heatmap.tif", heatmap, 0.243, level_downsample=32, mode="rgba")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    canvas = levels[0][0] * levels[0][1] * 4  # 78 MB for the first page alone
    assert peak < canvas / 10
    with openslide.OpenSlide(str(tmp_path / "heatmap.tif")) as slide:
        assert slide.level_dimensions[0] == (3125, 6250)
        assert slide.level_count == len(levels) == 6


def test_bad_settings_are_one_line_errors_naming_the_fix(tmp_path: Path) -> None:
    heatmap = _heatmap()
    with pytest.raises(ValueError, match=r"mode='jpeg' \(use one of uint8, float32, rgba\)"):
        write_heatmap_tiff(tmp_path / "h.tif", heatmap, MPP, mode="jpeg")
    with pytest.raises(ValueError, match="slide_mpp=0"):
        write_heatmap_tiff(tmp_path / "h.tif", heatmap, 0)
    with pytest.raises(ValueError, match="level_downsample=-4"):
        write_heatmap_tiff(tmp_path / "h.tif", heatmap, MPP, level_downsample=-4)
    with pytest.raises(ValueError, match=r"tile_size=100 .*multiple of 16"):
        write_heatmap_tiff(tmp_path / "h.tif", heatmap, MPP, tile_size=100)
    with pytest.raises(ValueError, match="value_range"):
        write_heatmap_tiff(tmp_path / "h.tif", heatmap, MPP, value_range=(1.0, 1.0))
    assert not list(tmp_path.iterdir())
