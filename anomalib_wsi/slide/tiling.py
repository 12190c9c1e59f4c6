"""Tile tables: a grid of tiles at a target mpp, kept where a low-resolution tissue mask covers them.

A tile table is one pandas DataFrame per slide, one row per tile, with the same columns everywhere:
``slide_id``, ``x``, ``y`` (level-0 top-left, ints), ``level``, ``read_size_px`` (side read at that level),
``tile_size_px`` (side given to the model), ``tissue_fraction``, and ``tile_size_lv0`` (tile side in level-0
pixels, a float, for stitching).
Tissue fractions come from the mask by integral image: no pixel reads per tile.

Example:
    >>> config = TilingConfig(mpp=0.5, tile_size_px=256)
    >>> table, tissue = load_or_tile("tumor_001.tif", config, cache_dir=Path("tiles/tumor_001"))  # doctest: +SKIP
    >>> table[["x", "y", "tissue_fraction"]].head()                                              # doctest: +SKIP

Command line: ``anomalib-wsi tile SLIDE... --output DIR [--mpp 0.5 --tile-size 256 --slide-mpp X]``
(:mod:`anomalib_wsi.cli.tile`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomalib_wsi.files import atomic_path
from anomalib_wsi.slide.coverage import coverage_from_integral, mask_integral
from anomalib_wsi.slide.reader import ReadPlan, Slide
from anomalib_wsi.slide.tissue import TissueConfig, TissueMask, detect_tissue

__all__ = [
    "TILES_CSV",
    "TILES_JSON",
    "TILE_COLUMNS",
    "TilingConfig",
    "grid_positions",
    "load_or_tile",
    "read_tile_table",
    "read_tiling_record",
    "tile_slide",
    "tiles_from_mask",
]

logger = logging.getLogger(__name__)

#: Columns of a tile table, in order.
TILE_COLUMNS = ("slide_id", "x", "y", "level", "read_size_px", "tile_size_px", "tissue_fraction", "tile_size_lv0")
_CACHE_VERSION = 1
#: The tile table and its parameters, cached in a slide folder.
TILES_CSV = "tiles.csv"
TILES_JSON = "tiles.json"
#: Grid positions scored at once by :func:`tiles_from_mask` (about 60 MB of temporaries).
_BLOCK_TILES = 1 << 19
#: At or below this ``min_tissue`` every grid position is scored (a tile without tissue can still reach a
#: fraction of ~1e-8 by float rounding of the integral image).
_EXACT_BELOW = 1e-6


@dataclass(frozen=True)
class TilingConfig:
    """How a slide is cut into tiles.

    Args:
        mpp: resolution of the tiles given to the model, in µm per pixel.
        tile_size_px: tile side at ``mpp``.
        stride_px: step between tiles at ``mpp``; ``None`` means the tile size (no overlap).
        min_tissue: a tile is kept when at least this fraction of it is tissue (0 keeps every tile).
        mpp_tolerance: relative tolerance when matching a pyramid level to ``mpp`` (0.1 = 10 %); a level within
            it is read without resizing.
        tissue: tissue detection settings.

    Raises:
        ValueError: a value out of its range.
    """

    mpp: float = 0.5
    tile_size_px: int = 256
    stride_px: int | None = None
    min_tissue: float = 0.5
    mpp_tolerance: float = 0.1
    tissue: TissueConfig = field(default_factory=TissueConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.mpp, int | float) and math.isfinite(self.mpp) and self.mpp > 0):
            msg = f"TilingConfig.mpp must be a positive number of µm per pixel, got {self.mpp}"
            raise ValueError(msg)
        if not isinstance(self.tile_size_px, int | np.integer) or self.tile_size_px < 1:
            msg = f"TilingConfig.tile_size_px must be a positive whole number of pixels, got {self.tile_size_px}"
            raise ValueError(msg)
        if self.stride_px is not None and (not isinstance(self.stride_px, int | np.integer) or self.stride_px < 1):
            msg = f"TilingConfig.stride_px must be a positive whole number of pixels or None, got {self.stride_px}"
            raise ValueError(msg)
        if not 0 <= self.min_tissue <= 1:
            msg = f"TilingConfig.min_tissue must be in [0, 1], got {self.min_tissue}"
            raise ValueError(msg)
        if not 0 <= self.mpp_tolerance < 1:
            msg = f"TilingConfig.mpp_tolerance must be in [0, 1), got {self.mpp_tolerance}"
            raise ValueError(msg)
        if not isinstance(self.tissue, TissueConfig):
            msg = f"TilingConfig.tissue must be a TissueConfig, got {type(self.tissue).__name__}"
            raise ValueError(msg)

    @property
    def effective_stride_px(self) -> int:
        """Step between tiles at the target mpp (the tile size when ``stride_px`` is None)."""
        return int(self.stride_px) if self.stride_px is not None else int(self.tile_size_px)


def grid_positions(length_lv0: int, extent_lv0: float, stride_lv0: float) -> np.ndarray:
    """Level-0 starts of tiles along one axis, from 0, every ``stride_lv0``, each ending inside ``length_lv0``.

    Args:
        length_lv0: slide side in level-0 pixels.
        extent_lv0: level-0 length a tile covers (what is read).
        stride_lv0: step between tiles in level-0 pixels.

    Returns:
        int64 array of starts (floored to whole pixels, so every tile ends at or before ``length_lv0``).
    """
    if extent_lv0 > length_lv0:
        return np.zeros(0, dtype=np.int64)
    count = math.floor((length_lv0 - extent_lv0) / stride_lv0 + 1e-9) + 1
    starts = np.floor(np.arange(count, dtype=np.float64) * stride_lv0 + 1e-9).astype(np.int64)
    return starts[starts + extent_lv0 <= length_lv0 + 1e-6]


def tiles_from_mask(
    mask: np.ndarray,
    mask_downsample: float,
    dimensions: tuple[int, int],
    plan: ReadPlan,
    stride_px: int | None = None,
    min_tissue: float = 0.5,
    slide_id: str = "",
) -> pd.DataFrame:
    """Tile table of a slide from its tissue mask: every grid tile inside the slide with enough tissue.

    Only grid rows and columns whose footprint meets a mask row / column holding tissue are candidates, and
    they are scored in blocks of at most :data:`_BLOCK_TILES`: memory follows the tiles kept and the mask, not
    the slide's claimed area (a small file claiming 10^6 x 10^6 px has 15 million grid positions). The table
    is the same as scoring every grid position: a tile outside the candidates has no tissue at all, so no
    ``min_tissue`` above :data:`_EXACT_BELOW` keeps it; at or below it every grid position is scored.

    Args:
        mask: (H, W) bool tissue mask at ``mask_downsample``.
        mask_downsample: level-0 pixels per mask pixel.
        dimensions: level-0 ``(width, height)`` of the slide.
        plan: how tiles are read (level, read size, tile side in level-0 pixels).
        stride_px: step between tiles at the target mpp (default: the tile size).
        min_tissue: smallest tissue fraction of a kept tile.
        slide_id: value of the ``slide_id`` column.

    Returns:
        The tile table (columns :data:`TILE_COLUMNS`), row-major order (y, then x).
    """
    stride_px = plan.tile_size_px if stride_px is None else int(stride_px)
    stride_lv0 = stride_px * plan.tile_size_lv0 / plan.tile_size_px
    extent_lv0 = max(plan.tile_size_lv0, plan.read_size_px * plan.level_downsample)
    width, height = dimensions
    xs = grid_positions(int(width), extent_lv0, stride_lv0)
    ys = grid_positions(int(height), extent_lv0, stride_lv0)
    mask = np.asarray(mask)
    if min_tissue > _EXACT_BELOW and xs.size and ys.size:
        xs = xs[_meets_tissue(np.any(mask, axis=0), xs, plan.tile_size_lv0, mask_downsample)]
        ys = ys[_meets_tissue(np.any(mask, axis=1), ys, plan.tile_size_lv0, mask_downsample)]
    kept_x: list[np.ndarray] = []
    kept_y: list[np.ndarray] = []
    kept_fraction: list[np.ndarray] = []
    if xs.size and ys.size:
        integral = mask_integral(mask)
        rows_per_block = max(1, _BLOCK_TILES // xs.size)
        for start in range(0, ys.size, rows_per_block):
            block_y, block_x = np.meshgrid(ys[start : start + rows_per_block], xs, indexing="ij")
            block_x, block_y = block_x.ravel(), block_y.ravel()
            fractions = coverage_from_integral(integral, mask_downsample, block_x, block_y, plan.tile_size_lv0)
            keep = fractions >= min_tissue
            kept_x.append(block_x[keep])
            kept_y.append(block_y[keep])
            kept_fraction.append(fractions[keep])
    grid_x = np.concatenate(kept_x) if kept_x else np.zeros(0, dtype=np.int64)
    grid_y = np.concatenate(kept_y) if kept_y else np.zeros(0, dtype=np.int64)
    fraction = np.concatenate(kept_fraction) if kept_fraction else np.zeros(0, dtype=np.float32)
    count = len(grid_x)
    return pd.DataFrame(
        {
            "slide_id": pd.Series([slide_id] * count, dtype=str),
            "x": grid_x.astype(np.int64),
            "y": grid_y.astype(np.int64),
            "level": np.full(count, plan.level, dtype=np.int64),
            "read_size_px": np.full(count, plan.read_size_px, dtype=np.int64),
            "tile_size_px": np.full(count, plan.tile_size_px, dtype=np.int64),
            "tissue_fraction": fraction.astype(np.float32),
            "tile_size_lv0": np.full(count, plan.tile_size_lv0, dtype=np.float64),
        }
    )


def _meets_tissue(has_tissue: np.ndarray, starts_lv0: np.ndarray, side_lv0: float, downsample: float) -> np.ndarray:
    """Which tiles along one axis overlap a mask row / column that holds tissue.

    Args:
        has_tissue: (N,) bool, whether each mask column (or row) holds any tissue.
        starts_lv0: level-0 starts of the tiles along that axis.
        side_lv0: tile side in level-0 pixels.
        downsample: level-0 pixels per mask pixel.

    Returns:
        bool per tile. Generous by a mask pixel on each side, so float rounding never drops a tile with tissue.
    """
    counts = np.concatenate([[0], np.cumsum(has_tissue, dtype=np.int64)])
    size = has_tissue.size
    first = np.clip(np.floor(starts_lv0 / downsample).astype(np.int64) - 1, 0, size)
    last = np.clip(np.ceil((starts_lv0 + side_lv0) / downsample).astype(np.int64) + 1, 0, size)
    return counts[last] > counts[first]


def tile_slide(slide: Slide, config: TilingConfig, tissue: TissueMask | None = None) -> pd.DataFrame:
    """Tile table of one slide: tissue mask (unless given), grid at ``config.mpp``, tiles with enough tissue.

    The checks run cheapest first: resolution known and not finer than the slide, pixels readable (the
    thumbnail read for the mask), at least one tile fits; finally one kept tile (or a small region when none is
    kept) is read at the chosen level, so that a slide whose pixels at that level cannot be decoded fails here,
    not in the middle of training or prediction.

    Args:
        slide: an open slide (its ``mpp`` known from metadata or given when it was opened).
        config: tiling settings.
        tissue: a tissue mask computed before (:func:`detect_tissue`); computed here when None.

    Returns:
        The tile table (columns :data:`TILE_COLUMNS`); empty when no tile has enough tissue.

    Raises:
        SlideResolutionError: the slide's mpp is unknown, or ``config.mpp`` is finer than the slide.
        SlideReadError: the pixels cannot be read.
        SlideTooSmallError: the slide is smaller than one tile.
    """
    slide.best_level_for_mpp(config.mpp, mpp_tolerance=config.mpp_tolerance)  # unknown mpp / too fine: fail early
    if tissue is None:
        tissue = detect_tissue(slide, config.tissue)
    plan = slide.plan_read(config.mpp, config.tile_size_px, mpp_tolerance=config.mpp_tolerance)
    table = tiles_from_mask(
        tissue.mask,
        tissue.downsample,
        slide.dimensions,
        plan,
        stride_px=config.effective_stride_px,
        min_tissue=config.min_tissue,
        slide_id=slide.slide_id,
    )
    if len(table):
        middle = table.iloc[len(table) // 2]
        slide.read_tile(int(middle.x), int(middle.y), plan)
    else:
        slide.read_region(0, 0, plan.level, (min(plan.read_size_px, 16), min(plan.read_size_px, 16)))
    return table


# -- cache ----------------------------------------------------------------------------------------------------------
def _cache_key(slide_path: Path, config: TilingConfig, slide_mpp: float | None) -> dict[str, Any]:
    """What made a tile table: the slide file (path, size, mtime), its mpp override and every tiling setting."""
    stat = slide_path.stat()
    return {
        "version": _CACHE_VERSION,
        "slide_path": str(slide_path.resolve()),
        "slide_size_bytes": stat.st_size,
        "slide_mtime_ns": stat.st_mtime_ns,
        "slide_mpp": slide_mpp,
        "config": asdict(config),
    }


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename, so a crash never leaves half a file."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        write(tmp)


def read_tile_table(path: str | Path) -> pd.DataFrame:
    """Read a ``tiles.csv`` with the tile-table dtypes (``slide_id`` stays text, e.g. ``"001"``)."""
    table = pd.read_csv(path, dtype={"slide_id": str})
    table["slide_id"] = table["slide_id"].fillna("")
    for column in ("x", "y", "level", "read_size_px", "tile_size_px"):
        if column in table:
            table[column] = table[column].astype(np.int64)
    if "tissue_fraction" in table:
        table["tissue_fraction"] = table["tissue_fraction"].astype(np.float32)
    return table


def _read_cache(cache_dir: Path, key: dict[str, Any]) -> pd.DataFrame | None:
    """The cached tile table when ``tiles.json`` records exactly ``key``; None otherwise (or when unreadable)."""
    json_path, csv_path = cache_dir / TILES_JSON, cache_dir / TILES_CSV
    if not (json_path.is_file() and csv_path.is_file()):
        return None
    try:
        record = json.loads(json_path.read_text())
        if record.get("key") != json.loads(json.dumps(key)):
            return None
        table = read_tile_table(csv_path)
    except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if len(table) != record.get("tiles") or any(column not in table for column in TILE_COLUMNS):
        return None
    return table[list(TILE_COLUMNS)]


def read_tiling_record(cache_dir: str | Path) -> dict[str, Any]:
    """The ``tiles.json`` written beside a cached tile table (parameters and facts about the slide)."""
    return json.loads((Path(cache_dir) / TILES_JSON).read_text())


def load_or_tile(
    slide_path: str | Path,
    config: TilingConfig,
    cache_dir: str | Path,
    slide_mpp: float | None = None,
    max_slide_pixels: int | None = None,
) -> tuple[pd.DataFrame, TissueMask | None]:
    """The tile table of a slide, from ``cache_dir`` when it was made with the same parameters, else computed.

    The cache is ``cache_dir/tiles.csv`` with ``cache_dir/tiles.json``, which records the parameters (every
    tiling setting, ``slide_mpp``, the slide's resolved path, size and modification time) and facts about the
    result (level, read size, slide mpp, tissue fraction). A change to any of them recomputes the table.

    Args:
        slide_path: the slide file.
        config: tiling settings.
        cache_dir: folder of the cache (created when missing).
        slide_mpp: level-0 mpp for slides that record none (overrides the metadata).
        max_slide_pixels: largest level-0 area the slide may claim (default
            :func:`~anomalib_wsi.slide.reader.max_slide_pixels`).

    Returns:
        The tile table (columns :data:`TILE_COLUMNS` only: labels are added by the caller, never cached), and
        the tissue mask when it was computed now (None when the table came from the cache).

    Raises:
        WSIError: as :class:`~anomalib_wsi.slide.reader.Slide` and :func:`tile_slide`.
    """
    slide_path = Path(slide_path)
    cache_dir = Path(cache_dir)
    with Slide(
        slide_path, mpp=slide_mpp, mpp_tolerance=config.mpp_tolerance, max_pixels=max_slide_pixels
    ) as slide:  # fails on a bad file
        key = _cache_key(slide_path, config, slide_mpp)
        cached = _read_cache(cache_dir, key)
        if cached is not None:
            logger.debug("%s: tile table read from %s", slide.slide_id, cache_dir / TILES_CSV)
            return cached, None
        start = time.perf_counter()
        slide.best_level_for_mpp(config.mpp, mpp_tolerance=config.mpp_tolerance)  # resolution errors first
        tissue = detect_tissue(slide, config.tissue)
        table = tile_slide(slide, config, tissue)
        plan = slide.plan_read(config.mpp, config.tile_size_px, mpp_tolerance=config.mpp_tolerance)
        record = {
            "key": key,
            "tiles": len(table),
            "slide_id": slide.slide_id,
            "width_lv0": slide.dimensions[0],
            "height_lv0": slide.dimensions[1],
            "level0_mpp": slide.mpp,
            "level": plan.level,
            "level_downsample": plan.level_downsample,
            "read_size_px": plan.read_size_px,
            "tile_size_lv0": plan.tile_size_lv0,
            "tissue_area_fraction": tissue.tissue_fraction if tissue is not None else None,
            "seconds": round(time.perf_counter() - start, 3),
        }
    cache_dir.mkdir(parents=True, exist_ok=True)
    # tiles.json goes last: its presence means tiles.csv is complete.
    with contextlib.suppress(FileNotFoundError):
        (cache_dir / TILES_JSON).unlink()
    _write_atomic(cache_dir / TILES_CSV, lambda p: table.to_csv(p, index=False))
    _write_atomic(cache_dir / TILES_JSON, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return table, tissue
