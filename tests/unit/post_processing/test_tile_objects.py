"""Tests of anomalib_wsi/post_processing/tile_objects.py: heatmap cells and tiles as QuPath tile objects.

Every written feature is checked against the rules of QuPath's GeoJSON reader (qupath-core
``PathObjectTypeAdapters`` / ``QuPathTypeAdapters``, ``GsonTools.PathClassTypeAdapter``, ``MeasurementList``).
"""

from __future__ import annotations

import gzip
import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalib_wsi.post_processing.stitch import Heatmap
from anomalib_wsi.post_processing.tile_objects import write_tile_objects, write_tile_score_objects

DS = 512.0
SLIDE = (1800, 1300)  # 4 x 3 cells of 512 px; the last column and row reach past the slide


def _load(path: Path) -> dict[str, Any]:
    """Strict JSON (a NaN or Infinity token fails, as in any standard parser)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path.name}: non-standard JSON number {token}")

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle, parse_constant=refuse)


def _check_qupath_feature(feature: dict[str, Any]) -> None:
    """Assert what QuPath's reader needs to make a tile object with these measurements and class."""
    assert feature["type"] == "Feature"
    assert "objectType" not in feature  # QuPath reads it from properties only
    # id: UUID.fromString must accept it, or QuPath drops it (then the ids are not reproducible)
    assert str(uuid.UUID(feature["id"])) == feature["id"]
    geometry = feature["geometry"]
    assert geometry["type"] == "Polygon"
    (ring,) = geometry["coordinates"]
    assert len(ring) == 5 and ring[0] == ring[-1]
    assert all(len(point) == 2 and all(type(v) in (int, float) for v in point) for point in ring)
    xs, ys = {p[0] for p in ring}, {p[1] for p in ring}
    assert len(xs) == 2 and len(ys) == 2  # an axis-aligned square with area
    properties = feature["properties"]
    assert set(properties) <= {"objectType", "measurements", "classification"}
    assert properties["objectType"] == "tile"  # PathTileObject: a detection, coloured by measurement maps
    measurements = properties["measurements"]
    assert isinstance(measurements, dict)  # the object form, read as Map<String, Double>
    for name, value in measurements.items():
        assert isinstance(name, str) and name
        assert type(value) in (int, float) and math.isfinite(value)  # a string or NaN breaks MeasurementList.putAll
    if "classification" in properties:
        classification = properties["classification"]
        assert set(classification) == {"name", "color"}  # a name without a colour fails QuPath's class reader
        assert isinstance(classification["name"], str) and classification["name"]
        color = classification["color"]
        assert len(color) == 3 and all(type(c) is int and 0 <= c <= 255 for c in color)


def _heatmaps() -> tuple[Heatmap, Heatmap]:
    values = np.array(
        [
            [0.10, np.nan, 0.55, 0.30],
            [0.90, 0.50, 0.4999, np.nan],
            [np.nan, 0.20, 0.75, 1.00],
        ],
        dtype=np.float32,
    )
    raw = values * 4.0 - 1.0
    raw[2, 3] = np.nan  # a scored cell whose raw score is missing
    normalised = Heatmap(values, DS, "slide_a", SLIDE)
    return normalised, normalised.with_values(raw)


def test_every_feature_follows_qupaths_reading_rules(tmp_path: Path) -> None:
    heatmap, raw = _heatmaps()
    path = write_tile_objects(tmp_path / "tiles.geojson", heatmap, raw, threshold=0.5)
    data = _load(path)
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    assert len(features) == 9  # the scored cells; the three NaN cells get no object
    for feature in features:
        _check_qupath_feature(feature)
    classified = [f for f in features if "classification" in f["properties"]]
    assert sorted(f["properties"]["measurements"]["anomaly_score"] for f in classified) == pytest.approx(
        [0.5, 0.55, 0.75, 0.9, 1.0]
    )  # at or above the threshold (0.4999 is not)
    assert {f["properties"]["classification"]["name"] for f in classified} == {"Tumor"}
    assert len({f["id"] for f in features}) == 9
    # the cell with a NaN raw score keeps its anomaly score and has no raw_score at all (QuPath reads it as NaN)
    no_raw = [f["properties"]["measurements"] for f in features if "raw_score" not in f["properties"]["measurements"]]
    assert no_raw == [{"anomaly_score": 1.0}]


def test_squares_and_measurements_equal_the_heatmap_cells(tmp_path: Path) -> None:
    heatmap, raw = _heatmaps()
    features = _load(write_tile_objects(tmp_path / "tiles.geojson", heatmap, raw))["features"]
    width, height = SLIDE
    seen = set()
    for feature in features:
        ring = feature["geometry"]["coordinates"][0]
        x0, y0 = ring[0]
        x1, y1 = ring[2]
        row, col = int(y0 // DS), int(x0 // DS)
        seen.add((row, col))
        assert (x0, y0) == (col * DS, row * DS)
        assert (x1, y1) == (min((col + 1) * DS, width), min((row + 1) * DS, height))  # clipped to the slide
        measurements = feature["properties"]["measurements"]
        assert np.float32(measurements["anomaly_score"]) == heatmap.values[row, col]  # float32 round trip
        if np.isfinite(raw.values[row, col]):
            assert np.float32(measurements["raw_score"]) == raw.values[row, col]
        assert "classification" not in feature["properties"]  # no threshold: no class
    assert seen == {(int(r), int(c)) for r, c in zip(*np.nonzero(np.isfinite(heatmap.values)), strict=True)}
    # the corner cell reaches past the slide: 1800 - 3 * 512 = 264 px wide, 1300 - 2 * 512 = 276 px high
    corner = next(f for f in features if f["geometry"]["coordinates"][0][0] == [1536, 1024])
    assert corner["geometry"]["coordinates"][0][2] == [1800, 1300]


def test_gzip_holds_the_same_collection_and_reruns_write_identical_files(tmp_path: Path) -> None:
    heatmap, raw = _heatmaps()
    plain = write_tile_objects(tmp_path / "tiles.geojson", heatmap, raw, threshold=0.5)
    packed = write_tile_objects(tmp_path / "tiles.geojson.gz", heatmap, raw, threshold=0.5)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"  # a gzip stream
    assert _load(packed) == _load(plain)
    again = write_tile_objects(tmp_path / "again" / "tiles.geojson.gz", heatmap, raw, threshold=0.5)
    assert again.read_bytes() == packed.read_bytes()  # same ids, no time stamp: reproducible outputs
    other_slide = Heatmap(heatmap.values, DS, "slide_b", SLIDE)
    ids_a = {f["id"] for f in _load(plain)["features"]}
    ids_b = {f["id"] for f in _load(write_tile_objects(tmp_path / "b.geojson", other_slide))["features"]}
    assert not ids_a & ids_b  # objects of two slides never share an id


def test_cells_per_object_writes_one_object_per_block_with_its_mean(tmp_path: Path) -> None:
    values = np.full((4, 5), np.nan, dtype=np.float32)
    values[0, 0], values[0, 1], values[1, 1] = 0.2, 0.4, 0.9  # block (0, 0): mean of three scored cells
    values[3, 4] = 0.6  # block (1, 2): the last, partial block
    heatmap = Heatmap(values, 128.0, "s", (640, 512))
    features = _load(write_tile_objects(tmp_path / "tiles.geojson", heatmap, cells_per_object=2))["features"]
    assert len(features) == 2  # blocks without any scored cell get no object
    by_corner = {tuple(f["geometry"]["coordinates"][0][0]): f for f in features}
    first, last = by_corner[(0, 0)], by_corner[(512, 256)]
    assert first["geometry"]["coordinates"][0][2] == [256, 256]
    assert first["properties"]["measurements"]["anomaly_score"] == pytest.approx(0.5)
    assert last["geometry"]["coordinates"][0][2] == [640, 512]  # 256 px block clipped to the slide's 128 px
    assert last["properties"]["measurements"]["anomaly_score"] == pytest.approx(0.6)


def test_tile_score_objects_are_the_tiles_own_squares(tmp_path: Path) -> None:
    xs = np.array([0, 128, 256, 384])
    ys = np.array([0, 0, 128, 256])
    scores = np.array([0.3, 0.8, np.nan, 0.6], dtype=np.float32)
    raw = np.array([1.5, 4.0, 2.0, 3.0], dtype=np.float32)
    path = write_tile_score_objects(
        tmp_path / "tiles.geojson.gz", xs, ys, 256, scores, raw, slide_id="s", slide_size_lv0=(600, 1000), threshold=0.5
    )
    features = _load(path)["features"]
    for feature in features:
        _check_qupath_feature(feature)
    squares = [(f["geometry"]["coordinates"][0][0], f["geometry"]["coordinates"][0][2]) for f in features]
    # overlapping tiles overlap; the NaN tile has no object; the last one is clipped at x = 600
    assert squares == [([0, 0], [256, 256]), ([128, 0], [384, 256]), ([384, 256], [600, 512])]
    assert [f["properties"]["measurements"] for f in features] == [
        {"anomaly_score": pytest.approx(0.3), "raw_score": 1.5},
        {"anomaly_score": pytest.approx(0.8), "raw_score": 4.0},
        {"anomaly_score": pytest.approx(0.6), "raw_score": 3.0},
    ]
    assert ["classification" in f["properties"] for f in features] == [False, True, True]


def test_an_empty_heatmap_gives_an_empty_collection_qupath_reads(tmp_path: Path) -> None:
    heatmap = Heatmap(np.full((2, 2), np.nan, dtype=np.float32), DS, "s", (1024, 1024))
    assert _load(write_tile_objects(tmp_path / "tiles.geojson", heatmap)) == {
        "type": "FeatureCollection",
        "features": [],
    }


def test_bad_inputs_are_one_line_errors_naming_the_fix(tmp_path: Path) -> None:
    heatmap, _ = _heatmaps()
    coarse = Heatmap(heatmap.values[:2], DS, "s", SLIDE)
    with pytest.raises(ValueError, match=r"raw heatmap .* does not match"):
        write_tile_objects(tmp_path / "t.geojson", heatmap, coarse)
    with pytest.raises(ValueError, match=r"must end in \.geojson or \.geojson\.gz"):
        write_tile_objects(tmp_path / "t.txt", heatmap)
    with pytest.raises(ValueError, match="color must be three whole numbers 0-255"):
        write_tile_objects(tmp_path / "t.geojson", heatmap, threshold=0.5, color=(300, 0, 0))
    with pytest.raises(ValueError, match="cells_per_object must be a whole number"):
        write_tile_objects(tmp_path / "t.geojson", heatmap, cells_per_object=0)
    with pytest.raises(ValueError, match="one value per tile"):
        write_tile_score_objects(tmp_path / "t.geojson", [0, 1], [0], 256, [0.5, 0.6])
    assert not list(tmp_path.iterdir())  # nothing half-written
