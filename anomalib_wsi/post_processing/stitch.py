"""Stitch tile scores (or per-tile anomaly maps) into a slide heatmap at the tile-stride resolution.

A heatmap is a small float32 grid: cell ``(r, c)`` covers level-0 pixels ``[c * ds, (c + 1) * ds)`` x
``[r * ds, (r + 1) * ds)`` with ``ds = Heatmap.downsample``. A tile contributes to every cell whose centre lies
inside it, and a cell covered by several tiles gets their mean, so overlapping tiles (stride below the tile size)
are averaged. Memory is that of the grid (two float32 arrays of its size), never of a level-0 canvas: a
100k x 200k px slide at 256 px tiles gives a 782 x 391 grid (1.2 MB).

Example:
    >>> import numpy as np
    >>> heatmap = stitch_tile_scores(
    ...     xs_lv0=[0, 256], ys_lv0=[0, 0], scores=[0.1, 0.9],
    ...     tile_size_lv0=256, stride_lv0=256, slide_size_lv0=(512, 256))
    >>> np.round(heatmap.values.astype(float), 2).tolist(), heatmap.downsample
    ([[0.1, 0.9]], 256.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Heatmap", "HeatmapAccumulator", "stitch_tile_scores"]


@dataclass
class Heatmap:
    """A slide heatmap on a regular grid, with NaN where no tile was scored.

    Attributes:
        values: float32 array (H, W); cell ``(r, c)`` covers level-0 ``[c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)``.
        downsample: ``ds``, level-0 pixels per heatmap cell side.
        slide_id: the slide the map belongs to.
        slide_size_lv0: slide ``(width, height)`` in level-0 pixels (openslide's order); the last row and column of
            cells may reach past it.
        source: ``"score"`` when the map was stitched from tile scores (anomalib's ``pred_score``), ``"map"`` when
            from per-tile anomaly maps (anomalib's ``anomaly_map``); it selects the image or pixel normalisation.
    """

    values: np.ndarray
    downsample: float
    slide_id: str
    slide_size_lv0: tuple[int, int]
    source: str = "score"

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape (H, W) in cells."""
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    @property
    def scored_fraction(self) -> float:
        """Fraction of cells that received at least one tile (0 for an empty grid)."""
        return float(np.isfinite(self.values).mean()) if self.values.size else 0.0

    def with_values(self, values: np.ndarray) -> Heatmap:
        """A copy of this heatmap's geometry with other values of the same shape (e.g. normalised ones).

        Args:
            values: array of shape ``self.shape``.

        Returns:
            A new :class:`Heatmap` holding ``values`` as float32.
        """
        values = np.asarray(values, dtype=np.float32)
        if values.shape != self.values.shape:
            msg = f"values of shape {values.shape} do not fit a heatmap of shape {self.values.shape}"
            raise ValueError(msg)
        return Heatmap(values, self.downsample, self.slide_id, self.slide_size_lv0, self.source)


def _grid_shape(slide_size_lv0: tuple[int, int], downsample: float) -> tuple[int, int]:
    width, height = slide_size_lv0
    return max(1, math.ceil(height / downsample)), max(1, math.ceil(width / downsample))


def _spans(starts_lv0: np.ndarray, tile_size_lv0: float, downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """First cell and cell count along one axis for each tile: the cells whose centre lies inside the tile.

    A tile smaller than a cell that holds no cell centre goes to the cell holding the tile's own centre.
    """
    first = np.ceil(starts_lv0 / downsample - 0.5)
    stop = np.ceil((starts_lv0 + tile_size_lv0) / downsample - 0.5)
    empty = stop <= first
    if empty.any():
        first = np.where(empty, np.floor((starts_lv0 + tile_size_lv0 / 2) / downsample), first)
        stop = np.where(empty, first + 1, stop)
    return first.astype(np.int64), (stop - first).astype(np.int64)


def _area_resize(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize (N, h, w) maps to (N, out_h, out_w) with area interpolation (block means when sizes divide)."""
    n, h, w = maps.shape
    if (h, w) == (out_h, out_w):
        return maps.astype(np.float32, copy=False)
    if h % out_h == 0 and w % out_w == 0:
        blocks = maps.reshape(n, out_h, h // out_h, out_w, w // out_w)
        return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)
    out = np.empty((n, out_h, out_w), dtype=np.float32)
    for i in range(n):
        out[i] = cv2.resize(maps[i].astype(np.float32, copy=False), (out_w, out_h), interpolation=cv2.INTER_AREA)
    return out


class HeatmapAccumulator:
    """Streaming stitcher: add tile scores (or per-tile anomaly maps) batch by batch, then read the mean grid.

    The cell side is the tile stride when ``cells_per_tile`` is 1, else ``min(stride_lv0, tile_size_lv0 /
    cells_per_tile)`` level-0 pixels: finer when ``cells_per_tile`` asks for more cells per tile side (then
    per-tile anomaly maps are area-downsampled onto the cells each tile covers). Tile scores without maps fill
    every covered cell with the tile's score. Memory: two float32 arrays of the grid's size.

    Args:
        slide_size_lv0: slide ``(width, height)`` in level-0 pixels.
        tile_size_lv0: tile side in level-0 pixels (may be fractional).
        stride_lv0: step between tiles in level-0 pixels (may be fractional).
        cells_per_tile: minimum number of heatmap cells along one tile side.
        slide_id: the slide's identifier, copied into the result.

    Example:
        >>> acc = HeatmapAccumulator((1024, 1024), tile_size_lv0=256, stride_lv0=256, cells_per_tile=4)
        >>> acc.add([0], [0], [0.7], maps=np.full((1, 64, 64), 0.7, dtype=np.float32))
        >>> acc.result().values.shape
        (16, 16)
    """

    def __init__(
        self,
        slide_size_lv0: tuple[int, int],
        tile_size_lv0: float,
        stride_lv0: float,
        cells_per_tile: int = 1,
        slide_id: str = "",
    ) -> None:
        if tile_size_lv0 <= 0 or stride_lv0 <= 0:
            msg = f"tile size ({tile_size_lv0}) and stride ({stride_lv0}) must be positive level-0 pixel counts"
            raise ValueError(msg)
        if cells_per_tile < 1:
            msg = f"cells_per_tile must be at least 1, got {cells_per_tile}"
            raise ValueError(msg)
        width, height = (int(v) for v in slide_size_lv0)
        if width <= 0 or height <= 0:
            msg = f"slide size must be positive (width, height), got {slide_size_lv0}"
            raise ValueError(msg)
        self.slide_size_lv0 = (width, height)
        self.tile_size_lv0 = float(tile_size_lv0)
        self.stride_lv0 = float(stride_lv0)
        self.cells_per_tile = int(cells_per_tile)
        self.slide_id = slide_id
        self.downsample = (
            self.stride_lv0 if cells_per_tile == 1 else min(self.stride_lv0, self.tile_size_lv0 / cells_per_tile)
        )
        self.shape = _grid_shape(self.slide_size_lv0, self.downsample)
        self._sum = np.zeros(self.shape[0] * self.shape[1], dtype=np.float32)
        self._count = np.zeros(self.shape[0] * self.shape[1], dtype=np.float32)
        self._used_maps = False
        self.n_tiles = 0

    @property
    def cells_per_tile_side(self) -> int:
        """Cells covered by one grid-aligned tile along a side: pool maps to this size on the GPU to save time."""
        return max(1, round(self.tile_size_lv0 / self.downsample))

    def add(
        self,
        xs_lv0: np.ndarray | list[float],
        ys_lv0: np.ndarray | list[float],
        scores: np.ndarray | list[float],
        maps: np.ndarray | None = None,
    ) -> None:
        """Add a batch of tiles.

        Args:
            xs_lv0: level-0 x of each tile's top-left corner, shape (N,).
            ys_lv0: level-0 y of each tile's top-left corner, shape (N,).
            scores: raw tile scores, shape (N,); used where ``maps`` is None.
            maps: optional per-tile anomaly maps (N, h, w) or (N, 1, h, w) covering each whole tile; when given
                they are area-downsampled onto the cells the tile covers instead of repeating its score.
        """
        xs = np.asarray(xs_lv0, dtype=np.float64).reshape(-1)
        ys = np.asarray(ys_lv0, dtype=np.float64).reshape(-1)
        score_arr = np.asarray(scores, dtype=np.float32).reshape(-1)
        n = xs.size
        if ys.size != n or (maps is None and score_arr.size != n):
            msg = f"xs ({xs.size}), ys ({ys.size}) and scores ({score_arr.size}) must have one value per tile"
            raise ValueError(msg)
        if n == 0:
            return
        map_arr: np.ndarray | None = None
        if maps is not None:
            map_arr = np.asarray(maps, dtype=np.float32)
            if map_arr.ndim == 4 and map_arr.shape[1] == 1:
                map_arr = map_arr[:, 0]
            if map_arr.ndim != 3 or map_arr.shape[0] != n:
                msg = f"maps must have shape (N, h, w) with N = {n} tiles, got {np.shape(maps)}"
                raise ValueError(msg)
            self._used_maps = True
        col0, ncols = _spans(xs, self.tile_size_lv0, self.downsample)
        row0, nrows = _spans(ys, self.tile_size_lv0, self.downsample)
        height, width = self.shape
        if nrows.min() == nrows.max() and ncols.min() == ncols.max():  # the usual case: one span for all tiles
            groups = np.array([[nrows[0], ncols[0]]])
        else:
            groups = np.unique(np.stack([nrows, ncols], axis=1), axis=0)
        for mh, mw in groups:
            sel = np.flatnonzero((nrows == mh) & (ncols == mw)) if len(groups) > 1 else np.arange(n)
            if map_arr is not None:
                values = _area_resize(map_arr[sel], int(mh), int(mw))
            else:
                values = np.broadcast_to(score_arr[sel, None, None], (sel.size, int(mh), int(mw)))
            rows = row0[sel, None, None] + np.arange(mh)[None, :, None]
            cols = col0[sel, None, None] + np.arange(mw)[None, None, :]
            rows, cols = np.broadcast_arrays(rows, cols)
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width) & np.isfinite(values)
            flat = rows[inside] * width + cols[inside]
            np.add.at(self._sum, flat, values[inside])
            np.add.at(self._count, flat, 1.0)
        self.n_tiles += n

    def result(self) -> Heatmap:
        """The mean of the tiles added so far per cell, NaN where none was added.

        Returns:
            A :class:`Heatmap` (float32 values of shape ``self.shape``).
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(self._count > 0, self._sum / np.maximum(self._count, 1.0), np.nan)
        return Heatmap(
            values=values.astype(np.float32).reshape(self.shape),
            downsample=self.downsample,
            slide_id=self.slide_id,
            slide_size_lv0=self.slide_size_lv0,
            source="map" if self._used_maps else "score",
        )


def stitch_tile_scores(
    xs_lv0: np.ndarray | list[float],
    ys_lv0: np.ndarray | list[float],
    scores: np.ndarray | list[float],
    tile_size_lv0: float,
    stride_lv0: float,
    slide_size_lv0: tuple[int, int],
    slide_id: str = "",
) -> Heatmap:
    """Stitch one slide's tile scores into a heatmap on a grid at the tile stride, averaging overlaps.

    Args:
        xs_lv0: level-0 x of each tile's top-left corner, shape (N,).
        ys_lv0: level-0 y of each tile's top-left corner, shape (N,).
        scores: tile scores, shape (N,).
        tile_size_lv0: tile side in level-0 pixels.
        stride_lv0: step between tiles in level-0 pixels; the heatmap cell side.
        slide_size_lv0: slide ``(width, height)`` in level-0 pixels.
        slide_id: the slide's identifier.

    Returns:
        A :class:`Heatmap` with ``downsample == stride_lv0`` and NaN where no tile was scored.
    """
    acc = HeatmapAccumulator(slide_size_lv0, tile_size_lv0, stride_lv0, cells_per_tile=1, slide_id=slide_id)
    acc.add(xs_lv0, ys_lv0, scores)
    return acc.result()
