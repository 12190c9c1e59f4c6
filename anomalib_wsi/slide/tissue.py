"""Tissue detection on a low-resolution slide image: Otsu on HSV saturation, pen-mark rejection, morphology.

The mask is computed at about 8 µm per pixel (:attr:`TissueConfig.mask_mpp`), never at level 0: a Camelyon16 slide
(about 100k x 200k px at 0.243 µm/px) gives a mask of about 3k x 6k px. Tiles are then kept or dropped from the
mask by integral image (:func:`anomalib_wsi.slide.coverage.mask_coverage`), with no pixel reads per tile.

Example:
    >>> slide = Slide("tumor_001.tif")                       # doctest: +SKIP
    >>> tissue = detect_tissue(slide)                         # mask at ~8 µm/px
    >>> tissue.mask.shape, tissue.downsample                  # (H, W), level-0 px per mask px
    >>> save_tissue_png("tissue.png", tissue)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from anomalib_wsi.slide.reader import Slide

__all__ = [
    "TissueConfig",
    "TissueMask",
    "detect_tissue",
    "pen_mask_from_rgb",
    "save_tissue_png",
    "tissue_mask_from_rgb",
]

# Colours of the overlay (RGB).
_TISSUE_RGB = (0, 170, 0)
_TILE_RGB = (40, 90, 255)
_TUMOUR_RGB = (230, 0, 0)
_NON_TUMOUR_RGB = (255, 200, 0)


@dataclass(frozen=True)
class TissueConfig:
    """How tissue is told from glass, pen marks and debris on a low-resolution image.

    Saturation and value thresholds are on OpenCV's 0-255 HSV scale; hue on its 0-179 scale (degrees / 2).

    Args:
        mask_mpp: resolution of the mask in µm per pixel (8 µm/px: a 100k px slide at 0.243 µm/px gives 3k px).
        max_side_px: upper bound on the longer side of the mask; the only bound when the slide has no mpp.
        blur_px: side of the median filter applied to the saturation before thresholding (odd, mask pixels).
        min_saturation: lowest saturation threshold; Otsu's threshold is raised to it (glass is below ~15).
        max_saturation: highest saturation threshold; Otsu's threshold is lowered to it so that a field full of
            tissue (where Otsu splits tissue from tissue) keeps its pale parts.
        min_value: pixels darker than this (ink, dirt, folds black with ink) are not tissue.
        remove_pen: reject red, green and blue pen marks.
        pen_min_area_um2: a patch of ink colour smaller than this is stain, not a pen mark.
        pen_margin_um: pen marks are grown by this much before they are removed (their blurred rims).
        close_um: radius of the morphological closing that joins tissue fragments.
        open_um: radius of the morphological opening that removes specks.
        min_area_um2: connected tissue regions smaller than this are dropped (16,384 µm² = one 256 px tile at
            0.5 µm/px).
        max_hole_area_um2: holes smaller than this inside tissue are filled; larger ones (fat, vessels) stay holes.

    Raises:
        ValueError: a value out of its range.
    """

    mask_mpp: float = 8.0
    max_side_px: int = 8192
    blur_px: int = 3
    min_saturation: int = 20
    max_saturation: int = 35
    min_value: int = 50
    remove_pen: bool = True
    pen_min_area_um2: float = 4096.0
    pen_margin_um: float = 16.0
    close_um: float = 16.0
    open_um: float = 8.0
    min_area_um2: float = 16_384.0
    max_hole_area_um2: float = 16_384.0

    def __post_init__(self) -> None:
        if not (self.mask_mpp > 0 and math.isfinite(self.mask_mpp)):
            msg = f"TissueConfig.mask_mpp must be a positive number of µm per pixel, got {self.mask_mpp}"
            raise ValueError(msg)
        if self.max_side_px < 16:
            msg = f"TissueConfig.max_side_px must be at least 16, got {self.max_side_px}"
            raise ValueError(msg)
        if self.blur_px < 1 or self.blur_px % 2 == 0:
            msg = f"TissueConfig.blur_px must be an odd number >= 1, got {self.blur_px}"
            raise ValueError(msg)
        if not 0 <= self.min_saturation <= self.max_saturation <= 255:
            msg = (
                "TissueConfig needs 0 <= min_saturation <= max_saturation <= 255, "
                f"got {self.min_saturation} and {self.max_saturation}"
            )
            raise ValueError(msg)
        if not 0 <= self.min_value <= 255:
            msg = f"TissueConfig.min_value must be in [0, 255], got {self.min_value}"
            raise ValueError(msg)
        for name in ("pen_min_area_um2", "pen_margin_um", "close_um", "open_um", "min_area_um2", "max_hole_area_um2"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                msg = f"TissueConfig.{name} must be a finite number >= 0, got {value}"
                raise ValueError(msg)


@dataclass
class TissueMask:
    """A tissue mask at low resolution with the thumbnail it was computed from.

    Attributes:
        mask: (H, W) bool, True on tissue.
        downsample: level-0 pixels per mask pixel.
        thumbnail: (H, W, 3) uint8 RGB image of the slide at the mask's resolution.
    """

    mask: np.ndarray
    downsample: float
    thumbnail: np.ndarray

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def _disk(radius_px: float) -> np.ndarray | None:
    """Elliptic structuring element of the given radius (None below half a pixel)."""
    r = round(radius_px)
    if r < 1:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def pen_mask_from_rgb(rgb: np.ndarray, hsv: np.ndarray | None = None, min_area_px: float = 64) -> np.ndarray:
    """Pixels that look like red, green or blue marker ink rather than H&E stain.

    H&E is pink (eosin, hue 300-350°, moderate saturation) and blue-purple (haematoxylin, hue 230-290°).
    Green and cyan never occur in it; red ink is a purer, more saturated red than eosin; blue ink is a purer,
    brighter blue than haematoxylin.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        hsv: the same image in OpenCV HSV, when already computed.
        min_area_px: patches of ink colour smaller than this many pixels are taken for stain.

    Returns:
        (H, W) bool, True on ink.
    """
    if hsv is None:
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    hue = hsv[..., 0]
    sat = hsv[..., 1]
    val = hsv[..., 2]
    coloured = sat >= 40
    green = coloured & (hue >= 35) & (hue < 100)  # 70°-200°: green and cyan ink
    blue = (sat >= 80) & (hue >= 95) & (hue < 112)  # 190°-224°: blue ink (haematoxylin sits at 230°-290°)
    bright_blue = (sat >= 100) & (val >= 170) & (hue >= 95) & (hue < 125)
    red = coloured & ((hue >= 174) | (hue <= 10))  # 348°-20°: pure red ink (eosin stops near 344°)
    ink = green | blue | bright_blue | red
    # Scattered ink-coloured pixels occur in stain; a mark is a patch of them.
    if min_area_px > 1 and ink.any():
        count, labels, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
        big = stats[:, cv2.CC_STAT_AREA] >= min_area_px
        big[0] = False
        ink = big[labels]
    if not ink.any():
        return ink
    # Ink fades into its surroundings (blurred rims) and dries dark where it is thick: pixels that are reddish or
    # dark and saturated count as ink when they touch a mark, not on their own (dense nuclei are dark too).
    weak = ink | (coloured & ((hue >= 171) | (hue <= 10))) | ((val < 130) & (sat >= 100))
    count, labels = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
    touched = np.zeros(count, dtype=bool)
    touched[np.unique(labels[ink])] = True
    touched[0] = False
    return touched[labels]


def tissue_mask_from_rgb(rgb: np.ndarray, config: TissueConfig | None = None, mpp: float | None = None) -> np.ndarray:
    """Tissue mask of an RGB image: Otsu on HSV saturation, pen marks and near-white/near-black removed, cleaned.

    Args:
        rgb: (H, W, 3) uint8 RGB (an RGBA image must be composited over white first).
        config: thresholds and morphology; defaults to :class:`TissueConfig`.
        mpp: resolution of ``rgb`` in µm per pixel, which sizes the morphology; defaults to ``config.mask_mpp``.

    Returns:
        (H, W) bool mask, True on tissue.
    """
    config = config or TissueConfig()
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        msg = f"tissue_mask_from_rgb expects an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}"
        raise ValueError(msg)
    px_um = float(mpp) if mpp is not None else config.mask_mpp
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1]
    if config.blur_px > 1:
        sat = cv2.medianBlur(sat, config.blur_px)
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = float(np.clip(otsu, config.min_saturation, config.max_saturation))
    tissue = (sat > threshold) & (hsv[..., 2] >= config.min_value)
    if config.remove_pen:
        pen = pen_mask_from_rgb(rgb, hsv, min_area_px=config.pen_min_area_um2 / (px_um * px_um))
        kernel = _disk(config.pen_margin_um / px_um)
        if kernel is not None and pen.any():
            pen = cv2.dilate(pen.astype(np.uint8), kernel) > 0
        tissue &= ~pen
    mask: np.ndarray = tissue.astype(np.uint8)
    kernel = _disk(config.close_um / px_um)
    if kernel is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    kernel = _disk(config.open_um / px_um)
    if kernel is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    px_area_um2 = px_um * px_um
    mask = _fill_small_holes(mask, config.max_hole_area_um2 / px_area_um2)
    mask = _drop_small_regions(mask, config.min_area_um2 / px_area_um2)
    return mask > 0


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background components that do not touch the border and are smaller than ``max_hole_px``."""
    if max_hole_px <= 0:
        return mask
    inverse = (mask == 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inverse, connectivity=4)
    if count <= 1:
        return mask
    h, w = mask.shape
    x, y, bw, bh, area = (stats[:, i] for i in range(5))
    touches_border = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    small = (area < max_hole_px) & ~touches_border
    small[0] = False  # label 0 is the tissue itself
    if not small.any():
        return mask
    return np.where(small[labels], 1, mask).astype(np.uint8)


def _drop_small_regions(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """Remove tissue components smaller than ``min_area_px``."""
    if min_area_px <= 1:
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
    keep[0] = False
    return keep[labels].astype(np.uint8)


def detect_tissue(slide: Slide, config: TissueConfig | None = None) -> TissueMask:
    """Tissue mask of a slide from a low-resolution read (about ``config.mask_mpp`` µm/px, never level 0).

    When the slide has no mpp (and none was given), the mask is computed on a thumbnail whose longer side is
    ``config.max_side_px`` at most; tiling such a slide still needs its mpp.

    Args:
        slide: an open slide.
        config: detection settings; defaults to :class:`TissueConfig`.

    Returns:
        The mask with its downsample and the thumbnail it came from.

    Raises:
        SlideReadError: the slide's pixels cannot be read.
    """
    config = config or TissueConfig()
    if slide.has_mpp:
        thumbnail, downsample = slide.read_thumbnail(target_mpp=config.mask_mpp, max_side=config.max_side_px)
        thumb_mpp = slide.mpp * downsample
    else:
        thumbnail, downsample = slide.read_thumbnail(target_mpp=None, max_side=min(config.max_side_px, 2048))
        thumb_mpp = config.mask_mpp  # unknown: morphology sized as if the thumbnail were at the mask resolution
    mask = tissue_mask_from_rgb(thumbnail, config, mpp=thumb_mpp)
    return TissueMask(mask=mask, downsample=float(downsample), thumbnail=thumbnail)


def _geometry_rings(geometry: Any) -> list[np.ndarray]:
    """Exterior and interior rings of a shapely (multi)polygon or collection, as (N, 2) float arrays."""
    if geometry is None or getattr(geometry, "is_empty", True):
        return []
    geom_type = geometry.geom_type
    if geom_type == "Polygon":
        rings = [np.asarray(geometry.exterior.coords)]
        rings.extend(np.asarray(interior.coords) for interior in geometry.interiors)
        return rings
    if geom_type in ("MultiPolygon", "GeometryCollection"):
        return [ring for part in geometry.geoms for ring in _geometry_rings(part)]
    if geom_type in ("LineString", "LinearRing"):
        return [np.asarray(geometry.coords)]
    return []


def save_tissue_png(
    path: str | Path,
    tissue: TissueMask,
    annotations: Any = None,
    tiles: pd.DataFrame | None = None,
    max_side_px: int = 2000,
) -> Path:
    """Draw the tissue outline (green) over the thumbnail, with kept tiles and annotations, as a PNG.

    Args:
        path: PNG to write (its folder is created).
        tissue: the mask and thumbnail from :func:`detect_tissue`.
        annotations: optional object with shapely geometries ``.tumour`` and ``.non_tumour`` in level-0 pixels,
            drawn red and yellow.
        tiles: optional tile table (``x``, ``y``, ``tile_size_lv0`` in level-0 pixels) whose tiles are outlined
            and tinted: blue, or by ``label`` when present (red tumour, grey ignored, blue normal).
        max_side_px: the image is scaled so that its longer side is at most this (and small thumbnails are
            enlarged up to it, at most 8 times, so outlines stay readable).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = tissue.mask.shape
    scale = min(8.0, max_side_px / max(1, height, width))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = cv2.resize(np.ascontiguousarray(tissue.thumbnail), (out_w, out_h), interpolation=interpolation)
    canvas = np.ascontiguousarray(canvas)
    px_per_lv0 = scale / tissue.downsample
    thickness = max(1, round(min(out_w, out_h) / 400))

    if tiles is not None and len(tiles):
        side_lv0 = tiles["tile_size_lv0"].to_numpy(float) if "tile_size_lv0" in tiles else None
        if side_lv0 is None:
            msg = "save_tissue_png: the tile table needs a tile_size_lv0 column to draw tiles"
            raise ValueError(msg)
        x0 = np.round(tiles["x"].to_numpy(float) * px_per_lv0).astype(np.int32)
        y0 = np.round(tiles["y"].to_numpy(float) * px_per_lv0).astype(np.int32)
        x1 = np.round((tiles["x"].to_numpy(float) + side_lv0) * px_per_lv0).astype(np.int32) - 1
        y1 = np.round((tiles["y"].to_numpy(float) + side_lv0) * px_per_lv0).astype(np.int32) - 1
        labels = tiles["label"].to_numpy() if "label" in tiles else np.zeros(len(tiles), dtype=np.int64)
        fills = {1: _TUMOUR_RGB, -1: (128, 128, 128)}
        overlay = canvas.copy()
        for a, b, c, d, label in zip(x0, y0, x1, y1, labels, strict=True):
            cv2.rectangle(overlay, (int(a), int(b)), (int(c), int(d)), fills.get(int(label), _TILE_RGB), -1)
        canvas = cv2.addWeighted(overlay, 0.25, canvas, 0.75, 0)
        if float(np.median(x1 - x0)) >= 6:  # outlines only where a tile is big enough to show them
            for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
                cv2.rectangle(canvas, (int(a), int(b)), (int(c), int(d)), _TILE_RGB, 1)

    mask_big = cv2.resize(tissue.mask.astype(np.uint8), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask_big, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, _TISSUE_RGB, thickness + 1)

    if annotations is not None:
        for geometry, colour in (
            (getattr(annotations, "non_tumour", None), _NON_TUMOUR_RGB),
            (getattr(annotations, "tumour", None), _TUMOUR_RGB),
        ):
            rings = [np.round(ring[:, :2] * px_per_lv0).astype(np.int32) for ring in _geometry_rings(geometry)]
            if rings:
                cv2.polylines(canvas, rings, isClosed=True, color=colour, thickness=thickness + 1)

    canvas = _add_legend(canvas, tiles is not None, annotations is not None, n_tiles=0 if tiles is None else len(tiles))
    if not cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        msg = f"cannot write {path}"
        raise OSError(msg)
    return path


def _add_legend(canvas: np.ndarray, with_tiles: bool, with_annotations: bool, n_tiles: int) -> np.ndarray:
    """Append a white strip under the image naming the colours."""
    entries = [("tissue", _TISSUE_RGB)]
    if with_tiles:
        entries.append((f"{n_tiles} tiles", _TILE_RGB))
    if with_annotations:
        entries += [("tumour", _TUMOUR_RGB), ("non-tumour", _NON_TUMOUR_RGB)]
    strip_h = 22
    strip = np.full((strip_h, canvas.shape[1], 3), 255, np.uint8)
    x = 6
    for text, colour in entries:
        cv2.rectangle(strip, (x, 6), (x + 10, 16), colour, -1)
        cv2.putText(strip, text, (x + 14, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x += 24 + 8 * len(text)
    return np.concatenate([canvas, strip], axis=0)
