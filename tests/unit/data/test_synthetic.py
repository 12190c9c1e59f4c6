"""Synthetic slides: openslide reads them at the right mpp, tumour looks like tumour where the XML says so."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from shapely.geometry import Polygon, box
from shapely.ops import polylabel, unary_union

from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import (
    SyntheticSlide,
    SynthOptionError,
    synthesize_cohort,
    synthesize_slide,
)
from anomalib_wsi.errors import WSIError
from anomalib_wsi.slide.reader import Slide

SIZE_PX = 4096
TILE_PX = 128  # 64 µm at 0.5 mpp


@pytest.fixture(scope="module")
def tumour_slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """A 4096 px tumour slide at 0.5 mpp (about one second to write)."""
    return synthesize_slide(tmp_path_factory.mktemp("synth") / "tumour.tif", size_px=SIZE_PX, mpp=0.5, seed=3)


def _tiles_where(slide: SyntheticSlide, keep) -> list[tuple[int, int]]:
    """Top-left corners of the TILE_PX grid tiles whose box satisfies ``keep``."""
    return [
        (x, y)
        for y in range(0, SIZE_PX - TILE_PX + 1, TILE_PX)
        for x in range(0, SIZE_PX - TILE_PX + 1, TILE_PX)
        if keep(box(x, y, x + TILE_PX, y + TILE_PX))
    ]


def _stats(tile: np.ndarray) -> tuple[float, float, float]:
    """Mean gray, fraction of dark (hematoxylin) pixels, mean blue minus red."""
    rgb = tile.astype(np.float64)
    gray = rgb.mean(axis=-1)
    return float(gray.mean()), float((gray < 120).mean()), float((rgb[..., 2] - rgb[..., 0]).mean())


def test_openslide_opens_it_with_the_written_mpp_and_a_pyramid(tumour_slide: SyntheticSlide) -> None:
    with Slide(tumour_slide.path) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.mpp == pytest.approx(0.5, abs=1e-6)
        assert slide.level_count == 3
        assert slide.level_dimensions == [(4096, 4096), (2048, 2048), (1024, 1024)]
        assert slide.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert tumour_slide.level_dimensions == slide.level_dimensions
        region = slide.read_region(1000, 1000, 1, (200, 100))
        assert region.shape == (100, 200, 3) and region.dtype == np.uint8
    with tifffile.TiffFile(tumour_slide.path) as tif:
        assert tif.is_bigtiff
        assert [p.subfiletype for p in tif.pages] == [0, 1, 1]
        assert all(p.tilewidth == 256 and p.compression == 7 for p in tif.pages)  # 7 = JPEG


def test_non_square_slide_at_quarter_micron(tmp_path: Path) -> None:
    info = synthesize_slide(tmp_path / "wide.tif", size_px=(1536, 1024), mpp=0.25, seed=1, tumour=False)
    assert info.size_px == (1536, 1024)
    assert info.annotation_path is None and info.tumour_polygons == [] and info.exclusion_polygons == []
    assert not (tmp_path / "wide.xml").exists()
    with Slide(info.path) as slide:
        assert slide.dimensions == (1536, 1024)
        assert slide.mpp == pytest.approx(0.25, abs=1e-6)


def test_geometry_is_nested_lesions_in_tissue_exclusions_in_lesions(tumour_slide: SyntheticSlide) -> None:
    assert 1 <= len(tumour_slide.tumour_polygons) <= 3
    assert len(tumour_slide.exclusion_polygons) >= 1
    tissue = tumour_slide.tissue_region
    for lesion in tumour_slide.tumour_polygons:
        assert lesion.is_valid and tissue.contains(lesion)
    for hole in tumour_slide.exclusion_polygons:
        assert any(lesion.contains(hole) for lesion in tumour_slide.tumour_polygons)
    # the first lesion is big enough to hold many 64 µm tiles
    assert tumour_slide.tumour_region.area > 20 * TILE_PX**2


def test_tumour_tiles_are_darker_and_more_purple_than_normal_tissue(tumour_slide: SyntheticSlide) -> None:
    tumour = tumour_slide.tumour_region
    lesions = unary_union(tumour_slide.tumour_polygons)
    tissue = tumour_slide.tissue_region
    tumour_xy = _tiles_where(tumour_slide, tumour.contains)
    normal_xy = _tiles_where(tumour_slide, lambda b: tissue.contains(b) and b.distance(lesions) > 0)
    assert len(tumour_xy) >= 10 and len(normal_xy) >= 30
    with Slide(tumour_slide.path) as slide:
        t_stats = np.array([_stats(slide.read_region(x, y, 0, (TILE_PX, TILE_PX))) for x, y in tumour_xy])
        n_stats = np.array([_stats(slide.read_region(x, y, 0, (TILE_PX, TILE_PX))) for x, y in normal_xy])
    # every tile, not only on average: tumour gray <= 155 with >= 25 % hematoxylin-dark pixels, normal the opposite
    assert t_stats[:, 0].max() <= 155 and n_stats[:, 0].min() >= 165
    assert t_stats[:, 1].min() >= 0.25 and n_stats[:, 1].max() <= 0.12
    assert t_stats[:, 2].min() >= -5 and n_stats[:, 2].max() <= -8  # purple (blue ~ red) vs pink (red > blue)
    assert n_stats[:, 0].mean() - t_stats[:, 0].mean() >= 30


def test_exclusions_inside_a_lesion_look_like_normal_tissue(tumour_slide: SyntheticSlide) -> None:
    with Slide(tumour_slide.path) as slide:
        for hole in tumour_slide.exclusion_polygons:
            centre = polylabel(hole, tolerance=1.0)
            half = int(hole.exterior.distance(centre) * 0.6)
            assert half >= 16, "each _2 region holds at least a 32 px square"
            patch = slide.read_region(int(centre.x) - half, int(centre.y) - half, 0, (2 * half, 2 * half))
            gray, dark, blue_minus_red = _stats(patch)
            assert gray >= 165 and dark <= 0.12 and blue_minus_red <= -8


def test_background_is_near_white_and_unsaturated(tumour_slide: SyntheticSlide) -> None:
    tissue = tumour_slide.tissue_region.buffer(8)
    background_xy = _tiles_where(tumour_slide, lambda b: not b.intersects(tissue))
    assert len(background_xy) >= 100
    with Slide(tumour_slide.path) as slide:
        tiles = np.stack([slide.read_region(x, y, 0, (TILE_PX, TILE_PX)) for x, y in background_xy[::10]])
    assert tiles.astype(np.float64).mean() >= 235 and tiles.min() >= 220
    saturation = np.stack([cv2.cvtColor(t, cv2.COLOR_RGB2HSV)[..., 1] for t in tiles])
    assert saturation.mean() <= 10


def _read_asap(path: Path) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {}
    for annotation in ET.parse(path).getroot().iter("Annotation"):
        coords = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order", "0")))
        xy = np.array([(float(c.get("X", "nan")), float(c.get("Y", "nan"))) for c in coords])
        groups.setdefault(annotation.get("PartOfGroup", ""), []).append(xy)
    return groups


def test_asap_xml_holds_the_returned_polygons_in_groups_0_and_2(tumour_slide: SyntheticSlide) -> None:
    assert tumour_slide.annotation_path == tumour_slide.path.with_suffix(".xml")
    groups = _read_asap(tumour_slide.annotation_path)
    assert set(groups) == {"_0", "_2"}
    for group, polygons in (("_0", tumour_slide.tumour_polygons), ("_2", tumour_slide.exclusion_polygons)):
        assert len(groups[group]) == len(polygons)
        for xy, polygon in zip(groups[group], polygons, strict=True):
            np.testing.assert_allclose(xy, np.asarray(polygon.exterior.coords)[:-1], atol=1e-6)
            assert Polygon(xy).is_valid and xy.max() < SIZE_PX and xy.min() > 0  # level-0 pixels


def test_same_seed_gives_the_same_pixels_and_another_seed_does_not(tmp_path: Path) -> None:
    first = synthesize_slide(tmp_path / "a.tif", size_px=2048, seed=7, workers=1)
    again = synthesize_slide(tmp_path / "b.tif", size_px=2048, seed=7, workers=2)
    other = synthesize_slide(tmp_path / "c.tif", size_px=2048, seed=8)
    for level in range(2):
        a, b = tifffile.imread(first.path, key=level), tifffile.imread(again.path, key=level)
        np.testing.assert_array_equal(a, b)
    assert [p.wkt for p in first.tumour_polygons] == [p.wkt for p in again.tumour_polygons]
    difference = np.abs(tifffile.imread(first.path).astype(np.int16) - tifffile.imread(other.path))
    assert difference.mean() > 5


def test_cli_writes_slides_annotations_and_labels(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    assert main(["synth", "--output", str(out), "--slides", "3", "--size", "1024", "--seed", "1"]) == 0
    slides = sorted(p.name for p in (out / "slides").iterdir())
    assert slides == ["synth_000.tif", "synth_001.tif", "synth_002.tif"]
    with (out / "labels.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["slide_id", "label"]
    labels = dict(rows[1:])
    assert sorted(labels) == ["synth_000", "synth_001", "synth_002"]
    assert set(labels.values()) == {"tumor", "normal"}
    xml = sorted(p.stem for p in (out / "annotations").iterdir())
    assert xml == sorted(k for k, v in labels.items() if v == "tumor")
    with Slide(out / "slides" / "synth_000.tif") as slide:
        assert slide.dimensions == (1024, 1024) and slide.mpp == pytest.approx(0.5)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_cohort_of_two_always_has_one_tumour_and_one_normal_slide(tmp_path: Path, fraction: float) -> None:
    cohort = synthesize_cohort(tmp_path, n_slides=2, size_px=512, tumour_fraction_of_slides=fraction)
    assert len(cohort.tumour_slide_ids) == 1 and len(cohort.normal_slide_ids) == 1
    tumour_id = cohort.tumour_slide_ids[0]
    assert list(cohort.annotations) == [tumour_id]
    assert cohort.annotations[tumour_id] == tmp_path / "annotations" / f"{tumour_id}.xml"
    assert cohort.slide_details[tumour_id].tumour_polygons
    assert cohort.slides == [tmp_path / "slides" / "synth_000.tif", tmp_path / "slides" / "synth_001.tif"]


def test_rewriting_a_cohort_removes_slides_of_the_earlier_one(tmp_path: Path) -> None:
    synthesize_cohort(tmp_path, n_slides=4, size_px=512, seed=0)
    cohort = synthesize_cohort(tmp_path, n_slides=2, size_px=512, seed=0)
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == ["synth_000.tif", "synth_001.tif"]
    assert sorted(p.stem for p in (tmp_path / "annotations").iterdir()) == cohort.tumour_slide_ids


def test_out_of_range_options_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(SynthOptionError, match="--mpp"):
        synthesize_slide(tmp_path / "x.tif", size_px=1024, mpp=0.0)
    with pytest.raises(WSIError, match="--size"):
        synthesize_slide(tmp_path / "x.tif", size_px=100)
    assert main(["synth", "--output", str(tmp_path / "c"), "--slides", "0"]) == 2
    assert not (tmp_path / "x.tif").exists()
