"""QuPath GeoJSON writing and reading (anomalib_wsi/annotations/geojson.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Polygon, box

from anomalib_wsi.annotations import read_annotations, write_geojson
from anomalib_wsi.errors import AnnotationError


def _feature(geometry: dict[str, Any], classification: str | None = None, **properties: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"objectType": "annotation", **properties}
    if classification is not None:
        props["classification"] = {"name": classification, "color": [1, 2, 3]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _square(x0: float, y0: float, side: float) -> dict[str, Any]:
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


# --- writing ---------------------------------------------------------------------------------------------------


def test_written_features_have_the_layout_qupath_imports(tmp_path: Path) -> None:
    lesion = box(0, 0, 100, 100).difference(box(10, 10, 30, 30))  # one hole
    pair = MultiPolygon([box(200, 0, 210, 10), box(300, 0, 320, 10)])
    path = write_geojson(
        tmp_path / "lesions.geojson",
        [lesion, pair],
        measurements=[{"max_score": 0.9, "area_um2": 1234.5}, {"max_score": 0.4, "area_um2": 7.0}],
        names=["lesion 1", "lesion 2"],
    )
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    first, second = data["features"]
    for feature in (first, second):
        assert set(feature) == {"type", "id", "geometry", "properties"}  # no objectType at the root
        assert feature["type"] == "Feature"
        assert uuid.UUID(feature["id"]).version == 5  # derived from the geometry
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert first["properties"]["measurements"] == {"max_score": 0.9, "area_um2": 1234.5}
    assert first["properties"]["name"] == "lesion 1"
    assert first["geometry"]["type"] == "Polygon"
    assert len(first["geometry"]["coordinates"]) == 2  # exterior + hole
    assert first["geometry"]["coordinates"][1][0] in ([10, 10], [30, 10], [30, 30], [10, 30])
    assert second["geometry"]["type"] == "MultiPolygon"
    assert first["id"] != second["id"]
    # the same lesions written again give byte-identical files (reproducible outputs, resume comparisons)
    again = write_geojson(
        tmp_path / "again.geojson",
        [lesion, pair],
        measurements=[{"max_score": 0.9, "area_um2": 1234.5}, {"max_score": 0.4, "area_um2": 7.0}],
        names=["lesion 1", "lesion 2"],
    )
    assert again.read_bytes() == path.read_bytes()
    assert len(second["geometry"]["coordinates"]) == 2
    back = read_annotations(path)
    assert back.region.area == pytest.approx(10000 - 400 + 100 + 200)
    assert [p.name for p in back.polygons] == ["lesion 1", "lesion 2", "lesion 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.geojson", "lesions.geojson"]  # no temporary file left


def test_write_options_and_edge_cases(tmp_path: Path) -> None:
    path = write_geojson(
        tmp_path / "d.geojson",
        [box(0, 0, 1.5, 2.25), Polygon(), GeometryCollection([box(5, 5, 6, 6), LineString([(0, 0), (1, 1)])])],
        classification="Other",
        color=(0, 0, 255),
        measurements=[{"score": float("nan"), "n": 3}, {}, {"score": 1}],
        object_type="detection",
    )
    features = json.loads(path.read_text())["features"]
    assert len(features) == 2  # the empty polygon is skipped
    assert features[0]["properties"]["objectType"] == "detection"
    assert features[0]["properties"]["classification"] == {"name": "Other", "color": [0, 0, 255]}
    assert features[0]["properties"]["measurements"] == {"n": 3.0}  # NaN is not JSON: left out
    assert [1.5, 2.25] in features[0]["geometry"]["coordinates"][0]  # floats written exactly
    assert features[1]["geometry"] == {"type": "Polygon", "coordinates": [[[6, 5], [6, 6], [5, 6], [5, 5], [6, 5]]]}
    with pytest.raises(ValueError, match="1 names for 2 geometries"):
        write_geojson(tmp_path / "e.geojson", [box(0, 0, 1, 1), box(2, 2, 3, 3)], names=["a"])


# --- reading ---------------------------------------------------------------------------------------------------


def test_classification_names_decide_the_kind(tmp_path: Path) -> None:
    names = ["Tumor", "Tumour", "Metastasis", "Exclusion", "Normal", "Other", "Ignore", "None", "Stroma"]
    features = [_feature(_square(100 * i, 0, 10), name) for i, name in enumerate(names)]
    features.append(_feature(_square(0, 500, 10), None))  # unclassified
    derived = _feature(_square(0, 900, 10))
    derived["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [0, 0, 0]}
    features.append(derived)
    ann = read_annotations(_write(tmp_path / "classes.geojson", {"type": "FeatureCollection", "features": features}))
    kinds = [p.kind for p in ann.polygons]
    assert kinds == ["tumour"] * 3 + ["non_tumour"] * 5 + ["unknown", "unknown", "tumour"]
    assert [p.group for p in ann.polygons][-3:] == ["Stroma", "Unclassified", "Tumor: Positive"]
    assert ann.region.area == 4 * 100
    text = "\n".join(ann.warnings)
    assert "'Stroma'" in text and "'Unclassified'" in text and "group_map" in text
    mapped = read_annotations(
        tmp_path / "classes.geojson", group_map={"stroma": "non_tumour", "Unclassified": "tumour"}
    )
    assert mapped.region.area == 5 * 100
    assert mapped.non_tumour.area == 6 * 100


def test_holes_points_lines_and_collections(tmp_path: Path) -> None:
    ring = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    features = [
        _feature({"type": "Polygon", "coordinates": [ring, hole]}, "Tumor"),
        _feature({"type": "Point", "coordinates": [5, 7]}, "Tumor"),
        _feature({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, "Other"),
        _feature({"type": "LineString", "coordinates": [[0, 0], [9, 9]]}, "Tumor"),
        _feature(
            {
                "type": "GeometryCollection",
                "geometries": [_square(200, 200, 10), {"type": "Point", "coordinates": [0, 1]}],
            },
            "Tumor",
        ),
        _feature(None, "Tumor"),  # type: ignore[arg-type]
    ]
    ann = read_annotations(_write(tmp_path / "mixed.json", {"type": "FeatureCollection", "features": features}))
    assert len(ann.polygons) == 2
    assert len(ann.polygons[0].geometry.interiors) == 1
    assert ann.region.area == 10000 - 400 + 100
    assert [pt.xy for pt in ann.points] == [(5.0, 7.0), (1.0, 2.0), (3.0, 4.0), (0.0, 1.0)]
    text = "\n".join(ann.warnings)
    assert "LineString is not an area or a point; skipped" in text
    assert "no geometry; skipped" in text


def test_plain_lists_single_feature_and_ncrf_layout(tmp_path: Path) -> None:
    as_features = read_annotations(_write(tmp_path / "a.geojson", [_feature(_square(0, 0, 10), "Tumor")]))
    assert as_features.region.area == 100
    bare = read_annotations(_write(tmp_path / "b.geojson", [_square(0, 0, 10), _square(20, 0, 10)]))
    assert [p.kind for p in bare.polygons] == ["unknown", "unknown"]  # no classification on a bare geometry
    assert read_annotations(tmp_path / "b.geojson", group_map={"Unclassified": "tumour"}).region.area == 200
    single = read_annotations(_write(tmp_path / "c.geojson", _feature(_square(0, 0, 3), "Tumor")))
    assert single.region.area == 9
    ncrf = {
        "positive": [{"name": "Annotation 0", "vertices": [[0, 0], [50, 0], [50, 50], [0, 50]]}],
        "negative": [{"name": "Annotation 1", "vertices": [[10, 10], [20, 10], [20, 20], [10, 20]]}],
    }
    ann = read_annotations(_write(tmp_path / "tumor_001.json", ncrf))
    assert [p.group for p in ann.polygons] == ["_0", "_2"]
    assert ann.region.area == 2500 - 100


def test_out_of_slide_geometry_is_clipped(tmp_path: Path) -> None:
    path = _write(tmp_path / "o.geojson", [_feature(_square(-10, -10, 30), "Tumor")])
    ann = read_annotations(path, slide_size=(100, 100))
    assert ann.region.area == 400
    assert any("clipped to the slide" in w for w in ann.warnings)


def test_bow_tie_feature_is_repaired_and_reported(tmp_path: Path) -> None:
    bow = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    ann = read_annotations(_write(tmp_path / "bow.geojson", [_feature(bow, "Tumor", name="tie")]))
    assert ann.region.area == pytest.approx(50.0)
    assert len(ann.warnings) == 1 and "'tie'" in ann.warnings[0] and "repaired with make_valid" in ann.warnings[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"type": "Topology", "objects": {}}',
            r"not a GeoJSON FeatureCollection or list of features \(found type 'Topology'\)",
        ),
        ("42", r"not a GeoJSON FeatureCollection or list of features \(found int\)"),
        ('{"type": "FeatureCollection"}', "FeatureCollection without a 'features' list"),
        ('{"type": "FeatureCollection", "features": [', r"not valid JSON \(Expecting value at line 1\)"),
        ("", "empty file"),
    ],
)
def test_bad_geojson_is_a_one_line_error_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=r"bad\.geojson: " + message) as info:
        read_annotations(path)
    assert "\n" not in str(info.value)


def test_empty_feature_collection_is_empty_not_an_error(tmp_path: Path) -> None:
    ann = read_annotations(_write(tmp_path / "e.geojson", {"type": "FeatureCollection", "features": []}))
    assert ann.is_empty and ann.region.is_empty and ann.warnings == []
