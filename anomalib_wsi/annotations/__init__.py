"""Annotations: Camelyon16 ASAP XML and QuPath GeoJSON, tile labels and masks.

Example:
    >>> from anomalib_wsi.annotations import read_annotations, label_tiles
    >>> ann = read_annotations("tumor_107.xml")                      # doctest: +SKIP
    >>> labelled = label_tiles(table, ann, slide_size_lv0=(97792, 221184))  # doctest: +SKIP
"""

from anomalib_wsi.annotations.asap import annotations_to_asap, read_asap_xml, write_asap_xml
from anomalib_wsi.annotations.geojson import annotations_to_geojson, read_geojson, write_geojson
from anomalib_wsi.annotations.polygons import AnnotationPoint, AnnotationPolygon, Annotations, classify_group
from anomalib_wsi.annotations.reader import ANNOTATION_EXTENSIONS, read_annotations
from anomalib_wsi.annotations.tile_labels import (
    default_mask_downsample,
    label_tiles,
    rasterise,
    region_mask,
    tumour_fractions,
)

__all__ = [
    "ANNOTATION_EXTENSIONS",
    "AnnotationPoint",
    "AnnotationPolygon",
    "Annotations",
    "annotations_to_asap",
    "annotations_to_geojson",
    "classify_group",
    "default_mask_downsample",
    "label_tiles",
    "rasterise",
    "read_annotations",
    "read_asap_xml",
    "read_geojson",
    "region_mask",
    "tumour_fractions",
    "write_asap_xml",
    "write_geojson",
]
