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
        (
            '[{"type": "Feature", "properties": [1, 2], "geometry": null}]',
            r"feature 0 has 'properties' of type list, not an object, so its classification cannot be read",
        ),
        (
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": "Tumor"}]}',
            r"feature 0 has 'properties' of type str, not an object",
        ),
        ("[" * 5000 + "]" * 5000, r"JSON nested too deep to be annotations \(thousands of levels\)"),
        ('{"features": [' * 3000 + "]}" * 3000, r"JSON nested too deep to be annotations"),
        (
            '[{"type": "Point", "coordinates": [' + "1" * 5000 + ", 1]}]",
            r"not valid JSON \(Exceeds the limit \(4300 digits\) for integer string conversion: value has 5000 "
            r"digits\); export",
        ),
        ('{"positive": 5}', r"'positive' must be a list of \{'name', 'vertices'\} objects \(NCRF / Camelyon16 JSON\)"),
        ('{"negative": [5]}', r"'negative' must be a list of \{'name', 'vertices'\} objects"),
    ],
)
def test_bad_geojson_is_a_one_line_error_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=r"^" + str(tmp_path) + r"/bad\.geojson: " + message) as info:
        read_annotations(path)
    assert "\n" not in str(info.value)


def test_null_properties_are_no_properties(tmp_path: Path) -> None:
    """``"properties": null`` is valid GeoJSON: the feature is read, unclassified."""
    feature = {"type": "Feature", "properties": None, "geometry": _square(0, 0, 10)}
    ann = read_annotations(_write(tmp_path / "n.geojson", [feature]))
    assert [p.group for p in ann.polygons] == ["Unclassified"] and ann.polygons[0].geometry.area == 100


def test_geometry_collections_nested_hundreds_deep_are_read(tmp_path: Path) -> None:
    """400 nested GeometryCollections (the deepest JSON can hold is about 490): the point inside is read."""
    geometry: dict = {"type": "Point", "coordinates": [5, 6]}
    for _ in range(400):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    ann = read_annotations(_write(tmp_path / "deep.geojson", [_feature(geometry, "Tumor")]))
    assert [point.xy for point in ann.points] == [(5.0, 6.0)]


@pytest.mark.parametrize(
    ("vertex", "refused"),
    [
        ((1e15, 50), True),
        ((201, 50), True),
        ((-101, 50), True),
        ((50, 201), True),
        ((200, 200), False),
        ((-99, 50), False),
    ],
)
def test_vertices_far_outside_the_slide_are_refused(tmp_path: Path, vertex: tuple[float, float], refused: bool) -> None:
    """On a 100 x 100 px slide a vertex more than 100 px beyond an edge (x < -100 or > 200) refuses the file in
    one line naming it; one within that reach is clipped with a warning (the 1e15 vertex once made the whole
    slide tumour)."""
    ring = [[10, 10], [60, 10], list(vertex), [10, 60], [10, 10]]
    path = _write(tmp_path / "far.geojson", [_feature({"type": "Polygon", "coordinates": [ring]}, "Tumor", name="A")])
    if not refused:
        ann = read_annotations(path, slide_size=(100, 100))
        assert 0 < ann.region.area < 100 * 100 and any("clipped to the slide" in w for w in ann.warnings)
        return
    with pytest.raises(AnnotationError) as info:
        read_annotations(path, slide_size=(100, 100))
    assert str(info.value).startswith(f"{path}: annotation 'A' (group 'Tumor') spans x ")
    assert str(info.value).endswith(
        "far outside the 100 x 100 px slide (more than the slide's own width or height beyond its edge); its "
        "coordinates are not this slide's level-0 pixels (another slide, level or unit?): fix the file"
    )
    assert read_annotations(path).region.area > 0  # without a slide size there is nothing to compare with


def test_points_far_outside_the_slide_are_refused(tmp_path: Path) -> None:
    """A point at x = 1e6 on a 100 px slide refuses the file; a non-finite one is skipped with a warning."""
    far = {"type": "MultiPoint", "coordinates": [[5, 5], [1e6, 5]]}
    with pytest.raises(AnnotationError, match=r"spans x 1e\+06 to 1e\+06, y 5 to 5, far outside the 100 x 100"):
        read_annotations(_write(tmp_path / "p.geojson", [_feature(far, "Tumor")]), slide_size=(100, 100))
    path = tmp_path / "nan.geojson"
    path.write_text('[{"type": "Point", "coordinates": [NaN, 5]}]')
    ann = read_annotations(path, slide_size=(100, 100))
    assert ann.points == [] and "point (nan, 5.0) outside the 100 x 100 slide, skipped" in ann.warnings[0]


def test_empty_feature_collection_is_empty_not_an_error(tmp_path: Path) -> None:
    ann = read_annotations(_write(tmp_path / "e.geojson", {"type": "FeatureCollection", "features": []}))
    assert ann.is_empty and ann.region.is_empty and ann.warnings == []
