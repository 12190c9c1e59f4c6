"""From a slide heatmap to lesions (polygons with holes) and Camelyon16 detection points, and their files.

All coordinates returned are level-0 pixels (origin top-left); areas are in µm² from the slide's mpp. Heatmap
cell ``(r, c)`` covers level-0 ``[c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)``; lesion polygons follow the cell edges
exactly (before the optional simplification), so a lesion's area is its number of cells times ``ds²``, less what
lies outside the slide.

Example:
    >>> import numpy as np
    >>> from anomalib_wsi.post_processing.stitch import Heatmap
    >>> values = np.zeros((4, 4), dtype=np.float32); values[1:3, 1:3] = 0.5; values[1, 1] = 0.75
    >>> heatmap = Heatmap(values, downsample=256.0, slide_id="s", slide_size_lv0=(1024, 1024))
    >>> [round(lesion.area_um2) for lesion in extract_lesions(heatmap, threshold=0.5, mpp=0.5)]
    [65536]
    >>> detection_points(heatmap, mpp=0.5).tolist()
    [[0.75, 384.0, 384.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from anomalib_wsi.files import atomic_write_text
from anomalib_wsi.post_processing.stitch import Heatmap

__all__ = [
    "Lesion",
    "detection_points",
    "extract_lesions",
    "write_detections_csv",
    "write_lesions_geojson",
]

#: QuPath's colour for the ``Tumor`` class.
TUMOUR_COLOR = (200, 0, 0)


@dataclass
class Lesion:
    """One connected region of the heatmap at or above the lesion threshold.

    Attributes:
        polygon: shapely Polygon (with holes where the region has them) or MultiPolygon, level-0 pixels.
        max_score: highest heatmap value inside the region.
        mean_score: mean heatmap value over the region's cells.
        area_um2: area of ``polygon`` in µm² (after clipping to the slide and simplification).
    """

    polygon: Polygon | MultiPolygon
    max_score: float
    mean_score: float
    area_um2: float

    @property
    def measurements(self) -> dict[str, float]:
        """The measurements written into QuPath GeoJSON: ``max_score``, ``mean_score``, ``area_um2``."""
        return {"max_score": self.max_score, "mean_score": self.mean_score, "area_um2": self.area_um2}


def _polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """The polygonal part of a geometry (make_valid/intersection may return collections), None when empty."""
    if geometry.is_empty:
        return None
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    parts: list[Polygon] = []
    for part in getattr(geometry, "geoms", []):
        found = _polygonal(part)
        if isinstance(found, Polygon):
            parts.append(found)
        elif isinstance(found, MultiPolygon):
            parts.extend(found.geoms)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _cells_to_geometry(mask: np.ndarray) -> BaseGeometry:
    """Exact outline (cell edges, holes included) of the True cells of a small mask, in cell units."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    start_rows, start_cols = np.nonzero(steps == 1)
    _, stop_cols = np.nonzero(steps == -1)
    runs = shapely.box(start_cols, start_rows, stop_cols, start_rows + 1)
    return shapely.union_all(runs)


def extract_lesions(
    heatmap: Heatmap,
    threshold: float,
    mpp: float,
    min_area_um2: float = 0.0,
    simplify_tolerance_px_lv0: float | None = None,
) -> list[Lesion]:
    """Threshold a heatmap and turn each 8-connected region into a lesion polygon in level-0 pixels.

    Cells with a value ``>= threshold`` are lesion cells (NaN never is). Each region's outline follows cell
    edges and keeps its holes; it is made valid, clipped to the slide, optionally simplified (topology kept),
    and dropped when its area is below ``min_area_um2``. A region whose parts meet only at cell corners is one
    lesion with a MultiPolygon (its parts touch at those corners).

    Args:
        heatmap: the (normalised) slide heatmap.
        threshold: lesion threshold on the heatmap's values.
        mpp: level-0 µm per pixel of the slide, for the areas.
        min_area_um2: smallest lesion area kept, in µm².
        simplify_tolerance_px_lv0: Douglas-Peucker tolerance in level-0 pixels; None or 0 keeps the exact
            cell-edge outline.

    Returns:
        Lesions sorted by decreasing ``max_score``.
    """
    if mpp <= 0:
        msg = f"mpp must be positive, got {mpp}"
        raise ValueError(msg)
    values = heatmap.values
    mask = (values >= threshold).astype(np.uint8)  # NaN compares False
    if not mask.any():
        return []
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    ds = float(heatmap.downsample)
    width, height = heatmap.slide_size_lv0
    slide_box = box(0, 0, width, height)
    cell_area_um2 = (ds * mpp) ** 2
    lesions: list[Lesion] = []
    for label in range(1, n_labels):
        x0, y0, w, h, n_cells = (int(v) for v in stats[label])
        # Clipping and a small simplification cannot double an area: skip hopeless specks without polygonising.
        if n_cells * cell_area_um2 * 2 < min_area_um2:
            continue
        region = labels[y0 : y0 + h, x0 : x0 + w] == label
        region_values = values[y0 : y0 + h, x0 : x0 + w][region]
        geometry = _cells_to_geometry(region)
        geometry = shapely.transform(geometry, lambda xy, x0=x0, y0=y0: np.add(xy, (x0, y0)) * ds)
        geometry = shapely.make_valid(geometry).intersection(slide_box)
        if simplify_tolerance_px_lv0:
            geometry = shapely.make_valid(geometry.simplify(simplify_tolerance_px_lv0, preserve_topology=True))
        polygon = _polygonal(geometry)
        if polygon is None:
            continue
        area_um2 = float(polygon.area) * mpp * mpp
        if area_um2 < min_area_um2:
            continue
        lesions.append(
            Lesion(
                polygon=polygon,
                max_score=float(region_values.max()),
                mean_score=float(region_values.mean(dtype=np.float64)),
                area_um2=area_um2,
            )
        )
    lesions.sort(key=lambda lesion: -lesion.max_score)
    return lesions


def detection_points(
    heatmap: Heatmap,
    mpp: float,
    nms_radius_um: float = 100.0,
    min_score: float = 0.0,
    max_points: int = 1000,
) -> np.ndarray:
    """Camelyon16 detection points: local maxima of the heatmap after greedy non-maximum suppression.

    Candidates are cells that equal the maximum of their 3 x 3 neighbourhood and lie strictly above
    ``min_score`` (so cells clamped to 0 by normalisation never count). Taken by decreasing score (ties in
    row-major order), each kept point suppresses every other candidate whose cell centre lies within
    ``nms_radius_um`` of its own.

    Args:
        heatmap: the (normalised) slide heatmap.
        mpp: level-0 µm per pixel of the slide.
        nms_radius_um: suppression radius in µm.
        min_score: candidates must score strictly above this.
        max_points: at most this many points, the best ones.

    Returns:
        float64 array (N, 3) of ``confidence, x, y`` sorted by decreasing confidence; x, y are whole level-0
        pixel coordinates of the cell centres, inside the slide.
    """
    if mpp <= 0:
        msg = f"mpp must be positive, got {mpp}"
        raise ValueError(msg)
    values = np.where(np.isfinite(heatmap.values), heatmap.values, -np.inf).astype(np.float32)
    if values.size == 0 or max_points <= 0:
        return np.zeros((0, 3), dtype=np.float64)
    local_max = ndimage.maximum_filter(values, size=3, mode="constant", cval=-np.inf)
    rows, cols = np.nonzero((values == local_max) & (values > min_score))
    if rows.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    scores = values[rows, cols]
    order = np.argsort(-scores, kind="stable")
    ds = float(heatmap.downsample)
    radius_cells = nms_radius_um / (mpp * ds)
    reach = math.floor(radius_cells)
    offsets = np.arange(-reach, reach + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius_cells**2
    height, width = values.shape
    suppressed = np.zeros((height, width), dtype=bool)
    kept: list[int] = []
    for idx in order:
        r, c = int(rows[idx]), int(cols[idx])
        if suppressed[r, c]:
            continue
        kept.append(idx)
        if len(kept) >= max_points:
            break
        r0, r1 = max(r - reach, 0), min(r + reach + 1, height)
        c0, c1 = max(c - reach, 0), min(c + reach + 1, width)
        suppressed[r0:r1, c0:c1] |= disk[r0 - r + reach : r1 - r + reach, c0 - c + reach : c1 - c + reach]
    kept_idx = np.asarray(kept, dtype=np.int64)
    slide_w, slide_h = heatmap.slide_size_lv0
    xs = np.minimum(np.floor((cols[kept_idx] + 0.5) * ds), slide_w - 1)
    ys = np.minimum(np.floor((rows[kept_idx] + 0.5) * ds), slide_h - 1)
    return np.stack([scores[kept_idx].astype(np.float64), xs, ys], axis=1)


def write_detections_csv(path: str | Path, points: np.ndarray) -> Path:
    """Write Camelyon16 detections: no header, one ``confidence,x,y`` line per point, integer level-0 x, y.

    The file is written (empty) when there are no points, so that an evaluation sees the slide was predicted.

    Args:
        path: output CSV path (parent folders are created); written atomically.
        points: array (N, 3) of ``confidence, x, y`` as returned by :func:`detection_points`.

    Returns:
        The path written.
    """
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    lines = [f"{conf:.6g},{round(x)},{round(y)}\n" for conf, x, y in arr]
    return atomic_write_text(path, "".join(lines))


def write_lesions_geojson(
    path: str | Path,
    lesions: Sequence[Lesion],
    classification: str = "Tumor",
    color: tuple[int, int, int] = TUMOUR_COLOR,
) -> Path:
    """Write lesions as a QuPath GeoJSON FeatureCollection (annotations with score and area measurements).

    Args:
        path: output ``.geojson`` path.
        lesions: lesions from :func:`extract_lesions` (level-0 pixel polygons).
        classification: QuPath class name of every lesion.
        color: QuPath class colour (r, g, b).

    Returns:
        The path written.
    """
    from anomalib_wsi.annotations.geojson import write_geojson

    return write_geojson(
        path,
        [lesion.polygon for lesion in lesions],
        classification=classification,
        color=color,
        measurements=[lesion.measurements for lesion in lesions],
        names=[f"lesion {i + 1}" for i in range(len(lesions))],
    )
