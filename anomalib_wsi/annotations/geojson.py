"""QuPath GeoJSON: reading annotations and writing lesion polygons QuPath imports as they are.

QuPath (0.3+) reads a FeatureCollection (or a plain list of features) whose features carry ``objectType`` and
``classification`` inside ``properties``; an ``objectType`` at the feature root is ignored by QuPath.
Coordinates are level-0 pixels, origin top-left.

Example:
    >>> from shapely.geometry import box
    >>> write_geojson("lesions.geojson", [box(0, 0, 100, 50)], measurements=[{"max_score": 0.9}])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from anomalib_wsi.annotations.polygons import (
    AnnotationPoint,
    AnnotationPolygon,
    Annotations,
    as_multipolygon,
    build_polygons,
    classify_group,
    finish,
    validate_group_map,
)
from anomalib_wsi.errors import AnnotationError
from anomalib_wsi.files import atomic_write_text

__all__ = ["KIND_COLOURS", "annotations_to_geojson", "read_geojson", "write_geojson"]

logger = logging.getLogger(__name__)

#: Classification colours written for each kind by :func:`annotations_to_geojson`.
KIND_COLOURS: dict[str, tuple[int, int, int]] = {
    "tumour": (200, 0, 0),
    "non_tumour": (0, 160, 0),
    "unknown": (128, 128, 128),
}
#: Classification name given to features that carry none.
UNCLASSIFIED = "Unclassified"


def write_geojson(
    path: str | Path,
    geometries: Sequence[Polygon | MultiPolygon],
    classification: str = "Tumor",
    color: tuple[int, int, int] = (200, 0, 0),
    measurements: Sequence[Mapping[str, float]] | None = None,
    names: Sequence[str] | None = None,
    object_type: str = "annotation",
) -> Path:
    """Write polygons as a QuPath FeatureCollection (atomically).

    Each feature is ``{"type": "Feature", "id": <uuid5 of the geometry>, "geometry": Polygon|MultiPolygon (holes kept),
    "properties": {"objectType", "classification": {"name", "color": [r, g, b]}, "measurements": {...},
    "name"?}}``. Empty geometries are skipped (with their measurements and names); non-finite measurements are
    left out (JSON has no NaN). Coordinates are written exactly (integers without a decimal point).

    Args:
        path: output file (``.geojson``).
        geometries: polygons in level-0 pixels; GeometryCollections are reduced to their polygons.
        classification: QuPath class name of every feature.
        color: class colour, RGB 0-255.
        measurements: one ``{name: value}`` dict per geometry (shown in QuPath's measurement table).
        names: one name per geometry.
        object_type: QuPath object type: ``"annotation"`` (editable) or ``"detection"``.

    Returns:
        The path written.

    Raises:
        ValueError: ``measurements`` or ``names`` do not have one entry per geometry.
    """
    geometries = list(geometries)
    for what, values in (("measurements", measurements), ("names", names)):
        if values is not None and len(values) != len(geometries):
            msg = f"write_geojson: {len(values)} {what} for {len(geometries)} geometries; give one per geometry"
            raise ValueError(msg)
    rgb = [int(c) for c in color]
    features = []
    for index, geometry in enumerate(geometries):
        shape = _polygonal(geometry)
        if shape is None:
            logger.warning("write_geojson: geometry %d is empty or has no area; not written to %s", index, path)
            continue
        properties: dict[str, Any] = {
            "objectType": object_type,
            "classification": {"name": classification, "color": rgb},
        }
        if names is not None and names[index]:
            properties["name"] = str(names[index])
        properties["measurements"] = _finite_measurements(measurements[index] if measurements else {}, index)
        features.append(
            {"type": "Feature", "id": _feature_id(shape), "geometry": _geometry_json(shape), "properties": properties}
        )
    return _write_collection(path, features)


def annotations_to_geojson(annotations: Annotations, path: str | Path) -> Path:
    """Write every polygon and point of :class:`Annotations` as a QuPath FeatureCollection (atomically).

    Each polygon keeps its name and its group as classification name (so ``_0``/``_2`` read back with the same
    kinds); colours follow :data:`KIND_COLOURS`. Points become ``MultiPoint`` features. Reading the file back
    gives the same tumour, non-tumour and region geometry.

    Args:
        annotations: annotations read from ASAP XML or GeoJSON.
        path: output file.

    Returns:
        The path written.
    """
    features = []
    for polygon in annotations.polygons:
        features.append(_feature(polygon.geometry, polygon.group, KIND_COLOURS[polygon.kind], polygon.name))
    for point in annotations.points:
        geometry = {"type": "MultiPoint", "coordinates": [[_num(point.xy[0]), _num(point.xy[1])]]}
        features.append(_feature_json(geometry, point.group, KIND_COLOURS[point.kind], point.name))
    return _write_collection(path, features)


def read_geojson(
    path: str | Path,
    group_map: Mapping[str, str] | None = None,
    slide_size: tuple[int, int] | None = None,
) -> Annotations:
    """Read a QuPath GeoJSON annotation file.

    Accepted layouts: a FeatureCollection, a plain list of features and/or bare geometries, a single Feature,
    and the NCRF/Camelyon16 JSON layout ``{"positive": [{"name", "vertices"}], "negative": [...]}`` (positive
    read as group ``_0``, negative as ``_2``). The classification name decides the kind (see
    :mod:`anomalib_wsi.annotations.polygons`); a feature without one gets group ``"Unclassified"`` (unknown
    unless ``group_map`` names it). Polygon/MultiPolygon become polygons (holes kept), Point/MultiPoint become
    points, lines are skipped with a warning.

    Args:
        path: ``.geojson`` or ``.json`` file.
        group_map: extra classification names mapped to ``"tumour"``/``"non_tumour"``/``"unknown"``.
        slide_size: level-0 ``(width, height)``; geometry outside is clipped, with a warning.

    Returns:
        The annotations (empty when the file holds no feature).

    Raises:
        AnnotationError: the file is missing, empty, not JSON, or not one of the layouts above.
    """
    path = Path(path)
    validate_group_map(group_map)
    if not path.is_file():
        msg = f"annotation file {path} not found; check the path"
        raise AnnotationError(msg)
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        msg = f"{path}: empty file; export the annotations again (QuPath: File > Export objects as GeoJSON)"
        raise AnnotationError(msg)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        msg = f"{path}: not valid JSON ({error.msg} at line {error.lineno}); export the annotations again"
        raise AnnotationError(msg) from None
    except RecursionError:
        msg = f"{path}: JSON nested too deep to be annotations (thousands of levels); export the annotations again"
        raise AnnotationError(msg) from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        msg = f"{path}: not valid JSON ({_first_line(error).split(';')[0]}); export the annotations again"
        raise AnnotationError(msg) from None
    items = _items(data, path)
    polygons: list[AnnotationPolygon] = []
    points: list[AnnotationPoint] = []
    warnings: list[str] = []
    try:
        for index, item in enumerate(items):
            _read_item(item, index, path, group_map, polygons, points, warnings)
    except RecursionError:
        msg = f"{path}: geometry collections nested too deep to be annotations; export the annotations again"
        raise AnnotationError(msg) from None
    return finish(path, polygons, points, warnings, slide_size)


def _first_line(error: BaseException) -> str:
    """The first line of an error's text (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _items(data: Any, path: Path) -> list[Any]:
    """The features / geometries of any accepted layout."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                msg = f"{path}: FeatureCollection without a 'features' list; export the annotations again"
                raise AnnotationError(msg)
            return features
        if kind == "Feature":
            return [data]
        if kind is None and ("positive" in data or "negative" in data):
            items: list[Any] = []
            for key, group in (("positive", "_0"), ("negative", "_2")):
                entries = data.get(key) or []
                if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
                    msg = (
                        f"{path}: {key!r} must be a list of {{'name', 'vertices'}} objects (NCRF / Camelyon16 JSON); "
                        "fix the file or export the annotations again"
                    )
                    raise AnnotationError(msg)
                items.extend({"ncrf": True, "group": group, **entry} for entry in entries)
            return items
    found = f"type {data.get('type')!r}" if isinstance(data, dict) else type(data).__name__
    msg = (
        f"{path}: not a GeoJSON FeatureCollection or list of features (found {found}); export from QuPath with "
        "File > Export objects as GeoJSON"
    )
    raise AnnotationError(msg)


def _read_item(
    item: Any,
    index: int,
    path: Path,
    group_map: Mapping[str, str] | None,
    polygons: list[AnnotationPolygon],
    points: list[AnnotationPoint],
    warnings: list[str],
) -> None:
    """Append the polygons / points of one feature (or bare geometry) to the lists.

    Raises:
        AnnotationError: a feature whose ``properties`` is neither an object nor null (its classification, which
            decides tumour or not, cannot be read).
    """
    source_name = path.name
    if not isinstance(item, dict):
        warnings.append(f"{source_name}: item {index} is a {type(item).__name__}, not a feature; skipped")
        return
    if item.get("ncrf"):
        group = str(item["group"])
        name = str(item.get("name", f"Annotation {index}"))
        label = f"{source_name}: annotation {name!r} (group {group!r})"
        try:
            vertices = np.asarray(item.get("vertices", []), dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            warnings.append(f"{label}: vertices are not [x, y] number pairs; skipped")
            return
        polygons.extend(build_polygons(vertices, [], name, group, classify_group(group, group_map), label, warnings))
        return
    if item.get("type") == "Feature":
        properties = item.get("properties")
        if properties is None:
            properties = {}
        if not isinstance(properties, dict):
            msg = (
                f"{path}: feature {index} has 'properties' of type {type(properties).__name__}, not an object, so "
                "its classification cannot be read; fix the file or export the annotations again"
            )
            raise AnnotationError(msg)
        geometry = item.get("geometry")
    else:
        properties, geometry = {}, item
    name = str(properties.get("name") or "")
    group = _classification_name(properties)
    kind = classify_group(group, group_map)
    label = f"{source_name}: feature {name or index!r} (class {group!r})"
    _read_geometry(geometry, name, group, kind, label, polygons, points, warnings)


def _classification_name(properties: Mapping[str, Any]) -> str:
    """QuPath classification name: ``{"name"}``, ``{"names": [...]}`` (derived class), or a plain string."""
    classification = properties.get("classification")
    if isinstance(classification, str) and classification:
        return classification
    if isinstance(classification, dict):
        if classification.get("name"):
            return str(classification["name"])
        names = classification.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    return UNCLASSIFIED


def _read_geometry(
    geometry: Any,
    name: str,
    group: str,
    kind: Any,
    label: str,
    polygons: list[AnnotationPolygon],
    points: list[AnnotationPoint],
    warnings: list[str],
) -> None:
    """Append the polygons / points of one GeoJSON geometry."""
    if not isinstance(geometry, dict) or "type" not in geometry:
        warnings.append(f"{label}: no geometry; skipped")
        return
    kind_name = geometry["type"]
    coords: Any = geometry.get("coordinates")
    try:
        if kind_name == "Polygon":
            polygons.extend(_polygon(coords, name, group, kind, label, warnings))
        elif kind_name == "MultiPolygon":
            for part in coords:
                polygons.extend(_polygon(part, name, group, kind, label, warnings))
        elif kind_name == "Point":
            points.append(AnnotationPoint(name, group, (float(coords[0]), float(coords[1])), kind))
        elif kind_name == "MultiPoint":
            points.extend(AnnotationPoint(name, group, (float(c[0]), float(c[1])), kind) for c in coords)
        elif kind_name == "GeometryCollection":
            for part in geometry.get("geometries") or []:
                _read_geometry(part, name, group, kind, label, polygons, points, warnings)
        else:
            warnings.append(f"{label}: {kind_name} is not an area or a point; skipped")
    except (TypeError, ValueError, IndexError, KeyError):
        warnings.append(f"{label}: {kind_name} coordinates are not valid [x, y] number lists; skipped")


def _polygon(rings: Any, name: str, group: str, kind: Any, label: str, warnings: list[str]) -> list[AnnotationPolygon]:
    """Polygons from GeoJSON rings (first exterior, then holes)."""
    if not rings:
        warnings.append(f"{label}: polygon without coordinates; skipped")
        return []
    arrays = [np.asarray(ring, dtype=np.float64)[:, :2] for ring in rings]
    return build_polygons(arrays[0], arrays[1:], name, group, kind, label, warnings)


def _polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """A Polygon or MultiPolygon with area, or ``None``."""
    if geometry is None or geometry.is_empty:
        return None
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry if geometry.area > 0 else None
    multi = as_multipolygon(geometry)
    if multi.is_empty:
        return None
    return multi.geoms[0] if len(multi.geoms) == 1 else multi


def _num(value: float) -> float | int:
    """A JSON number: integers without a decimal point, other floats exactly."""
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 1e15 else number


def _ring(coords: Any) -> list[list[float | int]]:
    """A closed ring as JSON lists."""
    return [[_num(x), _num(y)] for x, y, *_ in coords]


def _geometry_json(geometry: Polygon | MultiPolygon) -> dict[str, Any]:
    """GeoJSON geometry of a Polygon / MultiPolygon, holes kept."""
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_rings(geometry)}
    return {"type": "MultiPolygon", "coordinates": [_polygon_rings(p) for p in geometry.geoms]}


def _feature_id(geometry: BaseGeometry | str) -> str:
    """A UUID derived from the geometry: the same polygon always gets the same id, so outputs are reproducible."""
    key = geometry if isinstance(geometry, str) else geometry.wkb_hex
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"anomalib-wsi:{key}"))


def _polygon_rings(polygon: Polygon) -> list[list[list[float | int]]]:
    """Exterior then holes."""
    return [_ring(polygon.exterior.coords), *(_ring(hole.coords) for hole in polygon.interiors)]


def _feature(geometry: Polygon, classification: str, color: tuple[int, int, int], name: str) -> dict[str, Any]:
    """One QuPath annotation feature from a polygon."""
    return _feature_json(_geometry_json(geometry), classification, color, name)


def _feature_json(
    geometry: dict[str, Any], classification: str, color: tuple[int, int, int], name: str
) -> dict[str, Any]:
    """One QuPath annotation feature from a GeoJSON geometry."""
    properties: dict[str, Any] = {
        "objectType": "annotation",
        "classification": {"name": classification, "color": list(color)},
    }
    if name:
        properties["name"] = name
    return {
        "type": "Feature",
        "id": _feature_id(json.dumps(geometry, sort_keys=True)),
        "geometry": geometry,
        "properties": properties,
    }


def _finite_measurements(values: Mapping[str, float], index: int) -> dict[str, float]:
    """Measurements as plain floats; NaN/inf left out (JSON cannot hold them)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        number = float(value)
        if math.isfinite(number):
            out[str(key)] = number
        else:
            logger.warning("write_geojson: measurement %r of geometry %d is %s; left out", key, index, number)
    return out


def _write_collection(path: str | Path, features: list[dict[str, Any]]) -> Path:
    """Write a FeatureCollection atomically."""
    text = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"), allow_nan=False)
    return atomic_write_text(path, text + "\n")
