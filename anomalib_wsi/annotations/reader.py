"""One entry point for every annotation format: :func:`read_annotations`."""

from __future__ import annotations

from pathlib import Path

from anomalib_wsi.annotations.asap import read_asap_xml
from anomalib_wsi.annotations.geojson import read_geojson
from anomalib_wsi.annotations.polygons import Annotations
from anomalib_wsi.errors import AnnotationError

__all__ = ["ANNOTATION_EXTENSIONS", "read_annotations"]

#: File extensions read as annotations (ASAP XML, QuPath GeoJSON).
ANNOTATION_EXTENSIONS = (".xml", ".geojson", ".json")


def read_annotations(
    path: str | Path,
    group_map: dict[str, str] | None = None,
    slide_size: tuple[int, int] | None = None,
) -> Annotations:
    """Read an ASAP XML (``.xml``) or QuPath GeoJSON (``.geojson``/``.json``) annotation file.

    Args:
        path: the annotation file.
        group_map: extra group / classification names mapped to ``"tumour"``, ``"non_tumour"`` or
            ``"unknown"`` (exact match first, then case-insensitive; also overrides the built-in names).
        slide_size: level-0 ``(width, height)`` of the slide; geometry outside it is clipped, with a warning.

    Returns:
        :class:`Annotations` in level-0 pixels; ``warnings`` lists every repair, skip, clip and unknown group.

    Raises:
        AnnotationError: unknown extension, missing, empty, malformed or unsafe file.

    Example:
        >>> ann = read_annotations("tumor_107.xml", slide_size=(97792, 221184))  # doctest: +SKIP
        >>> ann.region.area  # tumour minus exclusions, level-0 px²                  # doctest: +SKIP
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_asap_xml(path, group_map=group_map, slide_size=slide_size)
    if suffix in (".geojson", ".json"):
        return read_geojson(path, group_map=group_map, slide_size=slide_size)
    msg = f"{path}: unknown annotation format {suffix!r}; use ASAP .xml or QuPath .geojson/.json"
    raise AnnotationError(msg)
