"""Masks and tile labels (anomalib_wsi/annotations/tile_labels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import GeometryCollection, LineString, Point, box

from anomalib_wsi.annotations import (
    Annotations,
    label_tiles,
    rasterise,
    read_annotations,
    region_mask,
    tumour_fractions,
    write_asap_xml,
)
from anomalib_wsi.slide import Slide

CAMELYON16_SIZE = (97792, 221184)  # level-0 (width, height) of a typical Camelyon16 slide


def _table(xs: np.ndarray, ys: np.ndarray, tile_size_lv0: float = 256.0) -> pd.DataFrame:
    """A tile table with the project's columns."""
    n = len(xs)
    return pd.DataFrame(
        {
            "slide_id": "s",
            "x": np.asarray(xs, dtype=np.int64),
            "y": np.asarray(ys, dtype=np.int64),
            "level": 0,
            "read_size_px": int(tile_size_lv0),
            "tile_size_px": int(tile_size_lv0),
            "tile_size_lv0": np.full(n, tile_size_lv0),
            "tissue_fraction": np.ones(n, dtype=np.float32),
        }
    )


def _grid(width: int, height: int, tile: int = 256) -> pd.DataFrame:
    xs, ys = np.meshgrid(np.arange(0, width - tile + 1, tile), np.arange(0, height - tile + 1, tile))
    return _table(xs.ravel(), ys.ravel(), float(tile))


def _annotations(tmp_path: Path, polygons: list[tuple[str, shapely.Polygon]]) -> Annotations:
    return read_annotations(write_asap_xml(tmp_path / "a.xml", polygons))


# --- rasterise -------------------------------------------------------------------------------------------------


def test_mask_pixel_covers_the_level0_square_it_stands_for() -> None:
    # Level-0 box [64, 96) x [32, 64) at downsample 32 is exactly mask pixel (row 1, col 2).
    mask = rasterise(box(64, 32, 96, 64), (4, 5), 32)
    assert mask.dtype == bool and mask.shape == (4, 5)
    assert np.argwhere(mask).tolist() == [[1, 2]]
    # A 10 x 10 px square fills 100 pixels, not 11 x 11 (no outline pixels).
    assert rasterise(box(0, 0, 10, 10), (20, 20), 1).sum() == 100
    assert rasterise(box(0.3, 0.3, 10.3, 10.3), (20, 20), 1).sum() == 100


@pytest.mark.parametrize(("downsample", "origin"), [(1.0, (0.0, 0.0)), (2.5, (-3.0, 7.0)), (32.0, (1000.0, 500.0))])
def test_rasterise_follows_the_pixel_centre_rule_with_holes_and_islands(
    downsample: float, origin: tuple[float, float]
) -> None:
    centre = (origin[0] + 50 * downsample, origin[1] + 50 * downsample)
    ring = Point(centre).buffer(40 * downsample).difference(Point(centre).buffer(15 * downsample))
    island = Point(centre).buffer(6 * downsample)  # inside the hole
    geometry = ring.union(island)
    mask = rasterise(geometry, (100, 100), downsample, origin_lv0=origin)
    rows, cols = np.mgrid[0:100, 0:100]
    expected = shapely.contains_xy(
        geometry, origin[0] + (cols + 0.5) * downsample, origin[1] + (rows + 0.5) * downsample
    )
    assert np.array_equal(mask, expected)
    assert not mask[50, 50 + 10]  # in the hole
    assert mask[50, 50]  # on the island


def test_rasterise_accepts_collections_and_clips_to_the_mask() -> None:
    collection = GeometryCollection([box(0, 0, 4, 4), LineString([(0, 0), (9, 9)]), box(6, 6, 8, 8)])
    assert rasterise(collection, (10, 10), 1).sum() == 16 + 4
    assert rasterise(box(-100, -100, 1e7, 5), (10, 10), 1).sum() == 50  # far outside: no overflow, clipped
    assert rasterise(box(20, 20, 30, 30), (10, 10), 1).sum() == 0
    assert rasterise(GeometryCollection(), (3, 3), 1).shape == (3, 3)


def test_region_mask_is_tumour_minus_exclusions_on_the_slide_grid(tmp_path: Path) -> None:
    ann = _annotations(tmp_path, [("_0", box(0, 0, 320, 320)), ("_2", box(0, 0, 160, 160))])
    mask = region_mask(ann, (1000, 700), 32)
    assert mask.shape == (22, 32)  # ceil(700 / 32), ceil(1000 / 32)
    assert mask.sum() == 100 - 25


def test_camelyon16_level5_mask_matches_the_polygon_area(shared_data: Path) -> None:
    ann = read_annotations(shared_data / "annotations" / "camelyon16" / "tumor_047.xml")
    mask = region_mask(ann, CAMELYON16_SIZE, 32)
    assert mask.shape == (6912, 3056)
    assert mask.sum() * 32 * 32 == pytest.approx(ann.region.area, rel=2e-3)


# --- tumour fractions and labels -------------------------------------------------------------------------------


def test_raster_fractions_agree_with_exact_intersections_on_camelyon16(shared_data: Path) -> None:
    ann = read_annotations(shared_data / "annotations" / "camelyon16" / "tumor_047.xml")
    table = _grid(*CAMELYON16_SIZE)
    assert len(table) == 382 * 864
    labelled = label_tiles(table, ann, slide_size_lv0=CAMELYON16_SIZE)
    counts = labelled["label"].value_counts().to_dict()
    assert counts[1] > 8000 and counts[-1] > 1000 and counts[0] > 300_000
    # 300 tiles on lesion boundaries plus 100 others, against the exact area of tile box ∩ region.
    fraction = labelled["tumour_fraction"].to_numpy()
    boundary = np.flatnonzero((fraction > 0) & (fraction < 1))
    rng = np.random.default_rng(0)
    picked = np.concatenate([rng.choice(boundary, 300, replace=False), rng.choice(len(table), 100, replace=False)])
    x = table["x"].to_numpy()[picked]
    y = table["y"].to_numpy()[picked]
    exact = shapely.area(shapely.intersection(shapely.box(x, y, x + 256, y + 256), ann.region)) / 256**2
    error = fraction[picked] - exact
    # Tolerance: 16 mask px per tile side; boundary pixels decided by their centre (measured max 0.021).
    assert np.abs(error).max() < 0.04
    assert abs(error.mean()) < 0.005  # no bias: outlines are not over-filled
    assert np.all(fraction[picked][exact == 0] == 0)


def test_label_rule_threshold_and_ignored_band(tmp_path: Path) -> None:
    # Tumour covers x in [0, 640) of the row: tiles 0-1 full, tile 2 half, tile 3 none.
    ann = _annotations(tmp_path, [("Tumor", box(0, 0, 640, 256))])
    table = _table(np.array([0, 256, 512, 768]), np.zeros(4))
    labelled = label_tiles(table, ann, slide_size_lv0=(2000, 2000))
    assert labelled["tumour_fraction"].tolist() == [1.0, 1.0, 0.5, 0.0]
    assert labelled["label"].tolist() == [1, 1, 1, 0]
    strict = label_tiles(table, ann, threshold=0.75, slide_size_lv0=(2000, 2000))
    assert strict["label"].tolist() == [1, 1, -1, 0]
    assert list(strict.columns) == [*table.columns, "tumour_fraction", "label"]
    assert "label" not in table.columns  # the input is not modified
    with pytest.raises(ValueError, match="threshold must be in"):
        label_tiles(table, ann, threshold=0)


def test_a_sliver_of_tumour_makes_a_tile_ignored_not_normal(tmp_path: Path) -> None:
    ann = _annotations(tmp_path, [("_0", box(250, 0, 262, 256))])  # 6 px into tile 0, 6 px into tile 1
    labelled = label_tiles(_table(np.array([0, 256, 512]), np.zeros(3)), ann, mask_downsample=2)
    assert labelled["tumour_fraction"].tolist() == pytest.approx([6 / 256, 6 / 256, 0.0])
    assert labelled["label"].tolist() == [-1, -1, 0]


def test_no_annotations_means_every_tile_is_normal() -> None:
    labelled = label_tiles(_grid(1024, 1024), None)
    assert (labelled["label"] == 0).all() and (labelled["tumour_fraction"] == 0).all()
    assert labelled["tumour_fraction"].dtype == np.float32


def test_slide_size_from_the_slide_clips_the_region(shared_data: Path, tmp_path: Path) -> None:
    slide = Slide(shared_data / "slides" / "real" / "CMU-1-Small-Region.svs")
    assert slide.dimensions == (2220, 2967)
    ann = _annotations(tmp_path, [("_0", box(2048, 0, 2476, 256))])  # reaches 256 px beyond the right edge
    table = _table(np.array([2048]), np.zeros(1))  # a tile across the edge: 172 of its 256 px are on the slide
    clipped = label_tiles(table, ann, slide=slide, mask_downsample=4)
    assert clipped["tumour_fraction"].tolist() == [172 / 256]
    assert label_tiles(table, ann, mask_downsample=4)["tumour_fraction"].tolist() == [1.0]  # no slide: not clipped


def test_fractions_for_mixed_tile_sizes_and_explicit_downsample(tmp_path: Path) -> None:
    ann = _annotations(tmp_path, [("_0", box(0, 0, 512, 512))])
    table = pd.concat([_table(np.array([256]), np.array([256]), 512.0), _table(np.array([0]), np.array([0]), 256.0)])
    fractions = tumour_fractions(ann, table, (4096, 4096), mask_downsample=8)
    assert fractions.tolist() == [0.25, 1.0]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['tile_size_lv0'\]"):
        tumour_fractions(ann, table.drop(columns="tile_size_lv0"), None)
