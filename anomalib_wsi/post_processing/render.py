"""The ``heatmap.png`` picture: a slide heatmap over the slide thumbnail, with a colour bar and lesion outlines.

Drawn with matplotlib's Agg canvas (no display, no pyplot state), 1000 px wide. Low scores are nearly
transparent so the tissue stays visible, high scores nearly opaque; unscored cells (NaN) are fully transparent.

Example:
    >>> thumbnail, thumbnail_downsample = slide.read_thumbnail()                  # doctest: +SKIP
    >>> render_heatmap_png("heatmap.png", heatmap, thumbnail, thumbnail_downsample, lesions)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from shapely.geometry import MultiPolygon, Polygon

from anomalib_wsi.files import atomic_path
from anomalib_wsi.post_processing.lesions import Lesion
from anomalib_wsi.post_processing.stitch import Heatmap

__all__ = ["render_heatmap_png"]

#: Width of the picture in pixels.
WIDTH_PX = 1000
_DPI = 100
_CMAP = "turbo"
_OUTLINE_COLOR = "#00f5ff"
_MIN_ALPHA, _MAX_ALPHA = 0.08, 0.8


def _overlay_rgba(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """RGBA image of the heatmap: colour from the colour map, opacity rising with the score, NaN transparent."""
    span = vmax - vmin if vmax > vmin else 1.0
    norm = np.clip((values - vmin) / span, 0.0, 1.0)
    finite = np.isfinite(norm)
    norm = np.where(finite, norm, 0.0)
    rgba = colormaps[_CMAP](norm)
    rgba[..., 3] = np.where(finite, _MIN_ALPHA + (_MAX_ALPHA - _MIN_ALPHA) * norm, 0.0)
    return rgba


def _rings(geometry: Polygon | MultiPolygon) -> list[np.ndarray]:
    polygons = list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]
    rings: list[np.ndarray] = []
    for polygon in polygons:
        rings.append(np.asarray(polygon.exterior.coords))
        rings.extend(np.asarray(interior.coords) for interior in polygon.interiors)
    return rings


def render_heatmap_png(
    path: str | Path,
    heatmap: Heatmap,
    thumbnail: np.ndarray,
    thumbnail_downsample: float,
    lesions: Sequence[Lesion] | None = None,
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """Draw the heatmap semi-transparently over the slide thumbnail and write it as a PNG (atomically).

    Args:
        path: output ``.png`` path (parent folders are created).
        heatmap: the (normalised) slide heatmap.
        thumbnail: slide thumbnail, uint8 (h, w, 3) RGB or (h, w) grey.
        thumbnail_downsample: level-0 pixels per thumbnail pixel.
        lesions: lesions whose outlines (holes included) are drawn; None draws none.
        title: picture title; the slide id when empty.
        vmin: score drawn with the lowest colour.
        vmax: score drawn with the highest colour.

    Returns:
        The path written; the picture is 1000 px wide.
    """
    path = Path(path)
    slide_w, slide_h = heatmap.slide_size_lv0
    # Image area about 830 px wide; the height follows the slide's aspect ratio within sensible bounds.
    image_h_px = float(np.clip(830.0 * slide_h / max(slide_w, 1), 240.0, 1500.0))
    height_px = round(image_h_px + 110)
    fig = Figure(figsize=(WIDTH_PX / _DPI, height_px / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    top = 1.0 - 55.0 / height_px
    bottom = 25.0 / height_px
    ax = fig.add_axes((0.02, bottom, 0.83, top - bottom))
    cax = fig.add_axes((0.875, bottom + 0.1 * (top - bottom), 0.022, 0.8 * (top - bottom)))

    ax.imshow(
        thumbnail,
        extent=(0, thumbnail.shape[1] * thumbnail_downsample, thumbnail.shape[0] * thumbnail_downsample, 0),
        interpolation="antialiased",
        cmap="gray" if thumbnail.ndim == 2 else None,
    )
    rows, cols = heatmap.values.shape
    ds = heatmap.downsample
    ax.imshow(
        _overlay_rgba(heatmap.values, vmin, vmax),
        extent=(0, cols * ds, rows * ds, 0),
        interpolation="nearest",
    )
    for lesion in lesions or []:
        for ring in _rings(lesion.polygon):
            ax.plot(ring[:, 0], ring[:, 1], color="black", linewidth=2.6, alpha=0.6, solid_joinstyle="round")
            ax.plot(ring[:, 0], ring[:, 1], color=_OUTLINE_COLOR, linewidth=1.3, solid_joinstyle="round")
    ax.set_xlim(0, slide_w)
    ax.set_ylim(slide_h, 0)
    ax.set_aspect("equal", anchor="C")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#999999")

    colorbar = fig.colorbar(ScalarMappable(norm=Normalize(vmin, vmax), cmap=_CMAP), cax=cax)
    colorbar.set_label("anomaly score", fontsize=11)
    colorbar.ax.tick_params(labelsize=9)
    n_lesions = len(lesions) if lesions is not None else 0
    subtitle = f"{n_lesions} lesion{'s' if n_lesions != 1 else ''}" if lesions is not None else ""
    fig.text(0.02, 1.0 - 22.0 / height_px, title or heatmap.slide_id, fontsize=14, weight="bold", va="center")
    fig.text(0.85, 1.0 - 22.0 / height_px, subtitle, fontsize=11, color="#444444", va="center", ha="right")

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return path
