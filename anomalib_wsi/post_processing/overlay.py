"""``heatmap.tif``: the slide heatmap as a tiled, pyramidal TIFF that slide viewers lay over the slide.

The heatmap is resampled (nearest cell: each output pixel takes the value of the heatmap cell under its centre)
to a level of the slide, ``level_downsample`` level-0 pixels per output pixel, and written tile by tile with
tifffile: a full-resolution page, then reduced pages (``subfiletype=1``) halving the size until it fits one tile,
each made from the heatmap directly. The pixel size is the slide's scaled, ``slide_mpp * level_downsample`` µm,
in the resolution tags (``resolution = 1e4 / mpp`` pixels per centimetre, unit CENTIMETER), which openslide
reports as ``openslide.mpp-x`` / ``mpp-y``. Level-0 point ``(x, y)`` of the slide is pixel
``(x // level_downsample, y // level_downsample)`` of the overlay; the page is ``slide_size // level_downsample``
pixels (rounded down), so the slide-to-overlay size ratio is the same whole number along both axes, as ASAP
requires of an overlay.

Modes (compression zlib/deflate, lossless; JPEG would blur scores):

- ``"uint8"``: one channel, ``value_range`` mapped to 0-255 (0 also where nothing was scored). openslide reads it
  as grey RGBA (R = G = B = the value).
- ``"float32"``: one channel, the scores themselves, NaN where nothing was scored. For ASAP (its "Traffic Light"
  colours for float maps), QuPath and Python; openslide opens it and reports its levels and mpp but cannot decode
  32-bit samples (libtiff's RGBA interface refuses them).
- ``"rgba"``: the ``turbo`` colours of ``heatmap.png`` with the same opacity rising with the score
  (0.08 to 0.8), transparent where nothing was scored, for viewers that do not colour maps themselves.
  openslide returns the colours after premultiplication by the alpha (so, inexactly where the alpha is low).

Memory is that of one tile plus per-axis index arrays, never a canvas of a whole page (let alone level 0).

Measured by ``benchmarks/bench_overlay.py`` (a 100k x 200k px slide, a 391 x 196 heatmap of 512 px cells with
30,000 scored; a 2-core CPU that other work shared, best of 5): at ``level_downsample=16`` (6,250 x 12,500 px, 7
pages) ``uint8`` is written in 0.55 s (0.6 MB), ``float32`` in 1.2 s (2.1 MB), ``rgba`` in 1.2 s (1.9 MB); at 32
(3,125 x 6,250 px, 6 pages) in 0.12-0.29 s (0.3-1.0 MB). Peak traced memory while writing: under 2 MB, where the
first page alone as an array would take 78 to 312 MB.

Example:
    >>> write_heatmap_tiff("heatmap.tif", result.heatmap, slide_mpp=0.243, level_downsample=16)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_wsi.files import atomic_path
from anomalib_wsi.post_processing.stitch import Heatmap

__all__ = ["HEATMAP_TIFF_MODES", "heatmap_tiff_levels", "write_heatmap_tiff"]

#: Pixel formats of :func:`write_heatmap_tiff`.
HEATMAP_TIFF_MODES = ("uint8", "float32", "rgba")

_COLORMAP = "turbo"  # as heatmap.png
_MIN_ALPHA, _MAX_ALPHA = 0.08, 0.8  # as heatmap.png


def heatmap_tiff_levels(
    slide_size_lv0: tuple[int, int], level_downsample: float, tile_size: int = 256
) -> list[tuple[int, int]]:
    """The page sizes ``(width, height)`` that :func:`write_heatmap_tiff` writes, largest first.

    Args:
        slide_size_lv0: slide ``(width, height)`` in level-0 pixels.
        level_downsample: level-0 pixels per pixel of the first page.
        tile_size: TIFF tile side; halving stops once a page fits in one tile.

    Returns:
        One ``(width, height)`` per page: ``slide_size // level_downsample`` (at least 1), then halved (rounded
        up) until both sides are at most ``tile_size``.
    """
    width = max(1, math.floor(slide_size_lv0[0] / level_downsample))
    height = max(1, math.floor(slide_size_lv0[1] / level_downsample))
    levels = [(width, height)]
    while max(width, height) > tile_size:
        width, height = -(-width // 2), -(-height // 2)
        levels.append((width, height))
    return levels


def write_heatmap_tiff(
    path: str | Path,
    heatmap: Heatmap,
    slide_mpp: float,
    slide_size_lv0: tuple[int, int] | None = None,
    level_downsample: float = 16.0,
    mode: str = "uint8",
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    tile_size: int = 256,
) -> Path:
    """Write a slide heatmap as a tiled pyramidal TIFF aligned with the slide (see the module docstring).

    Args:
        path: output ``.tif`` file; written atomically.
        heatmap: the slide heatmap (normally the normalised one, 0.5 = the learnt threshold).
        slide_mpp: level-0 µm per pixel of the slide.
        slide_size_lv0: slide ``(width, height)`` in level-0 pixels; default ``heatmap.slide_size_lv0``.
        level_downsample: level-0 pixels per overlay pixel (a level of the slide, e.g. 16 or 32; a whole number
            keeps ASAP's overlay scale exact). The heatmap's cells are ``heatmap.downsample`` level-0 pixels, so a
            value at or below it keeps every cell.
        mode: ``"uint8"``, ``"float32"`` or ``"rgba"``.
        value_range: scores mapped to 0 and 255 (``uint8``) or to the ends of the colour map (``rgba``); values
            outside are clipped. Unused by ``float32``.
        tile_size: TIFF tile side in pixels (a multiple of 16).

    Returns:
        The path written.

    Raises:
        ValueError: an unknown ``mode``, a non-positive ``slide_mpp`` or ``level_downsample``, an empty
            ``value_range``, or a ``tile_size`` that is not a positive multiple of 16.
    """
    import tifffile

    problems = []
    if mode not in HEATMAP_TIFF_MODES:
        problems.append(f"mode={mode!r} (use one of {', '.join(HEATMAP_TIFF_MODES)})")
    if not (math.isfinite(slide_mpp) and slide_mpp > 0):
        problems.append(f"slide_mpp={slide_mpp!r} (pass the slide's level-0 µm per pixel)")
    if not (math.isfinite(level_downsample) and level_downsample > 0):
        problems.append(f"level_downsample={level_downsample!r} (use a positive number, e.g. 16)")
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        problems.append(f"value_range={value_range!r} (use (low, high) with high > low)")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 16 or tile_size % 16:
        problems.append(f"tile_size={tile_size!r} (use a positive multiple of 16, e.g. 256)")
    if problems:
        msg = "write_heatmap_tiff: invalid setting " + "; ".join(problems)
        raise ValueError(msg)
    size_lv0 = heatmap.slide_size_lv0 if slide_size_lv0 is None else slide_size_lv0
    values = np.asarray(heatmap.values, dtype=np.float32)
    table = _cell_table(values, mode, low, high)
    levels = heatmap_tiff_levels(size_lv0, float(level_downsample), tile_size)
    dtype = np.float32 if mode == "float32" else np.uint8
    samples = 4 if mode == "rgba" else 1
    raw_bytes = sum(w * h for w, h in levels) * samples * np.dtype(dtype).itemsize
    options: dict[str, Any] = {
        "photometric": "rgb" if mode == "rgba" else "minisblack",
        "compression": "zlib",
        "tile": (tile_size, tile_size),
        "resolutionunit": "CENTIMETER",
        "software": "anomalib-wsi",
    }
    if mode == "rgba":
        options["extrasamples"] = ["unassalpha"]
    path = Path(path)
    with atomic_path(path, suffix=".tif") as tmp, tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31) as tif:
        for index, (width, height) in enumerate(levels):
            # the level-0 size each page pixel stands for (exactly level_downsample on the first page)
            ds_x = float(level_downsample) * levels[0][0] / width
            ds_y = float(level_downsample) * levels[0][1] / height
            rows = _cell_index(height, ds_y, float(heatmap.downsample), values.shape[0])
            cols = _cell_index(width, ds_x, float(heatmap.downsample), values.shape[1])
            shape = (height, width, 4) if mode == "rgba" else (height, width)
            tif.write(
                _tiles(table, rows, cols, tile_size),
                shape=shape,
                dtype=dtype,
                subfiletype=1 if index else 0,
                resolution=(1e4 / (slide_mpp * ds_x), 1e4 / (slide_mpp * ds_y)),
                **options,
            )
    return path


def _cell_index(count: int, downsample: float, cell_lv0: float, cells: int) -> np.ndarray:
    """Heatmap cell under the centre of each of ``count`` pixels of ``downsample`` level-0 px; -1 past the map."""
    centres = (np.arange(count, dtype=np.float64) + 0.5) * downsample
    index = np.floor(centres / cell_lv0).astype(np.int64)
    return np.where(index < cells, index, -1)


def _rgba_lut() -> np.ndarray:
    """256 x 4 uint8: the ``turbo`` colour of each uint8 level, opacity rising from 0.08 to 0.8 as in heatmap.png."""
    from matplotlib import colormaps

    levels = np.linspace(0.0, 1.0, 256)
    lut = colormaps[_COLORMAP](levels)
    lut[:, 3] = _MIN_ALPHA + (_MAX_ALPHA - _MIN_ALPHA) * levels
    return np.round(lut * 255).astype(np.uint8)


def _cell_table(values: np.ndarray, mode: str, low: float, high: float) -> np.ndarray:
    """The output pixel of every heatmap cell, plus one last row and column of 'not scored' (index -1)."""
    padded = np.full((values.shape[0] + 1, values.shape[1] + 1), np.nan, dtype=np.float32)
    padded[:-1, :-1] = values
    if mode == "float32":
        return padded
    finite = np.isfinite(padded)
    scaled = np.clip((np.where(finite, padded, low) - low) / (high - low), 0.0, 1.0)
    level = np.where(finite, np.round(scaled * 255), 0).astype(np.uint8)
    if mode == "uint8":
        return level
    rgba = _rgba_lut()[level]
    rgba[~finite] = 0
    return rgba


def _tiles(table: np.ndarray, rows: np.ndarray, cols: np.ndarray, tile_size: int) -> Iterator[np.ndarray]:
    """The page's tiles in row-major order, gathered from the cell table (edge tiles smaller; tifffile pads them)."""
    for top in range(0, rows.size, tile_size):
        band = table.take(rows[top : top + tile_size], axis=0)
        for left in range(0, cols.size, tile_size):
            yield band.take(cols[left : left + tile_size], axis=1)
