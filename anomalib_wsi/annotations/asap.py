"""ASAP XML (Camelyon16/17 lesion annotations): reading and writing.

Groups ``Tumor``, ``_0``, ``_1`` are tumour; ``_2``, ``Exclusion``, ``None`` are non-tumour regions subtracted
from tumour. Coordinates are level-0 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from shapely.geometry import Polygon

__all__ = ["GROUP_COLOURS", "write_asap_xml"]

#: Colours ASAP uses for the Camelyon16 groups.
GROUP_COLOURS = {"_0": "#F4FA58", "_1": "#F4FA58", "_2": "#64FE2E", "Tumor": "#F4FA58", "Exclusion": "#64FE2E"}


def write_asap_xml(path: str | Path, polygons: Sequence[tuple[str, Polygon]]) -> Path:
    """Write polygons as an ASAP XML file in the Camelyon16 layout.

    Args:
        path: output file.
        polygons: ``(group, polygon)`` pairs in level-0 pixels; interiors (holes) are not representable in ASAP
            and are written as separate ``_2`` polygons by callers that need them.

    Returns:
        The path written.
    """
    path = Path(path)
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for index, (group, polygon) in enumerate(polygons):
        colour = GROUP_COLOURS.get(group, "#F4FA58")
        lines.append(
            f'\t\t<Annotation Name="Annotation {index}" Type="Polygon" PartOfGroup={quoteattr(group)} '
            f'Color="{colour}">'
        )
        lines.append("\t\t\t<Coordinates>")
        coords = list(polygon.exterior.coords)[:-1]
        for order, (x, y) in enumerate(coords):
            lines.append(f'\t\t\t\t<Coordinate Order="{order}" X="{x:.6g}" Y="{y:.6g}" />')
        lines.append("\t\t\t</Coordinates>")
        lines.append("\t\t</Annotation>")
    lines.append("\t</Annotations>")
    lines.append("\t<AnnotationGroups>")
    for group in dict.fromkeys(g for g, _ in polygons):
        colour = GROUP_COLOURS.get(group, "#F4FA58")
        lines.append(f'\t\t<Group Name={quoteattr(group)} PartOfGroup="None" Color="{colour}">')
        lines.append("\t\t\t<Attributes />")
        lines.append("\t\t</Group>")
    lines.append("\t</AnnotationGroups>")
    lines.append("</ASAP_Annotations>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
