"""Slide post-processing: tile scores -> slide heatmap -> lesion polygons, detection points, slide score.

- :mod:`~anomalib_wsi.post_processing.stitch`: :class:`Heatmap`, :class:`HeatmapAccumulator`,
  :func:`stitch_tile_scores` (grid at the tile stride, overlaps averaged, memory of the grid only).
- :mod:`~anomalib_wsi.post_processing.lesions`: :func:`extract_lesions` (polygons with holes, level-0 pixels),
  :func:`detection_points` (Camelyon16 ``confidence,x,y``), and their file writers.
- :mod:`~anomalib_wsi.post_processing.slide_score`: :func:`slide_score` (max, top-k mean, mean above threshold).
- :mod:`~anomalib_wsi.post_processing.outputs`: the prediction folder (file names, write, read back).
- :mod:`~anomalib_wsi.post_processing.render`: :func:`render_heatmap_png` (``heatmap.png``).
- :mod:`~anomalib_wsi.post_processing.tile_objects`: :func:`write_tile_objects`, :func:`write_tile_score_objects`
  (``tiles.geojson(.gz)``: scored cells or tiles as QuPath tile objects, for Measure > Show measurement maps).
- :mod:`~anomalib_wsi.post_processing.overlay`: :func:`write_heatmap_tiff` (``heatmap.tif``: a pyramidal TIFF
  overlay for QuPath, ASAP, openslide).
- :mod:`~anomalib_wsi.post_processing.post_processor`: :class:`WSIPostProcessor`, anomalib's PostProcessor
  with the slide-level steps (imported lazily: it pulls in anomalib).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_wsi.lazy import lazy_attributes
from anomalib_wsi.post_processing.lesions import (
    Lesion,
    detection_points,
    extract_lesions,
    write_detections_csv,
    write_lesions_geojson,
)
from anomalib_wsi.post_processing.overlay import write_heatmap_tiff
from anomalib_wsi.post_processing.slide_score import slide_score
from anomalib_wsi.post_processing.stitch import Heatmap, HeatmapAccumulator, stitch_tile_scores
from anomalib_wsi.post_processing.tile_objects import write_tile_objects, write_tile_score_objects

if TYPE_CHECKING:
    from anomalib_wsi.post_processing.post_processor import SlideResult, WSIPostProcessor
    from anomalib_wsi.post_processing.render import render_heatmap_png

__all__ = [
    "Heatmap",
    "HeatmapAccumulator",
    "Lesion",
    "SlideResult",
    "WSIPostProcessor",
    "detection_points",
    "extract_lesions",
    "render_heatmap_png",
    "slide_score",
    "stitch_tile_scores",
    "write_detections_csv",
    "write_heatmap_tiff",
    "write_lesions_geojson",
    "write_tile_objects",
    "write_tile_score_objects",
]

_LAZY = {
    "SlideResult": "anomalib_wsi.post_processing.post_processor",
    "WSIPostProcessor": "anomalib_wsi.post_processing.post_processor",
    "render_heatmap_png": "anomalib_wsi.post_processing.render",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
