"""Ground-truth masks at the evaluation level, made as the Camelyon16 organisers made theirs.

The organisers wrote their evaluation masks with ASAP (``AnnotationToMask``, then a pyramid written with
nearest-neighbour downsampling). :func:`asap_region_mask` reproduces what the level-5 page of such a mask holds
without rasterising level 0:

- **Sampling.** ASAP tests every integer level-0 point ``(x, y)`` that lies strictly inside an annotation's
  bounding box with a winding-number point-in-polygon test (``wn != 0``, so a self-overlapping outline stays
  filled), in float32. Its pyramid keeps the top-left pixel of each 2 x 2 block, so level-5 pixel ``(r, c)``
  is the test of the level-0 point ``(32 c, 32 r)``, the block's top-left corner (not its centre), and the
  level-5 mask is ``(floor(H / 32), floor(W / 32))`` for a ``W x H`` slide.
- **Edges.** The winding test counts an edge when the point is strictly to its left (``isLeft``), and ASAP's
  ``isLeft`` returns the float32 cross product truncated to an integer: a point less than one unit of cross
  product (``1 / edge height`` px) from an edge line counts as on it. Points on left and top edges are
  therefore inside, points on right and bottom edges outside, and points on the bounding box's own left / top
  / right / bottom lines are not tested at all (outside). :func:`sample_ring` follows this exactly, float32
  arithmetic included (as an x86-64 build computes it); it only matters for sample points on or within a tiny
  fraction of a pixel of an edge, which happens with integer vertices.
- **Groups.** Annotations are drawn group by group in the documented Camelyon16 order (``label_map``
  ``{'_0': 1, '_1': 1, '_2': 0}``, ``conversion_order ['_0', '_1', '_2']``): tumour groups (``_0``, ``_1``,
  ``Tumor``) first, then the non-tumour groups (``_2``, ``Exclusion``, ``None``) clear what they cover. The
  result is the union of the tumour outlines minus the union of the non-tumour ones, whatever the file order.

ASAP XML is sampled through the outlines as the file writes them (a self-crossing outline is not repaired
first; the winding rule decides). GeoJSON has no ASAP counterpart: its polygons are sampled the same way
through their (repaired) exterior rings, minus their holes.

Mask TIFFs (the organisers' own masks) are read at level 5 as they are; as the official scorer does, only the
value 255 is tumour (:func:`read_mask_tiff`).

The mask size comes, in that order, from the slide file, from the prediction's ``summary.json``
(``slide_size_lv0``) or from the annotation extent (:func:`load_ground_truth`, which says which it used).

Example:
    >>> mask = asap_region_mask([Outline("tumour", np.array([[16, 16], [80, 16], [80, 80], [16, 80]]))], (128, 128))
    >>> np.argwhere(mask).tolist()  # level-0 corners 32, 64 lie inside; centres 16 and 48 are not sampled
    [[1, 1], [1, 2], [2, 1], [2, 2]]

Over 500 lines on purpose: ASAP's mask rule (sampling grid, group order, its edge tie rule) and the mask TIFF reader
are one contract with the official scorer, kept in one file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from anomalib_wsi.errors import EvaluationError
from anomalib_wsi.evaluation.froc import CAMELYON16_MPP, EVALUATION_DOWNSAMPLE, growth_threshold_px

__all__ = [
    "MAX_MASK_PIXELS",
    "GroundTruth",
    "MaskSizeSource",
    "Outline",
    "asap_region_mask",
    "check_mask_size",
    "extent_size_lv0",
    "load_ground_truth",
    "read_annotation_outlines",
    "read_mask_tiff",
    "sample_ring",
]

logger = logging.getLogger(__name__)

#: Largest evaluation mask (pixels) built or read: 100 million level-5 pixels is a 320,000 x 320,000 px slide
#: (Camelyon16's largest is about 220,000 x 98,000 px, 21 million level-5 pixels).
MAX_MASK_PIXELS = 100_000_000

#: Where a mask's size came from.
MaskSizeSource = Literal["slide", "summary.json", "annotation extent", "mask file"]

#: Vertex coordinates beyond this (level-0 px) are clamped before they become sample indices.
_COORD_LIMIT = float(2**40)


class Outline(NamedTuple):
    """One annotation as ASAP samples it (level-0 ``x, y`` vertices).

    Attributes:
        kind: ``"tumour"``, ``"non_tumour"`` or ``"unknown"`` (left out).
        ring: ``(N, 2)`` outer ring, closing vertex optional.
        holes: ``(M, 2)`` rings cut out of it (GeoJSON only; ASAP has none).
    """

    kind: str
    ring: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


_MASK_SUFFIXES = (".tif", ".tiff")


# -- sampling ---------------------------------------------------------------------------------------------------


def _first_above(values: np.ndarray, step: int) -> np.ndarray:
    """Smallest integer ``k`` with ``step * k > value`` (exact for the float32 values ASAP compares)."""
    k = np.floor(values / step).astype(np.int64) + 1
    k += step * k <= values
    k -= step * (k - 1) > values
    return k


def _first_at_or_above(values: np.ndarray, step: int) -> np.ndarray:
    """Smallest integer ``k`` with ``step * k >= value``."""
    k = np.ceil(values / step).astype(np.int64)
    k += step * k < values
    k -= step * (k - 1) >= values
    return k


def sample_ring(
    ring: np.ndarray,
    shape_hw: tuple[int, int],
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> tuple[int, int, np.ndarray] | None:
    """ASAP's in-polygon test of one closed ring at the level-0 points ``(downsample * c, downsample * r)``.

    Args:
        ring: ``(N, 2)`` level-0 vertices ``x, y`` (closing vertex optional); rounded to float32 as ASAP stores
            them.
        shape_hw: ``(rows, cols)`` of the mask the samples belong to; samples outside it are not made.
        downsample: level-0 pixels between samples (32 for level 5).

    Returns:
        ``(row0, col0, inside)``: the boolean block of samples strictly inside the ring's bounding box (and the
        mask), whose top-left sample is ``(row0, col0)``; ``None`` when no sample lies there.
    """
    step = int(downsample)
    if step < 1:
        msg = f"downsample must be a positive integer, got {downsample}"
        raise ValueError(msg)
    v = np.asarray(ring, dtype=np.float32).reshape(-1, 2)
    if len(v) < 3 or not np.isfinite(v).all():
        return None
    x0, y0 = v[:, 0], v[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)  # ASAP appends the first vertex: every edge, closing one included
    lo = np.clip(v.min(axis=0).astype(np.float64), -_COORD_LIMIT, _COORD_LIMIT)
    hi = np.clip(v.max(axis=0).astype(np.float64), -_COORD_LIMIT, _COORD_LIMIT)
    # Samples strictly inside the bounding box: step * c > min x and step * c < max x (rows alike).
    c_lo, r_lo = (int(k) for k in _first_above(lo, step))
    c_hi, r_hi = (int(k) - 1 for k in _first_at_or_above(hi, step))
    c_lo, r_lo = max(c_lo, 0), max(r_lo, 0)
    c_hi, r_hi = min(c_hi, int(shape_hw[1]) - 1), min(r_hi, int(shape_hw[0]) - 1)
    if c_lo > c_hi or r_lo > r_hi:
        return None
    n_rows, n_cols = r_hi - r_lo + 1, c_hi - c_lo + 1

    # An edge crosses sample row Y when min(y0, y1) <= Y < max(y0, y1) (upward: y0 <= Y < y1, downward:
    # y1 <= Y < y0), as wn_PnPoly decides.
    ymin = np.clip(np.minimum(y0, y1).astype(np.float64), -_COORD_LIMIT, _COORD_LIMIT)
    ymax = np.clip(np.maximum(y0, y1).astype(np.float64), -_COORD_LIMIT, _COORD_LIMIT)
    first = np.maximum(_first_at_or_above(ymin, step), r_lo)
    last = np.minimum(_first_at_or_above(ymax, step) - 1, r_hi)
    counts = np.maximum(last - first + 1, 0)
    if not counts.any():
        return r_lo, c_lo, np.zeros((n_rows, n_cols), dtype=bool)
    edge = np.repeat(np.arange(len(v)), counts)
    offsets = np.cumsum(counts) - counts
    rows = first[edge] + (np.arange(edge.size) - offsets[edge])

    ex0, ey0 = x0[edge], y0[edge]
    dx = (x1 - x0)[edge]  # float32, as ASAP's (P1.x - P0.x)
    dy = (y1 - y0)[edge]
    big_y = (rows * step).astype(np.float32)
    p = dx * (big_y - ey0)  # float32 products and differences, as ASAP computes isLeft
    upward = dy > 0

    def counted(col: np.ndarray) -> np.ndarray:
        """Whether the edge counts for the sample at column ``col``: trunc(cross) > 0 upward, < 0 downward."""
        cross = p - ((col * step).astype(np.float32) - ex0) * dy
        return np.where(upward, cross >= 1, cross <= -1)

    # The edge counts for every sample left of its crossing (less 1 / |dy| px for the truncation): a prefix of
    # the row. Find its last column from the exact crossing, then settle it with the float32 test itself.
    dyd = dy.astype(np.float64)
    crossing = ex0 + (big_y.astype(np.float64) - ey0) * dx.astype(np.float64) / dyd - 1.0 / np.abs(dyd)
    guess = np.floor(np.clip(crossing, -_COORD_LIMIT, _COORD_LIMIT) / step).astype(np.int64)
    last_counted = guess - 2 + counted(guess - 1) + counted(guess) + counted(guess + 1)

    # Winding number of each sample: the sum of +1 (upward) / -1 (downward) over the edges whose prefix holds it.
    local = np.minimum(last_counted - c_lo, n_cols - 1)
    keep = local >= 0
    sign = np.where(upward, 1, -1)[keep]
    flat = (rows[keep] - r_lo) * n_cols + local[keep]
    hist = np.bincount(flat, weights=sign, minlength=n_rows * n_cols).reshape(n_rows, n_cols)
    winding = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
    return r_lo, c_lo, winding != 0


def asap_region_mask(
    outlines: Iterable[Outline],
    size_lv0: tuple[int, int],
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> np.ndarray:
    """The level-``log2(downsample)`` tumour mask ASAP writes for a slide: tumour outlines minus non-tumour ones.

    Args:
        outlines: one :class:`Outline` per annotation (kind ``"tumour"``, ``"non_tumour"`` or ``"unknown"``,
            which is left out), rings in level-0 pixels.
        size_lv0: level-0 ``(width, height)`` of the slide.
        downsample: level-0 pixels per mask pixel (32 for Camelyon16's level 5).

    Returns:
        Boolean ``(floor(height / downsample), floor(width / downsample))`` mask.
    """
    width, height = (int(s) for s in size_lv0)
    shape = (max(height // int(downsample), 0), max(width // int(downsample), 0))
    tumour = np.zeros(shape, dtype=bool)
    cleared = np.zeros(shape, dtype=bool)
    for kind, ring, holes in outlines:
        if kind not in ("tumour", "non_tumour"):
            continue
        sampled = sample_ring(ring, shape, downsample)
        if sampled is None:
            continue
        r0, c0, inside = sampled
        for hole in holes:
            cut = sample_ring(hole, shape, downsample)
            if cut is None:
                continue
            hr, hc, hole_inside = cut
            # The part of the hole's block that overlaps the ring's block.
            top, left = max(hr, r0), max(hc, c0)
            bottom = min(hr + hole_inside.shape[0], r0 + inside.shape[0])
            right = min(hc + hole_inside.shape[1], c0 + inside.shape[1])
            if top < bottom and left < right:
                inside[top - r0 : bottom - r0, left - c0 : right - c0] &= ~hole_inside[
                    top - hr : bottom - hr, left - hc : right - hc
                ]
        target = tumour if kind == "tumour" else cleared
        target[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]] |= inside
    tumour &= ~cleared
    return tumour


# -- reading outlines -------------------------------------------------------------------------------------------


def read_annotation_outlines(path: str | Path) -> tuple[list[Outline], list[str]]:
    """The outlines of an annotation file as ASAP samples them, and what was left out.

    ASAP XML: every ``Polygon``, ``Spline`` (through its control points, as ASAP does) and ``Rectangle`` with its
    vertices as written (self-crossing outlines are not repaired; the winding rule decides). GeoJSON: each
    polygon's exterior ring (repaired where invalid) and holes. The kind of a group follows the annotation
    reader (:func:`anomalib_wsi.annotations.polygons.classify_group`).

    Returns:
        ``(outlines, warnings)``.

    Raises:
        AnnotationError: the file cannot be read (see :func:`anomalib_wsi.annotations.read_annotations`).
    """
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return _asap_outlines(path)
    from anomalib_wsi.annotations import read_annotations

    annotations = read_annotations(path)
    outlines = [
        Outline(
            p.kind,
            np.asarray(p.geometry.exterior.coords),
            tuple(np.asarray(hole.coords) for hole in p.geometry.interiors),
        )
        for p in annotations.polygons
    ]
    return outlines, [w for w in annotations.warnings if "neither tumour nor non-tumour" in w]


def _asap_outlines(path: Path) -> tuple[list[Outline], list[str]]:
    """The outlines of an ASAP XML file with their vertices as written (the annotation reader's safe parser)."""
    from anomalib_wsi.annotations import asap

    document = asap._parse(path)
    outlines: list[Outline] = []
    unknown: dict[str, int] = {}
    for index, record in enumerate(document.annotations):
        kind = record.attrs.get("Type", "Polygon").lower()
        if kind not in ("polygon", "spline", "rectangle"):
            continue  # dots and point sets have no area
        name = record.attrs.get("Name", f"Annotation {index}")
        group = record.attrs.get("PartOfGroup", "None")
        label = f"{path.name}: annotation {name!r} (group {group!r})"
        coords = asap._coordinates(record.coordinates, label)
        if kind == "rectangle" and len(coords) == 2:
            (xa, ya), (xb, yb) = coords
            coords = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=np.float64)
        group_kind = asap._group_kind(group, document.parents, None)
        if group_kind == "unknown":
            unknown[group] = unknown.get(group, 0) + 1
        outlines.append(Outline(group_kind, coords))
    notes = [
        f"{path.name}: group {group!r} ({count} outline(s)) is neither tumour nor non-tumour; left out of the mask"
        for group, count in unknown.items()
    ]
    return outlines, notes


def _outline_extent(outlines: Iterable[Outline]) -> tuple[float, float] | None:
    """Largest finite vertex ``(x, y)`` of the tumour / non-tumour outlines; ``None`` without any."""
    max_x = max_y = -math.inf
    for outline in outlines:
        if outline.kind not in ("tumour", "non_tumour"):
            continue
        ring = np.asarray(outline.ring, dtype=np.float64).reshape(-1, 2)
        ring = ring[np.isfinite(ring).all(axis=1)]
        if len(ring):
            max_x, max_y = max(max_x, float(ring[:, 0].max())), max(max_y, float(ring[:, 1].max()))
    return None if max_x == -math.inf else (max_x, max_y)


# -- mask TIFFs -------------------------------------------------------------------------------------------------


def read_mask_tiff(
    path: str | Path,
    downsample: int = EVALUATION_DOWNSAMPLE,
    warnings: list[str] | None = None,
    max_pixels: int = MAX_MASK_PIXELS,
) -> np.ndarray:
    """A ground-truth mask TIFF as a boolean mask at ``downsample``, tumour where the value is 255.

    The pyramid level whose downsample is ``downsample`` is read as it is (Camelyon16's masks have one at
    level 5, and the official scorer reads that page). Without one, the nearest finer level is sampled at the
    top-left pixel of each block (as ASAP's nearest-neighbour pyramid does; ``floor`` size). Colour masks use
    channel 0.

    Only 255 is tumour, as in the official ``Evaluation_FROC.py`` (``255 - pixel`` then a distance transform).
    A mask whose maximum is 1 (written with ASAP's label 1 and not scaled to 255, a known pitfall) would hold no
    tumour for the official scorer: its 1s are read as tumour here, with a warning saying so.

    Args:
        path: the mask TIFF.
        downsample: downsample of the mask wanted (32: level 5).
        warnings: list the warnings are appended to (they are also logged).
        max_pixels: largest mask read; a larger level is refused.

    Returns:
        Boolean mask; ``(H', W')`` of the level read as is, else ``(floor(H / downsample), floor(W / downsample))``.

    Raises:
        EvaluationError: the file cannot be read as a TIFF or its level is larger than ``max_pixels``.
    """
    import cv2
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            base = tif.series[0].levels[0]
            width0, height0 = base.shape[base.axes.index("X")], base.shape[base.axes.index("Y")]
            # Pyramid levels (SubIFDs or reduced-resolution pages) and any other page of the same aspect ratio.
            candidates = []
            for series in tif.series:
                for level in series.levels:
                    width, height = level.shape[level.axes.index("X")], level.shape[level.axes.index("Y")]
                    if abs(width / height - width0 / height0) <= 0.02 * width0 / height0:
                        candidates.append((width0 / width, level))
            # The coarsest level no coarser than the target.
            factor, chosen = max((c for c in candidates if c[0] <= downsample * 1.01), key=lambda c: c[0])
            chosen_w, chosen_h = chosen.shape[chosen.axes.index("X")], chosen.shape[chosen.axes.index("Y")]
            if chosen_w * chosen_h > max_pixels:
                msg = (
                    f"{path}: the mask level to read is {chosen_w} x {chosen_h} px, more than the "
                    f"{max_pixels:,} pixels allowed; write the mask with a pyramid level at downsample {downsample}"
                )
                raise EvaluationError(msg)
            array = chosen.asarray()
            axes = chosen.axes
    except (OSError, ValueError, IndexError, ZeroDivisionError, tifffile.TiffFileError) as err:
        msg = f"{path}: cannot read this mask TIFF ({type(err).__name__}: {err}); pass a tumour mask TIFF or ASAP XML"
        raise EvaluationError(msg) from None
    if array.ndim > 2:  # channels (or other axes): keep Y, X and the first of the rest, as the official code does
        array = np.moveaxis(array, (axes.index("Y"), axes.index("X")), (0, 1))
        array = array.reshape(array.shape[0], array.shape[1], -1)[..., 0]
    notes = warnings if warnings is not None else []
    peak = int(array.max()) if array.size else 0
    if peak == 1:
        text = (
            f"{path.name}: mask values are 0/1 (maximum 1), not 0/255; the official Camelyon16 scorer would find "
            "no tumour in it (it reads only 255 as tumour): its 1s are read as tumour here; scale the mask to 255 "
            "to score it officially"
        )
        notes.append(text)
        logger.warning(text)
        mask = array == 1
    else:
        ignored = [int(v) for v in np.unique(array) if v not in (0, 255)]
        if ignored:
            text = f"{path.name}: mask values {ignored[:5]} are neither 0 nor 255; only 255 is tumour, as officially"
            notes.append(text)
            logger.warning(text)
        mask = array == 255
    if abs(factor - downsample) > 0.01 * downsample:  # no level at this downsample: sample a finer one
        target = (height0 // downsample, width0 // downsample)
        step = downsample / factor
        if abs(step - round(step)) < 1e-6:
            k = round(step)
            mask = mask[::k, ::k][: target[0], : target[1]]
        if mask.shape != target:
            mask = cv2.resize(mask.astype(np.uint8), (target[1], target[0]), interpolation=cv2.INTER_NEAREST)
    return np.asarray(mask, dtype=bool)


# -- one slide's ground truth -----------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """The evaluation-level tumour mask of one slide and how it was made.

    Attributes:
        mask: boolean ``(H, W)`` tumour mask at the evaluation downsample.
        size_lv0: level-0 ``(width, height)`` the mask stands for.
        size_source: where that size came from: ``"slide"``, ``"summary.json"``, ``"annotation extent"`` or
            ``"mask file"``.
        warnings: what the user should know, one sentence each.
    """

    mask: np.ndarray
    size_lv0: tuple[int, int]
    size_source: MaskSizeSource
    warnings: list[str] = field(default_factory=list)


def extent_size_lv0(
    extent: tuple[float, float] | None,
    downsample: int = EVALUATION_DOWNSAMPLE,
    mpp: float = CAMELYON16_MPP,
) -> tuple[int, int]:
    """Stand-in slide size from the largest vertex: a margin wider than the lesion growth past it."""
    if extent is None:
        return downsample, downsample
    margin = 2 * downsample * (math.ceil(growth_threshold_px(mpp, downsample)) + 1)
    return max(math.ceil(extent[0]), 0) + margin, max(math.ceil(extent[1]), 0) + margin


def check_mask_size(
    size_lv0: tuple[int, int],
    downsample: int,
    source: str,
    what: str,
    max_pixels: int = MAX_MASK_PIXELS,
) -> None:
    """Refuse (one line) a mask larger than ``max_pixels``; ``what`` names the file, ``source`` the size's origin."""
    width, height = size_lv0
    pixels = (width // downsample) * (height // downsample)
    if pixels > max_pixels:
        fix = {
            "annotation extent": "pass --slides DIR with the slide, or fix the annotation's coordinates",
            "summary.json": "re-run anomalib-wsi predict on this slide, or pass --slides DIR with the slide",
        }.get(source, "check the slide file")
        msg = (
            f"{what}: a {width} x {height} px slide (size from the {source}) needs a {pixels:,} pixel evaluation "
            f"mask, more than the {max_pixels:,} allowed (a 320,000 x 320,000 px slide at downsample 32); {fix}"
        )
        raise EvaluationError(msg)


def load_ground_truth(
    path: str | Path,
    slide_size_lv0: tuple[int, int] | None = None,
    size_source: MaskSizeSource = "slide",
    downsample: int = EVALUATION_DOWNSAMPLE,
    mpp: float = CAMELYON16_MPP,
    max_pixels: int = MAX_MASK_PIXELS,
) -> GroundTruth:
    """The evaluation mask of a ground-truth file (ASAP XML, GeoJSON or mask TIFF).

    Args:
        path: the ground-truth file.
        slide_size_lv0: level-0 ``(width, height)`` of the slide, or ``None`` to size the mask from the annotation
            extent (the largest vertex plus a margin wider than the lesion growth). Not used for mask TIFFs.
        size_source: where ``slide_size_lv0`` came from (``"slide"`` or ``"summary.json"``), for the record.
        downsample: level-0 pixels per mask pixel (32: level 5).
        mpp: level-0 spacing of the protocol, for the margin of the annotation extent.
        max_pixels: largest mask built; a larger one is refused with :class:`EvaluationError`.

    Returns:
        The :class:`GroundTruth`.
    """
    path = Path(path)
    warnings: list[str] = []
    if path.suffix.lower() in _MASK_SUFFIXES:
        mask = read_mask_tiff(path, downsample, warnings, max_pixels)
        size = (mask.shape[1] * downsample, mask.shape[0] * downsample)
        return GroundTruth(mask, size, "mask file", warnings)
    outlines, notes = read_annotation_outlines(path)
    warnings.extend(notes)
    source: MaskSizeSource = size_source
    if slide_size_lv0 is None:
        slide_size_lv0 = extent_size_lv0(_outline_extent(outlines), downsample, mpp)
        source = "annotation extent"
    size = (int(slide_size_lv0[0]), int(slide_size_lv0[1]))
    check_mask_size(size, downsample, source, str(path), max_pixels)
    return GroundTruth(asap_region_mask(outlines, size, downsample), size, source, warnings)
