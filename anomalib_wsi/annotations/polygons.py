"""The result of reading an annotation file, and the helpers both readers share.

:class:`Annotations` holds every polygon and point read from one file (level-0 pixels, origin top-left), the
union of the tumour polygons, the union of the non-tumour polygons, and the labelled tumour ``region`` (tumour
minus non-tumour). Groups (ASAP ``PartOfGroup``, QuPath classification names) decide the kind of each polygon:

- tumour: ``Tumor``, ``Tumour``, ``_0``, ``_1``, ``Metastasis``, ``Metastases``, ``Carcinoma``, ``Cancer``;
- non-tumour: ``_2``, ``Exclusion``, ``None``, ``Normal``, ``Other``, ``Ignore``, ``Non-tumor``, ``Background``;
- anything else is ``"unknown"``: kept in :attr:`Annotations.polygons`, reported in :attr:`Annotations.warnings`,
  and left out of both unions unless ``group_map`` names it.

Matching is case-insensitive; for QuPath derived classes (``"Tumor: Positive"``) the first part decides.

Over 500 lines on purpose: the annotation model and the geometry rules that both readers apply (groups, repair,
clipping, bounds) belong together so that ASAP XML and GeoJSON cannot drift apart.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from anomalib_wsi.errors import AnnotationError

__all__ = [
    "FAR_OUTSIDE_SLIDES",
    "NON_TUMOUR_GROUPS",
    "TUMOUR_GROUPS",
    "AnnotationPoint",
    "AnnotationPolygon",
    "Annotations",
    "Kind",
    "as_multipolygon",
    "classify_group",
]

logger = logging.getLogger(__name__)

Kind = Literal["tumour", "non_tumour", "unknown"]

#: Group / classification names (lower case) that mean tumour.
TUMOUR_GROUPS = frozenset(
    {"tumor", "tumour", "_0", "_1", "metastasis", "metastases", "metastatic", "carcinoma", "cancer", "lesion"}
)
#: Group / classification names (lower case) that mean non-tumour, subtracted from tumour.
NON_TUMOUR_GROUPS = frozenset(
    {
        "_2",
        "exclusion",
        "exclude",
        "none",
        "normal",
        "other",
        "ignore",
        "non-tumor",
        "non-tumour",
        "non_tumor",
        "non_tumour",
        "nontumor",
        "nontumour",
        "background",
    }
)
_KIND_ALIASES: dict[str, Kind] = {
    "tumour": "tumour",
    "tumor": "tumour",
    "non_tumour": "non_tumour",
    "non_tumor": "non_tumour",
    "non-tumour": "non_tumour",
    "non-tumor": "non_tumour",
    "unknown": "unknown",
    "ignore": "unknown",
}
_MAX_LOGGED_WARNINGS = 20
#: A vertex or point lying more than this many slide widths (heights) beyond the slide's left or right (top or
#: bottom) edge is refused: annotations that reach a little past the edge are clipped, but one that far off is in
#: other coordinates (another slide, a lower level, micrometres), and clipping it (a vertex at 1e15 px) would turn
#: the whole slide into tumour.
FAR_OUTSIDE_SLIDES = 1.0


@dataclass
class AnnotationPolygon:
    """One annotated polygon.

    Attributes:
        name: the annotation's name in the file (ASAP ``Name``, QuPath ``properties.name``; may be empty).
        group: its group (ASAP ``PartOfGroup``) or classification name (QuPath).
        geometry: valid shapely polygon in level-0 pixels (holes kept).
        kind: ``"tumour"``, ``"non_tumour"`` or ``"unknown"`` (group not recognised and not in ``group_map``).
    """

    name: str
    group: str
    geometry: Polygon
    kind: Kind


@dataclass
class AnnotationPoint:
    """One annotated point (ASAP ``Dot``/``PointSet``, QuPath points): a location, not an area.

    Attributes:
        name: the annotation's name in the file.
        group: its group or classification name.
        xy: level-0 ``(x, y)``.
        kind: the group's kind, as for polygons.
    """

    name: str
    group: str
    xy: tuple[float, float]
    kind: Kind = "unknown"


@dataclass
class Annotations:
    """Everything read from one annotation file, in level-0 pixels.

    Attributes:
        source: the file read.
        polygons: every polygon kept, valid (repaired where needed), in file order.
        points: every point annotation.
        warnings: what was repaired, skipped, clipped, or not recognised, one sentence each.
        tumour: union of the tumour polygons (computed on construction).
        non_tumour: union of the non-tumour polygons (computed on construction).

    Example:
        >>> ann = read_annotations("tumor_107.xml")            # doctest: +SKIP
        >>> ann.region.area, len(ann.polygons), ann.warnings    # doctest: +SKIP
    """

    source: Path
    polygons: list[AnnotationPolygon] = field(default_factory=list)
    points: list[AnnotationPoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tumour: MultiPolygon = field(init=False, repr=False)
    non_tumour: MultiPolygon = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.tumour = as_multipolygon(shapely.union_all([p.geometry for p in self.polygons if p.kind == "tumour"]))
        self.non_tumour = as_multipolygon(
            shapely.union_all([p.geometry for p in self.polygons if p.kind == "non_tumour"])
        )

    @cached_property
    def region(self) -> MultiPolygon:
        """The labelled tumour area: ``tumour`` minus ``non_tumour`` (a MultiPolygon, possibly with holes)."""
        if self.non_tumour.is_empty or self.tumour.is_empty:
            return self.tumour
        return as_multipolygon(self.tumour.difference(self.non_tumour))

    @property
    def is_empty(self) -> bool:
        """Whether the file held no polygon and no point."""
        return not self.polygons and not self.points

    @property
    def extent_lv0(self) -> tuple[int, int]:
        """``(width, height)`` reaching the right/bottom-most vertex or point (rounded up); ``(0, 0)`` if empty.

        A stand-in for the slide size when no slide is at hand.
        """
        max_x = max_y = 0.0
        for polygon in self.polygons:
            _, _, x1, y1 = polygon.geometry.bounds
            max_x, max_y = max(max_x, x1), max(max_y, y1)
        for point in self.points:
            max_x, max_y = max(max_x, point.xy[0]), max(max_y, point.xy[1])
        return math.ceil(max_x), math.ceil(max_y)

    def counts(self) -> dict[str, int]:
        """Number of polygons per kind (``tumour``, ``non_tumour``, ``unknown``) and of ``points``."""
        kinds = Counter(p.kind for p in self.polygons)
        return {
            "tumour": kinds["tumour"],
            "non_tumour": kinds["non_tumour"],
            "unknown": kinds["unknown"],
            "points": len(self.points),
        }

    def __repr__(self) -> str:
        counts = self.counts()
        return (
            f"Annotations({self.source.name!r}, tumour={counts['tumour']}, non_tumour={counts['non_tumour']}, "
            f"unknown={counts['unknown']}, points={counts['points']}, region_area_px={self.region.area:.0f}, "
            f"warnings={len(self.warnings)})"
        )


def as_multipolygon(geometry: BaseGeometry | None) -> MultiPolygon:
    """The polygonal part of any shapely geometry as a MultiPolygon (empty for ``None`` or no area).

    Args:
        geometry: a shapely geometry (Polygon, MultiPolygon, GeometryCollection, ...) or ``None``.

    Returns:
        MultiPolygon of the polygons in ``geometry`` (lines and points dropped).
    """
    if geometry is None or geometry.is_empty:
        return MultiPolygon()
    if isinstance(geometry, MultiPolygon):
        return geometry
    if isinstance(geometry, Polygon):
        return MultiPolygon([geometry])
    return MultiPolygon(list(_polygon_parts(geometry)))


def _polygon_parts(geometry: BaseGeometry) -> Iterable[Polygon]:
    """Non-empty polygons inside a geometry, recursing into collections."""
    if isinstance(geometry, Polygon):
        if not geometry.is_empty and geometry.area > 0:
            yield geometry
    elif hasattr(geometry, "geoms"):
        for part in geometry.geoms:
            yield from _polygon_parts(part)


def classify_group(group: str, group_map: Mapping[str, str] | None = None) -> Kind:
    """Kind of a group or classification name.

    Args:
        group: the group name (ASAP ``PartOfGroup``) or classification name (QuPath).
        group_map: extra names (or overrides) mapped to ``"tumour"``, ``"non_tumour"`` or ``"unknown"``; exact
            match first, then case-insensitive.

    Returns:
        ``"tumour"``, ``"non_tumour"`` or ``"unknown"``.
    """
    if group_map:
        if group in group_map:
            return _kind_of(group_map[group], group)
        lowered = {key.lower(): value for key, value in group_map.items()}
        if group.lower() in lowered:
            return _kind_of(lowered[group.lower()], group)
    key = group.strip().lower()
    candidates = [key, key.split(":")[0].strip()]
    for candidate in candidates:
        if candidate in TUMOUR_GROUPS:
            return "tumour"
        if candidate in NON_TUMOUR_GROUPS:
            return "non_tumour"
    return "unknown"


def _kind_of(value: str, group: str) -> Kind:
    """Normalise a ``group_map`` value to a kind; an unknown value is a user error."""
    kind = _KIND_ALIASES.get(str(value).strip().lower())
    if kind is None:
        msg = f"group_map maps {group!r} to {value!r}: use 'tumour', 'non_tumour' or 'unknown'"
        raise AnnotationError(msg)
    return kind


def validate_group_map(group_map: Mapping[str, str] | None) -> None:
    """Raise :class:`AnnotationError` when a ``group_map`` value is not a kind."""
    for group, value in (group_map or {}).items():
        _kind_of(value, group)


def parse_coordinates(values: list[str], label: str) -> np.ndarray:
    """Floats from coordinate strings, accepting comma decimal separators (``"123,45"`` -> 123.45).

    Args:
        values: coordinate strings.
        label: what is parsed (for the error message), e.g. ``"tumor_001.xml, annotation 'A'"``.

    Returns:
        float64 array.

    Raises:
        AnnotationError: a value is not a number.
    """
    try:
        return np.asarray(values, dtype=np.str_).astype(np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for index, value in enumerate(values):
        text = str(value).strip()
        try:
            out[index] = float(text)
        except ValueError:
            try:
                out[index] = float(text.replace(",", "."))
            except ValueError:
                msg = f"{label}: coordinate {value!r} is not a number; fix or remove that vertex"
                raise AnnotationError(msg) from None
    return out


def build_polygons(
    exterior: np.ndarray,
    holes: list[np.ndarray],
    name: str,
    group: str,
    kind: Kind,
    label: str,
    warnings: list[str],
) -> list[AnnotationPolygon]:
    """Valid polygons from raw vertex arrays: degenerate rings skipped, invalid ones repaired; all reported.

    Args:
        exterior: (N, 2) vertices of the outer ring (closing vertex optional).
        holes: (M, 2) vertex arrays of the holes.
        name: annotation name.
        group: annotation group / classification.
        kind: the group's kind.
        label: how to name the annotation in warnings.
        warnings: list the warnings are appended to.

    Returns:
        Zero or more polygons (a self-intersecting ring repaired by ``make_valid`` may give several).
    """
    if not np.isfinite(np.asarray(exterior, dtype=np.float64)).all():
        warnings.append(f"{label}: skipped, missing or non-finite coordinates")
        return []
    ring = _clean_ring(exterior)
    if ring is None:
        count = len(np.unique(np.asarray(exterior, dtype=np.float64).reshape(-1, 2), axis=0))
        warnings.append(f"{label}: skipped, fewer than 3 distinct vertices ({count})")
        return []
    hole_rings = []
    for index, hole in enumerate(holes):
        cleaned = _clean_ring(hole)
        if cleaned is None:
            warnings.append(f"{label}: hole {index} skipped, fewer than 3 distinct vertices")
        else:
            hole_rings.append(cleaned)
    polygon = Polygon(ring, hole_rings)
    if polygon.is_valid:
        if polygon.area <= 0:
            warnings.append(f"{label}: skipped, zero area")
            return []
        return [AnnotationPolygon(name, group, polygon, kind)]
    reason = shapely.is_valid_reason(polygon)
    parts = list(_polygon_parts(_make_valid(polygon)))
    if not parts:
        warnings.append(f"{label}: skipped, invalid polygon ({reason}) has no area after make_valid")
        return []
    area = sum(part.area for part in parts)
    warnings.append(
        f"{label}: invalid polygon ({reason}) repaired with make_valid into {len(parts)} part(s), area {area:.1f} px"
    )
    return [AnnotationPolygon(name, group, part, kind) for part in parts]


def _make_valid(polygon: Polygon) -> BaseGeometry:
    """``make_valid`` keeping the area inside every ring ("structure" method: union of the outer rings minus
    the holes); a self-crossing outline stays filled rather than turning its overlaps into holes."""
    try:
        return shapely.make_valid(polygon, method="structure", keep_collapsed=False)
    except (TypeError, ValueError, shapely.errors.GEOSException):  # GEOS < 3.10: only the linework method
        return shapely.make_valid(polygon)


def _clean_ring(vertices: np.ndarray) -> np.ndarray | None:
    """Ring without consecutive duplicates or closing vertex; ``None`` when fewer than 3 distinct vertices."""
    coords = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(coords) and not np.isfinite(coords).all():
        return None
    if len(coords) > 1:
        keep = np.ones(len(coords), dtype=bool)
        keep[1:] = np.any(coords[1:] != coords[:-1], axis=1)
        coords = coords[keep]
    if len(coords) > 1 and np.array_equal(coords[0], coords[-1]):
        coords = coords[:-1]
    if len(coords) < 3 or len(np.unique(coords, axis=0)) < 3:
        return None
    return coords


def clip_to_slide(
    polygons: list[AnnotationPolygon],
    points: list[AnnotationPoint],
    slide_size: tuple[int, int],
    source_name: str,
    warnings: list[str],
) -> tuple[list[AnnotationPolygon], list[AnnotationPoint]]:
    """Clip polygons to the slide rectangle and drop points outside it, with a warning for each change.

    Args:
        polygons: polygons read.
        points: points read.
        slide_size: level-0 ``(width, height)``.
        source_name: file name for the warnings.
        warnings: list the warnings are appended to.

    Returns:
        The clipped polygons and the points inside the slide.
    """
    width, height = slide_size
    if width <= 0 or height <= 0:
        msg = f"{source_name}: slide_size {slide_size} must be positive (width, height) in level-0 pixels"
        raise AnnotationError(msg)
    frame = box(0, 0, width, height)
    kept: list[AnnotationPolygon] = []
    for polygon in polygons:
        x0, y0, x1, y1 = polygon.geometry.bounds
        if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
            kept.append(polygon)
            continue
        label = _label(source_name, polygon.name, polygon.group)
        parts = list(_polygon_parts(polygon.geometry.intersection(frame)))
        if not parts:
            warnings.append(f"{label}: skipped, entirely outside the {width} x {height} slide")
            continue
        lost = polygon.geometry.area - sum(part.area for part in parts)
        warnings.append(
            f"{label}: vertices outside the {width} x {height} slide (bounds {x0:.0f}, {y0:.0f}, {x1:.0f}, "
            f"{y1:.0f}); clipped to the slide, {lost:.1f} px² removed"
        )
        kept.extend(AnnotationPolygon(polygon.name, polygon.group, part, polygon.kind) for part in parts)
    inside: list[AnnotationPoint] = []
    for point in points:
        x, y = point.xy
        if 0 <= x <= width and 0 <= y <= height:
            inside.append(point)
        else:
            label = _label(source_name, point.name, point.group)
            warnings.append(f"{label}: point ({x:.1f}, {y:.1f}) outside the {width} x {height} slide, skipped")
    return kept, inside


def check_near_slide(
    source: Path, polygons: list[AnnotationPolygon], points: list[AnnotationPoint], slide_size: tuple[int, int]
) -> None:
    """Refuse a file whose geometry reaches far outside the slide (see :data:`FAR_OUTSIDE_SLIDES`).

    Args:
        source: the annotation file (named in the error).
        polygons: polygons read (finite coordinates).
        points: points read (non-finite ones are left to :func:`clip_to_slide`, which drops them with a warning).
        slide_size: level-0 ``(width, height)``.

    Raises:
        AnnotationError: one line naming the file, the annotation, its extent and the slide's size.
    """
    width, height = slide_size
    if width <= 0 or height <= 0:
        return  # clip_to_slide names that mistake
    x_lo, x_hi = -FAR_OUTSIDE_SLIDES * width, (1 + FAR_OUTSIDE_SLIDES) * width
    y_lo, y_hi = -FAR_OUTSIDE_SLIDES * height, (1 + FAR_OUTSIDE_SLIDES) * height

    def far(x0: float, y0: float, x1: float, y1: float) -> bool:
        return x0 < x_lo or x1 > x_hi or y0 < y_lo or y1 > y_hi

    offender: tuple[str, str, tuple[float, float, float, float]] | None = None
    for polygon in polygons:
        if far(*polygon.geometry.bounds):
            offender = (polygon.name, polygon.group, polygon.geometry.bounds)
            break
    else:
        for point in points:
            x, y = point.xy
            if math.isfinite(x) and math.isfinite(y) and far(x, y, x, y):
                offender = (point.name, point.group, (x, y, x, y))
                break
    if offender is None:
        return
    name, group, (x0, y0, x1, y1) = offender
    msg = (
        f"{source}: annotation {name!r} (group {group!r}) spans x {x0:.6g} to {x1:.6g}, y {y0:.6g} to {y1:.6g}, "
        f"far outside the {width} x {height} px slide (more than the slide's own width or height beyond its edge); "
        "its coordinates are not this slide's level-0 pixels (another slide, level or unit?): fix the file"
    )
    raise AnnotationError(msg)


def _label(source_name: str, name: str, group: str) -> str:
    """How a warning names one annotation."""
    return f"{source_name}: annotation {name!r} (group {group!r})"


def finish(
    source: Path,
    polygons: list[AnnotationPolygon],
    points: list[AnnotationPoint],
    warnings: list[str],
    slide_size: tuple[int, int] | None,
) -> Annotations:
    """Clip to the slide, report unknown groups, log the warnings and build the :class:`Annotations`.

    Args:
        source: file read.
        polygons: polygons read (valid).
        points: points read.
        warnings: warnings gathered while reading.
        slide_size: level-0 ``(width, height)`` to clip to, or ``None``.

    Returns:
        The annotations.

    Raises:
        AnnotationError: geometry far outside the slide (:func:`check_near_slide`).
    """
    if slide_size is not None:
        check_near_slide(source, polygons, points, slide_size)
        polygons, points = clip_to_slide(polygons, points, slide_size, source.name, warnings)
    unknown = Counter(p.group for p in polygons if p.kind == "unknown")
    for group, count in unknown.items():
        warnings.append(
            f"{source.name}: group {group!r} ({count} polygon(s)) is neither tumour nor non-tumour: kept in "
            f".polygons but left out of the tumour region; pass group_map={{{group!r}: 'tumour'}} (or "
            "'non_tumour') to use it"
        )
    for message in warnings[:_MAX_LOGGED_WARNINGS]:
        logger.warning(message)
    if len(warnings) > _MAX_LOGGED_WARNINGS:
        logger.warning(
            "%s: %d more annotation warnings (see Annotations.warnings)",
            source.name,
            len(warnings) - _MAX_LOGGED_WARNINGS,
        )
    return Annotations(source=source, polygons=polygons, points=points, warnings=warnings)


def format_number(value: float) -> str:
    """Shortest text that reads back as the same float (integers without a decimal point)."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)
