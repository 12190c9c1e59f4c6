"""ASAP XML reading and writing (anomalib_wsi/annotations/asap.py) on real Camelyon files and crafted bad inputs."""

from __future__ import annotations

import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from anomalib_wsi.annotations import (
    annotations_to_asap,
    annotations_to_geojson,
    read_annotations,
    write_asap_xml,
)
from anomalib_wsi.errors import AnnotationError


def _plain_parse(path: Path) -> list[tuple[str, str, np.ndarray]]:
    """Independent reading of a trusted ASAP file: (name, group, (N, 2) vertices) per annotation."""
    out = []
    for annotation in ET.parse(path).getroot().iter("Annotation"):
        coords = np.array(
            [[float(c.get("X")), float(c.get("Y"))] for c in annotation.iter("Coordinate")],  # type: ignore[arg-type]
            dtype=np.float64,
        )
        out.append((annotation.get("Name", ""), annotation.get("PartOfGroup", ""), coords))
    return out


def _asap(path: Path, annotations: list[tuple[str, str, str, list[tuple[str, str]]]], groups: str = "") -> Path:
    """Write a small ASAP file: (name, type, group, [(x, y) strings]) per annotation."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "<Annotations>"]
    for name, kind, group, coords in annotations:
        lines.append(f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58"><Coordinates>')
        lines += [f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(coords)]
        lines.append("</Coordinates></Annotation>")
    lines += ["</Annotations>", f"<AnnotationGroups>{groups}</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _square(x0: float, y0: float, side: float) -> list[tuple[str, str]]:
    return [(str(x), str(y)) for x, y in [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]]


# --- real files ------------------------------------------------------------------------------------------------


def test_camelyon17_polygons_match_the_file_vertex_for_vertex(shared_data: Path) -> None:
    path = shared_data / "annotations" / "camelyon17" / "patient_004_node_4.xml"
    expected = _plain_parse(path)
    ann = read_annotations(path)
    assert len(ann.polygons) == 3
    assert [p.kind for p in ann.polygons] == ["tumour"] * 3
    assert [p.group for p in ann.polygons] == ["Tumor"] * 3
    assert ann.warnings == []
    for polygon, (name, _, coords) in zip(ann.polygons, expected, strict=True):
        assert polygon.name == name
        vertices = np.asarray(polygon.geometry.exterior.coords)[:-1]
        assert len(vertices) == len(coords)
        np.testing.assert_array_equal(vertices[0], coords[0])
        np.testing.assert_array_equal(vertices[-1], coords[-1])
    # Literal numbers from the file: annotation 0 has 8 vertices, the first at (12711.2998, 88778.1016).
    first = np.asarray(ann.polygons[0].geometry.exterior.coords)
    assert len(first) - 1 == 8
    assert tuple(first[0]) == (12711.2998, 88778.1016)
    assert tuple(first[-2]) == (12760.5, 88785.7031)
    assert ann.points == []
    assert ann.region.area == pytest.approx(sum(p.geometry.area for p in ann.polygons), rel=1e-12)


@pytest.mark.parametrize(("stem", "n_tumour", "n_excluded"), [("tumor_107", 2, 3), ("tumor_034", 1, 90)])
def test_camelyon16_region_is_tumour_minus_exclusions(
    shared_data: Path, stem: str, n_tumour: int, n_excluded: int
) -> None:
    path = shared_data / "annotations" / "camelyon16" / f"{stem}.xml"
    ann = read_annotations(path)
    # Annotation names are unique per file; make_valid may split one annotation into several parts.
    assert len({p.name for p in ann.polygons if p.group == "_0"}) == n_tumour
    assert len({p.name for p in ann.polygons if p.group == "_2"}) == n_excluded
    raw = _plain_parse(path)

    def valid(coords: np.ndarray) -> shapely.Geometry:
        polygon = Polygon(coords)
        return polygon if polygon.is_valid else shapely.make_valid(polygon, method="structure", keep_collapsed=False)

    tumour = shapely.union_all([valid(c) for _, g, c in raw if g == "_0"])
    excluded = shapely.union_all([valid(c) for _, g, c in raw if g == "_2"])
    expected = tumour.difference(excluded)
    assert ann.tumour.area == pytest.approx(tumour.area, rel=1e-9)
    assert ann.region.area == pytest.approx(expected.area, rel=1e-9)
    assert ann.region.area < ann.tumour.area  # the exclusions removed something
    assert ann.region.symmetric_difference(expected).area <= 1e-9 * expected.area


def test_camelyon16_invalid_outlines_are_repaired_and_reported(shared_data: Path) -> None:
    ann = read_annotations(shared_data / "annotations" / "camelyon16" / "tumor_034.xml")
    repaired = [w for w in ann.warnings if "repaired with make_valid" in w]
    assert len(repaired) == 24
    assert all("tumor_034.xml" in w and "Self-intersection" in w for w in repaired)
    assert all(p.geometry.is_valid for p in ann.polygons)


@pytest.mark.parametrize("stem", ["tumor_107", "tumor_034", "tumor_025"])
def test_xml_to_geojson_to_xml_keeps_the_region(shared_data: Path, tmp_path: Path, stem: str) -> None:
    original = read_annotations(shared_data / "annotations" / "camelyon16" / f"{stem}.xml")
    via_geojson = read_annotations(annotations_to_geojson(original, tmp_path / f"{stem}.geojson"))
    back = read_annotations(annotations_to_asap(via_geojson, tmp_path / f"{stem}.xml"))
    area = original.region.area
    assert via_geojson.region.area == pytest.approx(area, rel=1e-9)
    assert back.region.area == pytest.approx(area, rel=1e-9)
    assert back.region.symmetric_difference(original.region).area <= 1e-9 * area
    assert {p.group for p in back.polygons} <= {"_0", "_2"}
    assert back.warnings == []


# --- writing ---------------------------------------------------------------------------------------------------


def test_write_asap_xml_keeps_float_coordinates_exactly(tmp_path: Path) -> None:
    polygon = Polygon([(221184.5, 97792.25), (221190.125, 97792.25), (221190.125, 97800.0078125)])
    path = write_asap_xml(tmp_path / "a.xml", [("_0", polygon), ("_2", box(1, 1, 2, 2))], names=["lesion", "hole"])
    ann = read_annotations(path)
    assert [p.name for p in ann.polygons] == ["lesion", "hole"]
    np.testing.assert_array_equal(
        np.asarray(ann.polygons[0].geometry.exterior.coords), np.asarray(polygon.exterior.coords)
    )
    assert ann.polygons[1].kind == "non_tumour"
    assert [p.name for p in tmp_path.iterdir()] == ["a.xml"]  # atomic write leaves no temporary file


def test_annotations_to_asap_keeps_a_tumour_island_inside_a_hole(tmp_path: Path) -> None:
    # A 100 px square with a 60 px hole, and a 20 px tumour island inside the hole: region = 10000 - 3600 + 400.
    ring = box(0, 0, 100, 100).difference(box(20, 20, 80, 80))
    src = tmp_path / "island.geojson"
    from anomalib_wsi.annotations import write_geojson

    write_geojson(src, [ring, box(40, 40, 60, 60)])
    ann = read_annotations(src)
    assert ann.region.area == 10000 - 3600 + 400
    back = read_annotations(annotations_to_asap(ann, tmp_path / "island.xml"))
    assert back.region.area == pytest.approx(6800, rel=1e-9)
    assert back.region.symmetric_difference(ann.region).area < 1e-6


# --- annotation types, groups, coordinates ---------------------------------------------------------------------


def test_spline_rectangle_dot_pointset_and_measurement(tmp_path: Path) -> None:
    path = _asap(
        tmp_path / "types.xml",
        [
            ("s", "Spline", "_0", _square(0, 0, 10)),
            ("r", "Rectangle", "Tumor", _square(100, 100, 20)),
            ("d", "Dot", "_0", [("5", "6")]),
            ("p", "PointSet", "None", [("1", "2"), ("3", "4")]),
            ("m", "Measurement", "_0", [("0", "0"), ("50", "0")]),
        ],
    )
    ann = read_annotations(path)
    assert [(p.name, p.geometry.area) for p in ann.polygons] == [("s", 100.0), ("r", 400.0)]
    assert [(p.name, p.xy) for p in ann.points] == [("d", (5.0, 6.0)), ("p", (1.0, 2.0)), ("p", (3.0, 4.0))]
    assert ann.region.area == 500.0  # dots are locations, not areas
    assert any("'Measurement' skipped" in w for w in ann.warnings)


def test_two_point_rectangle_becomes_a_box(tmp_path: Path) -> None:
    ann = read_annotations(_asap(tmp_path / "r.xml", [("r", "Rectangle", "_1", [("10", "20"), ("40", "60")])]))
    assert ann.polygons[0].geometry.equals(box(10, 20, 40, 60))


def test_bow_tie_is_repaired_into_two_triangles_and_reported(tmp_path: Path) -> None:
    bow_tie = [("0", "0"), ("10", "10"), ("10", "0"), ("0", "10")]
    ann = read_annotations(_asap(tmp_path / "bow.xml", [("tie", "Polygon", "_0", bow_tie)]))
    assert len(ann.polygons) == 2
    assert all(p.name == "tie" and p.geometry.is_valid for p in ann.polygons)
    assert ann.region.area == pytest.approx(50.0)
    assert len(ann.warnings) == 1
    assert "'tie'" in ann.warnings[0] and "Self-intersection" in ann.warnings[0] and "2 part(s)" in ann.warnings[0]


def test_polygon_with_fewer_than_three_distinct_points_is_skipped_and_reported(tmp_path: Path) -> None:
    degenerate = [("1", "1"), ("5", "5"), ("1", "1"), ("5", "5")]
    ann = read_annotations(
        _asap(tmp_path / "d.xml", [("bad", "Polygon", "_0", degenerate), ("ok", "Polygon", "_0", _square(0, 0, 4))])
    )
    assert [p.name for p in ann.polygons] == ["ok"]
    assert any("'bad'" in w and "fewer than 3 distinct vertices (2)" in w for w in ann.warnings)


def test_comma_decimal_separators(tmp_path: Path) -> None:
    coords = [("0,5", "0,25"), ("10,5", "0,25"), ("10,5", "8,25")]
    ann = read_annotations(_asap(tmp_path / "c.xml", [("c", "Polygon", "_0", coords)]))
    np.testing.assert_array_equal(
        np.asarray(ann.polygons[0].geometry.exterior.coords)[:-1], [[0.5, 0.25], [10.5, 0.25], [10.5, 8.25]]
    )
    assert ann.region.area == pytest.approx(40.0)


def test_coordinate_order_attribute_is_respected(tmp_path: Path) -> None:
    path = tmp_path / "o.xml"
    path.write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="o" Type="Polygon" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="2" X="10" Y="10" /><Coordinate Order="0" X="0" Y="0" />'
        '<Coordinate Order="3" X="0" Y="10" /><Coordinate Order="1" X="10" Y="0" />'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    ann = read_annotations(path)
    assert ann.warnings == []  # in file order this would be a bow-tie
    assert ann.region.area == 100.0


def test_exclusion_and_none_groups_are_subtracted_and_unknown_groups_reported(tmp_path: Path) -> None:
    path = _asap(
        tmp_path / "g.xml",
        [
            ("t", "Polygon", "Tumor", _square(0, 0, 100)),
            ("e", "Polygon", "Exclusion", _square(0, 0, 10)),
            ("n", "Polygon", "None", _square(90, 90, 10)),
            ("m", "Polygon", "metastasis region", _square(200, 200, 10)),
        ],
    )
    ann = read_annotations(path)
    assert [p.kind for p in ann.polygons] == ["tumour", "non_tumour", "non_tumour", "unknown"]
    assert ann.region.area == 10000 - 100 - 100
    assert ann.non_tumour.area == 200
    assert any("'metastasis region'" in w and "group_map" in w for w in ann.warnings)
    mapped = read_annotations(path, group_map={"Metastasis Region": "tumour"})
    assert mapped.polygons[3].kind == "tumour"
    assert mapped.region.area == 10000 - 200 + 100
    with pytest.raises(AnnotationError, match="group_map maps 'x' to 'cancerous'"):
        read_annotations(path, group_map={"x": "cancerous"})


def test_group_inherits_the_kind_of_its_parent_group(tmp_path: Path) -> None:
    groups = '<Group Name="lesions" PartOfGroup="Tumor" Color="#F4FA58"><Attributes /></Group>'
    ann = read_annotations(_asap(tmp_path / "p.xml", [("a", "Polygon", "lesions", _square(0, 0, 5))], groups))
    assert ann.polygons[0].kind == "tumour"
    assert ann.region.area == 25


def test_coordinates_outside_the_slide_are_clipped_and_reported(tmp_path: Path) -> None:
    path = _asap(
        tmp_path / "out.xml",
        [
            ("edge", "Polygon", "_0", _square(900, 900, 200)),
            ("gone", "Polygon", "_0", _square(1500, 1500, 10)),  # outside, but within one slide size of it
            ("dot", "Dot", "_0", [("1500", "10")]),
        ],
    )
    ann = read_annotations(path, slide_size=(1000, 1000))
    assert [p.name for p in ann.polygons] == ["edge"]
    assert ann.polygons[0].geometry.bounds == (900.0, 900.0, 1000.0, 1000.0)
    assert ann.region.area == 100 * 100
    assert ann.points == []
    text = "\n".join(ann.warnings)
    assert "'edge'" in text and "clipped to the slide, 30000.0 px² removed" in text
    assert "'gone'" in text and "entirely outside the 1000 x 1000 slide" in text
    assert "point (1500.0, 10.0) outside" in text
    assert read_annotations(path).region.area == 200 * 200 + 100  # not clipped without a slide size


def test_a_vertex_far_outside_the_slide_refuses_the_file(tmp_path: Path) -> None:
    """A tumour polygon with vertices at 1e15 px on a 1000 px slide (clipped, it made the whole slide tumour) is
    refused in one line naming the file; so is a polygon 5 slide widths away."""
    far = [("100", "100"), ("1e15", "100"), ("1e15", "1e15"), ("100", "1e15")]
    path = _asap(tmp_path / "far.xml", [("A", "Polygon", "_0", far)])
    with pytest.raises(AnnotationError) as info:
        read_annotations(path, slide_size=(1000, 1000))
    assert str(info.value) == (
        f"{path}: annotation 'A' (group '_0') spans x 100 to 1e+15, y 100 to 1e+15, far outside the 1000 x 1000 "
        "px slide (more than the slide's own width or height beyond its edge); its coordinates are not this "
        "slide's level-0 pixels (another slide, level or unit?): fix the file"
    )
    away = _asap(tmp_path / "away.xml", [("B", "Polygon", "_0", _square(5000, 5000, 10))])
    with pytest.raises(AnnotationError, match=r"away\.xml: annotation 'B' \(group '_0'\) spans x 5000 to 5010"):
        read_annotations(away, slide_size=(1000, 1000))


# --- bad files ------------------------------------------------------------------------------------------------


def test_entity_bomb_is_refused_before_expanding(tmp_path: Path) -> None:
    """A billion-laughs file (10^9 "lol"s, 3 GB expanded) is refused within 1 MiB of traced memory."""
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    path = tmp_path / "bomb.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE ASAP_Annotations [' + "".join(entities) + "]>\n"
        '<ASAP_Annotations><Annotations><Annotation Name="&lol9;" Type="Polygon" PartOfGroup="_0" />'
        "</Annotations></ASAP_Annotations>"
    )
    tracemalloc.start()
    try:
        with pytest.raises(AnnotationError, match=r"bomb\.xml: refused, the XML declares entities") as info:
            read_annotations(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert "\n" not in str(info.value)


def test_external_entity_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "xxe.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        '<ASAP_Annotations><Annotations><Annotation Name="&x;" /></Annotations></ASAP_Annotations>'
    )
    with pytest.raises(AnnotationError, match=r"xxe\.xml: refused"):
        read_annotations(path)


def test_malformed_xml_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text('<ASAP_Annotations><Annotations><Annotation Name="a">\n</Annotations>')
    with pytest.raises(AnnotationError, match=r"broken\.xml: malformed XML \(mismatched tag at line 2") as info:
        read_annotations(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.xml"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=r"empty\.xml: empty file"):
        read_annotations(path)


def test_not_an_asap_file_and_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    svg = tmp_path / "drawing.xml"
    svg.write_text("<svg><rect /></svg>")
    with pytest.raises(AnnotationError, match=r"drawing\.xml: not an ASAP annotation file \(root element <svg>"):
        read_annotations(svg)
    with pytest.raises(AnnotationError, match=r"a\.csv: unknown annotation format '\.csv'"):
        read_annotations(tmp_path / "a.csv")
    with pytest.raises(AnnotationError, match=r"missing\.xml not found"):
        read_annotations(tmp_path / "missing.xml")


def test_file_without_annotations_is_empty_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "none.xml"
    path.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations /><AnnotationGroups /></ASAP_Annotations>')
    ann = read_annotations(path)
    assert ann.is_empty
    assert ann.region.is_empty and isinstance(ann.region, MultiPolygon)
    assert ann.warnings == []
    assert ann.extent_lv0 == (0, 0)
