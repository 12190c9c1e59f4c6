"""ASAP XML (Camelyon16/17 lesion annotations): reading and writing.

Groups ``Tumor``, ``_0``, ``_1`` are tumour; ``_2``, ``Exclusion``, ``None`` are non-tumour regions subtracted
from tumour. Coordinates are level-0 pixels.

Reading follows ``defusedxml``'s rules with one expat pass: a file that declares entities (a "billion laughs"
bomb) or external references is refused at once with :class:`~anomalib_wsi.errors.AnnotationError`.

Annotation types: ``Polygon`` and ``Spline`` are read as polygons through their vertices (for a spline, ASAP
draws a smooth curve through the same points), ``Rectangle`` as a polygon, ``Dot`` and ``PointSet`` as points;
any other type (``Measurement``, ...) is skipped with a warning.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import numpy as np
from defusedxml import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden
from shapely.geometry import MultiPolygon, Polygon

from anomalib_wsi.annotations.polygons import (
    AnnotationPoint,
    AnnotationPolygon,
    Annotations,
    Kind,
    as_multipolygon,
    build_polygons,
    classify_group,
    finish,
    format_number,
    parse_coordinates,
    validate_group_map,
)
from anomalib_wsi.errors import AnnotationError
from anomalib_wsi.files import atomic_write_text

__all__ = ["GROUP_COLOURS", "annotations_to_asap", "read_asap_xml", "write_asap_xml"]

logger = logging.getLogger(__name__)

#: Colours ASAP uses for the Camelyon16 groups.
GROUP_COLOURS = {"_0": "#F4FA58", "_1": "#F4FA58", "_2": "#64FE2E", "Tumor": "#F4FA58", "Exclusion": "#64FE2E"}
_POLYGON_TYPES = {"polygon", "spline", "rectangle"}
_POINT_TYPES = {"dot", "pointset"}
_ASAP_TUMOUR_GROUPS = ("_0", "_1", "Tumor")


def write_asap_xml(
    path: str | Path,
    polygons: Sequence[tuple[str, Polygon]],
    *,
    names: Sequence[str] | None = None,
    points: Sequence[tuple[str, tuple[float, float]]] = (),
) -> Path:
    """Write polygons as an ASAP XML file in the Camelyon16 layout (atomically).

    Coordinates are written exactly (shortest text that reads back as the same float).

    Args:
        path: output file.
        polygons: ``(group, polygon)`` pairs in level-0 pixels; interiors (holes) are not representable in ASAP
            and are written as separate ``_2`` polygons by callers that need them (see :func:`annotations_to_asap`).
        names: one annotation name per polygon (default ``"Annotation <index>"``).
        points: ``(group, (x, y))`` pairs written as ``Dot`` annotations after the polygons.

    Returns:
        The path written.
    """
    path = Path(path)
    if names is not None and len(names) != len(polygons):
        msg = f"write_asap_xml: {len(names)} names for {len(polygons)} polygons; give one per polygon"
        raise ValueError(msg)
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for index, (group, polygon) in enumerate(polygons):
        name = names[index] if names is not None else f"Annotation {index}"
        coords = list(polygon.exterior.coords)[:-1]
        lines.extend(_annotation_lines(name, "Polygon", group, coords))
    for offset, (group, xy) in enumerate(points):
        lines.extend(_annotation_lines(f"Annotation {len(polygons) + offset}", "Dot", group, [xy]))
    lines.append("\t</Annotations>")
    lines.append("\t<AnnotationGroups>")
    for group in dict.fromkeys([g for g, _ in polygons] + [g for g, _ in points]):
        colour = GROUP_COLOURS.get(group, "#F4FA58")
        lines.append(f'\t\t<Group Name={quoteattr(group)} PartOfGroup="None" Color="{colour}">')
        lines.append("\t\t\t<Attributes />")
        lines.append("\t\t</Group>")
    lines.append("\t</AnnotationGroups>")
    lines.append("</ASAP_Annotations>")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _annotation_lines(name: str, kind: str, group: str, coords: Sequence[Sequence[float]]) -> list[str]:
    """XML lines of one ``<Annotation>``."""
    colour = GROUP_COLOURS.get(group, "#F4FA58")
    lines = [
        f"\t\t<Annotation Name={quoteattr(name)} Type={quoteattr(kind)} PartOfGroup={quoteattr(group)} "
        f'Color="{colour}">',
        "\t\t\t<Coordinates>",
    ]
    for order, (x, y) in enumerate(coords):
        lines.append(f'\t\t\t\t<Coordinate Order="{order}" X="{format_number(x)}" Y="{format_number(y)}" />')
    lines.append("\t\t\t</Coordinates>")
    lines.append("\t\t</Annotation>")
    return lines


def annotations_to_asap(annotations: Annotations, path: str | Path) -> Path:
    """Write :class:`Annotations` as ASAP XML so that reading it back gives the same tumour ``region``.

    ASAP holds no holes and no nesting: a file means "union of tumour polygons minus union of non-tumour
    polygons". The region is therefore written as its outer rings (group ``_0``, or ``_1``/``Tumor`` when every
    tumour polygon read used that group) and its holes as ``_2`` polygons; a hole with tumour islands inside is
    written as hole-free pieces of (hole minus islands), so the islands survive. Non-tumour polygons outside
    the tumour change nothing and are not written. Polygons of unknown groups are written with their own group
    (holes dropped, with a logged warning); points as ``Dot`` annotations. Annotation names are not kept
    (``Tumour <i>``, ``Exclusion <i>``).

    Args:
        annotations: annotations read from ASAP XML or GeoJSON.
        path: output ``.xml`` file.

    Returns:
        The path written.
    """
    tumour_groups = {p.group for p in annotations.polygons if p.kind == "tumour"}
    tumour_group = next(iter(tumour_groups)) if len(tumour_groups) == 1 else "_0"
    if tumour_group not in _ASAP_TUMOUR_GROUPS:
        tumour_group = "_0"
    region = annotations.region
    pairs: list[tuple[str, Polygon]] = []
    names: list[str] = []
    exclusions: list[Polygon] = []
    for index, component in enumerate(region.geoms):
        pairs.append((tumour_group, Polygon(component.exterior)))
        names.append(f"Tumour {index}")
        for hole in component.interiors:
            hole_polygon = Polygon(hole)
            islands = [
                g for g in region.geoms if g is not component and hole_polygon.contains(g.representative_point())
            ]
            if not islands:
                exclusions.append(hole_polygon)
                continue
            remainder = as_multipolygon(hole_polygon.difference(MultiPolygon(islands)))
            for part in remainder.geoms:
                exclusions.extend(_hole_free_pieces(part))
    for index, exclusion in enumerate(exclusions):
        pairs.append(("_2", exclusion))
        names.append(f"Exclusion {index}")
    for polygon in annotations.polygons:
        if polygon.kind != "unknown":
            continue
        if polygon.geometry.interiors:
            logger.warning(
                "annotations_to_asap: %r (group %r) has holes, which ASAP cannot hold; written without them",
                polygon.name,
                polygon.group,
            )
        pairs.append((polygon.group, Polygon(polygon.geometry.exterior)))
        names.append(polygon.name or f"Annotation {len(names)}")
    points = [(point.group, point.xy) for point in annotations.points]
    return write_asap_xml(path, pairs, names=names, points=points)


def _hole_free_pieces(polygon: Polygon, depth: int = 0) -> list[Polygon]:
    """Cut a polygon with holes into hole-free pieces with the same union (vertical cuts through each hole)."""
    if not polygon.interiors:
        return [polygon]
    if depth > 3:  # not reached in practice: every cut runs through a hole, which opens it
        logger.warning("annotations_to_asap: could not cut a polygon free of holes; written without them")
        return [Polygon(polygon.exterior)]
    x0, y0, x1, y1 = polygon.bounds
    cuts = sorted({Polygon(h).representative_point().x for h in polygon.interiors})
    edges = [x0 - 1.0, *cuts, x1 + 1.0]
    pieces: list[Polygon] = []
    for left, right in itertools.pairwise(edges):
        strip = Polygon([(left, y0 - 1.0), (right, y0 - 1.0), (right, y1 + 1.0), (left, y1 + 1.0)])
        for part in as_multipolygon(polygon.intersection(strip)).geoms:
            pieces.extend(_hole_free_pieces(part, depth + 1) if part.interiors else [part])
    return pieces


def read_asap_xml(
    path: str | Path,
    group_map: Mapping[str, str] | None = None,
    slide_size: tuple[int, int] | None = None,
) -> Annotations:
    """Read an ASAP XML annotation file (Camelyon16/17 layout).

    Args:
        path: ``.xml`` file.
        group_map: extra group names mapped to ``"tumour"``/``"non_tumour"``/``"unknown"`` (also overrides the
            defaults).
        slide_size: level-0 ``(width, height)``; geometry outside is clipped, with a warning.

    Returns:
        The annotations (empty when the file holds no ``<Annotation>``).

    Raises:
        AnnotationError: the file is missing, empty, malformed, declares entities, or is not ASAP XML.
    """
    path = Path(path)
    validate_group_map(group_map)
    document = _parse(path)
    polygons: list[AnnotationPolygon] = []
    points: list[AnnotationPoint] = []
    warnings: list[str] = []
    skipped: Counter[str] = Counter()
    splines = 0
    for index, record in enumerate(document.annotations):
        name = record.attrs.get("Name", f"Annotation {index}")
        group = record.attrs.get("PartOfGroup", "None")
        kind = _group_kind(group, document.parents, group_map)
        label = f"{path.name}: annotation {name!r} (group {group!r})"
        ann_type = record.attrs.get("Type", "Polygon")
        type_key = ann_type.lower()
        if type_key not in _POLYGON_TYPES and type_key not in _POINT_TYPES:
            skipped[ann_type] += 1
            continue
        coords = _coordinates(record.coordinates, label)
        if type_key in _POINT_TYPES:
            points.extend(AnnotationPoint(name, group, (float(x), float(y)), kind) for x, y in coords)
            continue
        if type_key == "spline":
            splines += 1
        if type_key == "rectangle" and len(coords) == 2:
            (xa, ya), (xb, yb) = coords
            coords = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=np.float64)
        polygons.extend(build_polygons(coords, [], name, group, kind, label, warnings))
    for ann_type, count in skipped.items():
        warnings.append(f"{path.name}: {count} annotation(s) of type {ann_type!r} skipped: neither an area nor a point")
    if splines:
        logger.info("%s: %d Spline annotation(s) read as polygons through their control points", path.name, splines)
    return finish(path, polygons, points, warnings, slide_size)


@dataclass
class _Record:
    """One ``<Annotation>``: its attributes and its ``(X, Y, Order)`` coordinate strings."""

    attrs: dict[str, str]
    coordinates: list[tuple[str, str, str | None]] = field(default_factory=list)


@dataclass
class _Document:
    """What :func:`_parse` keeps of an ASAP file."""

    annotations: list[_Record] = field(default_factory=list)
    parents: dict[str, str] = field(default_factory=dict)
    root: str | None = None


def _parse(path: Path) -> _Document:
    """Parse the XML with expat under defusedxml's rules; every failure is a one-line :class:`AnnotationError`.

    A single expat pass (C speed; one Python call per element, keeping only ``Annotation``, ``Coordinate`` and
    ``Group``) with defusedxml's protections: any entity declaration (internal: "billion laughs", or external)
    and any external reference stops the parse at once. defusedxml's own ElementTree parser builds a tree in
    Python and takes about 0.6 s on a 3.7 MB Camelyon16 file; this takes about 0.1 s.
    """
    if not path.is_file():
        msg = f"annotation file {path} not found; check the path"
        raise AnnotationError(msg)
    data = path.read_bytes()
    if not data.strip():
        msg = f"{path}: empty file; export the annotations again from ASAP"
        raise AnnotationError(msg)
    document = _Document()
    annotations = document.annotations

    def start(tag: str, attrs: dict[str, str]) -> None:
        if document.root is None:
            document.root = tag
            if tag != "ASAP_Annotations":
                raise _NotAsap(tag)
        if tag == "Coordinate":
            if annotations:  # a <Coordinate> belongs to the last <Annotation> opened
                annotations[-1].coordinates.append(
                    (attrs.get("X", attrs.get("x", "nan")), attrs.get("Y", attrs.get("y", "nan")), attrs.get("Order"))
                )
        elif tag == "Annotation":
            annotations.append(_Record(attrs))
        elif tag == "Group" and attrs.get("Name"):
            document.parents[attrs["Name"]] = attrs.get("PartOfGroup", "None")

    def entity_declared(name: str, *args: object) -> None:
        raise EntitiesForbidden(name, None, None, None, None, None)

    def unparsed_entity(name: str, base: str | None, sysid: str, pubid: str | None, notation: str) -> None:
        raise EntitiesForbidden(name, None, base, sysid, pubid, notation)

    def external_reference(context: str, base: str | None, sysid: str, pubid: str | None) -> None:
        raise ExternalReferenceForbidden(context, base, sysid, pubid)

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EntityDeclHandler = entity_declared
    parser.UnparsedEntityDeclHandler = unparsed_entity
    parser.ExternalEntityRefHandler = external_reference  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except DefusedXmlException as error:
        msg = (
            f"{path}: refused, the XML declares entities or external references ({type(error).__name__}); "
            "ASAP files never need them: export the annotations again"
        )
        raise AnnotationError(msg) from None
    except _NotAsap as error:
        msg = f"{path}: not an ASAP annotation file (root element <{error}>, expected <ASAP_Annotations>)"
        raise AnnotationError(msg) from None
    except expat.ExpatError as error:
        reason = expat.errors.messages[error.code]
        msg = (
            f"{path}: malformed XML ({reason} at line {error.lineno}, column {error.offset}); "
            "export the annotations again from ASAP"
        )
        raise AnnotationError(msg) from None
    return document


class _NotAsap(Exception):
    """The root element is not ``<ASAP_Annotations>``."""


def _group_kind(group: str, parents: Mapping[str, str], group_map: Mapping[str, str] | None) -> Kind:
    """Kind of a group, climbing ``<Group PartOfGroup=...>`` parents while the group itself is unknown."""
    seen: set[str] = set()
    current = group
    while current not in seen:
        kind = classify_group(current, group_map)
        if kind != "unknown":
            return kind
        seen.add(current)
        parent = parents.get(current)
        if parent is None or parent == "None":
            break
        current = parent
    return "unknown"


def _coordinates(nodes: list[tuple[str, str, str | None]], label: str) -> np.ndarray:
    """(N, 2) level-0 vertices of one ``<Annotation>``, sorted by ``Order`` when every vertex has one."""
    if not nodes:
        return np.zeros((0, 2), dtype=np.float64)
    xs = parse_coordinates([n[0] for n in nodes], label)
    ys = parse_coordinates([n[1] for n in nodes], label)
    coords = np.stack([xs, ys], axis=1)
    orders = [n[2] for n in nodes]
    if all(o is not None for o in orders):
        try:
            order = np.asarray(orders, dtype=np.str_).astype(np.float64)
        except ValueError:
            return coords
        if np.any(np.diff(order) < 0):
            coords = coords[np.argsort(order, kind="stable")]
    return coords
