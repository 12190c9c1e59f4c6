"""Tile tables: a grid of tiles at a target mpp, kept where a low-resolution tissue mask covers them.

A tile table is one pandas DataFrame per slide, one row per tile (see ``DESIGN.md``): ``slide_id``, ``x``, ``y``
(level-0 top-left, ints), ``level``, ``read_size_px`` (side read at that level), ``tile_size_px`` (side given
to the model), ``tissue_fraction``, and ``tile_size_lv0`` (tile side in level-0 pixels, a float, for stitching).
Tissue fractions come from the mask by integral image: no pixel reads per tile.

Example:
    >>> config = TilingConfig(mpp=0.5, tile_size_px=256)
    >>> table, tissue = load_or_tile("tumor_001.tif", config, cache_dir=Path("tiles/tumor_001"))  # doctest: +SKIP
    >>> table[["x", "y", "tissue_fraction"]].head()                                              # doctest: +SKIP

Command line: ``anomalib-wsi tile SLIDE... --output DIR [--mpp 0.5 --tile-size 256 --slide-mpp X]``
(:func:`tile_command`).
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

from anomalib_wsi.errors import WSIError
from anomalib_wsi.io import atomic_path
from anomalib_wsi.slide.coverage import coverage_from_integral, mask_integral
from anomalib_wsi.slide.ids import printable, slide_id_from_path, slide_output_dir
from anomalib_wsi.slide.reader import SLIDE_EXTENSIONS, ReadPlan, Slide, find_slides
from anomalib_wsi.slide.tissue import TissueConfig, TissueMask, detect_tissue, save_tissue_png

__all__ = [
    "TILE_COLUMNS",
    "TilingConfig",
    "grid_positions",
    "load_or_tile",
    "read_tile_table",
    "read_tiling_record",
    "tile_command",
    "tile_slide",
    "tiles_from_mask",
]

logger = logging.getLogger(__name__)

#: Columns of a tile table, in order.
TILE_COLUMNS = ("slide_id", "x", "y", "level", "read_size_px", "tile_size_px", "tissue_fraction", "tile_size_lv0")
_CACHE_VERSION = 1
_TILES_CSV = "tiles.csv"
_TILES_JSON = "tiles.json"
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
    json_path, csv_path = cache_dir / _TILES_JSON, cache_dir / _TILES_CSV
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
    return json.loads((Path(cache_dir) / _TILES_JSON).read_text())


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
            logger.debug("%s: tile table read from %s", slide.slide_id, cache_dir / _TILES_CSV)
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
        (cache_dir / _TILES_JSON).unlink()
    _write_atomic(cache_dir / _TILES_CSV, lambda p: table.to_csv(p, index=False))
    _write_atomic(cache_dir / _TILES_JSON, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return table, tissue


# -- command line ---------------------------------------------------------------------------------------------------
def _check_options(
    mpp: float, tile_size: int, stride: int | None, min_tissue: float, slide_mpp: float | None, tumour_threshold: float
) -> None:
    """Raise a one-line WSIError naming the first bad option of ``anomalib-wsi tile``."""
    checks = [
        (mpp is not None and math.isfinite(mpp) and mpp > 0, f"--mpp must be a positive µm per pixel, got {mpp}"),
        (tile_size is not None and tile_size >= 1, f"--tile-size must be a positive number of pixels, got {tile_size}"),
        (stride is None or stride >= 1, f"--stride must be a positive number of pixels, got {stride}"),
        (min_tissue is not None and 0 <= min_tissue <= 1, f"--min-tissue must be in [0, 1], got {min_tissue}"),
        (
            slide_mpp is None or (math.isfinite(slide_mpp) and slide_mpp > 0),
            f"--slide-mpp must be a positive µm per pixel, got {slide_mpp}",
        ),
        (
            tumour_threshold is not None and 0 < tumour_threshold <= 1,
            f"--tumour-threshold must be in (0, 1], got {tumour_threshold}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise WSIError(msg)


def _csv_header(path: Path) -> list[str]:
    """Column names of a CSV file (its first line)."""
    with path.open() as handle:
        return handle.readline().strip().split(",")


_ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")


def _find_annotation(folder: Path, slide_id: str) -> Path | None:
    """``folder/<slide_id>.xml``, ``.geojson`` or ``.json``, the first that exists."""
    for suffix in _ANNOTATION_SUFFIXES:
        candidate = folder / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _tile_one(
    slide_path: Path,
    config: TilingConfig,
    out_dir: Path,
    slide_mpp: float | None,
    annotation_dir: Path | None,
    tumour_threshold: float,
    max_slide_pixels: int | None = None,
) -> dict[str, Any]:
    """Tile one slide into ``out_dir`` (tiles.csv, tiles.json, tissue.png); returns its summary row."""
    start = time.perf_counter()
    table, tissue = load_or_tile(slide_path, config, out_dir, slide_mpp=slide_mpp, max_slide_pixels=max_slide_pixels)
    record = read_tiling_record(out_dir)
    row: dict[str, Any] = {
        "slide_id": record["slide_id"],
        "slide_path": printable(slide_path),
        "tiles": len(table),
        "slide_mpp": record["level0_mpp"],
        "mpp": config.mpp,
        "level": record["level"],
        "read_size_px": record["read_size_px"],
        "tile_size_px": config.tile_size_px,
        "tile_size_lv0": record["tile_size_lv0"],
        "width_lv0": record["width_lv0"],
        "height_lv0": record["height_lv0"],
        "tissue_area_fraction": record["tissue_area_fraction"],
        "cached": tissue is None,
    }
    annotations = None
    if annotation_dir is not None:
        from anomalib_wsi.annotations import read_annotations
        from anomalib_wsi.annotations.labels import label_tiles

        annotation_path = _find_annotation(annotation_dir, record["slide_id"])
        with Slide(slide_path, mpp=slide_mpp, max_pixels=max_slide_pixels) as slide:
            if annotation_path is None:
                logger.info("%s: no annotation file in %s; tiles labelled normal (0)", slide.slide_id, annotation_dir)
            else:
                annotations = read_annotations(annotation_path, slide_size=slide.dimensions)
                if annotations.warnings:
                    logger.warning(
                        "%s: %d note(s) on %s, first: %s",
                        slide.slide_id,
                        len(annotations.warnings),
                        annotation_path.name,
                        annotations.warnings[0],
                    )
            table = label_tiles(table, annotations, slide, threshold=tumour_threshold)
        row["annotation_path"] = str(annotation_path) if annotation_path is not None else ""
        row["tumour_tiles"] = int((table["label"] == 1).sum())
        row["normal_tiles"] = int((table["label"] == 0).sum())
        row["ignored_tiles"] = int((table["label"] == -1).sum())
    csv_path = out_dir / _TILES_CSV
    if annotation_dir is not None or (tissue is None and _csv_header(csv_path) != list(TILE_COLUMNS)):
        # Labels of this run, or a cached file still holding labels of an earlier run: write what this run made.
        _write_atomic(csv_path, lambda p: table.to_csv(p, index=False))
    png_path = out_dir / "tissue.png"
    if tissue is None and (annotations is not None or not png_path.is_file()):
        with Slide(slide_path, mpp=slide_mpp, max_pixels=max_slide_pixels) as slide:
            tissue = detect_tissue(slide, config.tissue)
    if tissue is not None:
        save_tissue_png(png_path, tissue, annotations=annotations, tiles=table)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def tile_command(
    slides: list[str],
    output: str,
    mpp: float = 0.5,
    tile_size: int = 256,
    stride: int | None = None,
    min_tissue: float = 0.5,
    slide_mpp: float | None = None,
    annotations: str | None = None,
    tumour_threshold: float = 0.5,
    max_slide_pixels: int | None = None,
) -> int:
    """``anomalib-wsi tile``: detect tissue and tile slides into ``output/<slide_id>/tiles.csv`` and ``tissue.png``.

    One bad slide does not stop the run: its error goes to ``output/failures.csv`` (``slide_path,slide_id,error``)
    and to the log, one line each, and the other slides go on. So do a slide whose id cannot name a folder
    (``...tif``, see :mod:`anomalib_wsi.slide.ids`), a file where its output folder would go, a folder given or
    found that holds no slide, and a folder entry named like a slide that is no file (broken link, link loop).
    Nothing is written outside ``output``. ``output/summary.csv`` has one row per slide tiled. With
    ``annotations``, annotation files that match no slide of the run are named in one warning.

    Args:
        slides: slide files or folders of slides.
        output: output folder.
        mpp: target resolution of the tiles in µm per pixel.
        tile_size: tile side in pixels at ``mpp``.
        stride: step between tiles at ``mpp`` (default: the tile size).
        min_tissue: smallest tissue fraction of a kept tile.
        slide_mpp: level-0 mpp for slides that record none (overrides the metadata of every slide).
        annotations: folder of ASAP ``.xml`` / QuPath ``.geojson`` files named like the slides; when given the
            tables gain ``tumour_fraction`` and ``label`` (1 tumour, 0 normal, -1 ignored).
        tumour_threshold: tumour fraction from which a tile is tumour.
        max_slide_pixels: largest level-0 area a slide may claim; larger ones fail (default
            :func:`~anomalib_wsi.slide.reader.max_slide_pixels`: 2e11 px or ``ANOMALIB_WSI_MAX_SLIDE_PIXELS``).

    Returns:
        0 when every slide was tiled, 1 when any failed.

    Raises:
        WSIError: a bad option, no slide found, or an output folder that cannot be written.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    _check_options(mpp, tile_size, stride, min_tissue, slide_mpp, tumour_threshold)
    if max_slide_pixels is not None and not max_slide_pixels >= 1:
        msg = f"--max-slide-pixels must be a positive number of pixels, got {max_slide_pixels}"
        raise WSIError(msg)
    config = TilingConfig(mpp=float(mpp), tile_size_px=int(tile_size), stride_px=stride, min_tissue=float(min_tissue))
    annotation_dir = Path(annotations) if annotations else None
    if annotation_dir is not None and not annotation_dir.is_dir():
        msg = f"--annotations {annotation_dir}: not a folder; give the folder holding <slide_id>.xml / .geojson files"
        raise WSIError(msg)
    search = find_slides(list(slides))
    paths = search.slides
    if not paths:
        given = {Path(item) for item in slides}
        entries = [message for path, message in search.problems if path not in given]
        if entries:  # an entry named like a slide that is no file (broken link, loop): say what it is
            raise WSIError(printable(f"no slide found: {entries[0]}"))
        msg = f"no slide found in {', '.join(map(str, slides))}; give slide files or folders of .svs/.tif/.ndpi/..."
        raise WSIError(printable(msg))
    out_root = Path(output)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"--output {out_root}: cannot create the folder ({err.strerror}); choose a writable path"
        raise WSIError(msg) from None

    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for path, message in search.problems:
        shown_id = printable(path.stem) if path.suffix.lower() in SLIDE_EXTENSIONS else ""
        failures.append({"slide_path": printable(path), "slide_id": shown_id, "error": printable(message)})
        logger.error("%s", printable(message))
    seen: dict[str, Path] = {}
    with logging_redirect_tqdm():
        for slide_path in tqdm(paths, desc="tiling", unit="slide", disable=None):
            shown_id = printable(slide_path.stem)
            try:
                slide_id = slide_id_from_path(slide_path)
                if slide_id in seen:
                    msg = f"{slide_path}: same slide id as {seen[slide_id]}; rename one (outputs go to DIR/<slide_id>)"
                    raise WSIError(msg)
                seen[slide_id] = slide_path
                out_dir = slide_output_dir(out_root, slide_id, source=slide_path)
                rows.append(
                    _tile_one(
                        slide_path, config, out_dir, slide_mpp, annotation_dir, tumour_threshold, max_slide_pixels
                    )
                )
            except WSIError as err:
                error = printable(str(err))
                failures.append({"slide_path": printable(slide_path), "slide_id": shown_id, "error": error})
                logger.error("%s failed: %s", shown_id, error)
            except Exception as err:  # one bad slide must not stop the run
                error = printable(f"{type(err).__name__}: {err}".replace("\n", " "))
                failures.append({"slide_path": printable(slide_path), "slide_id": shown_id, "error": error})
                logger.error("%s failed unexpectedly: %s (run with -v for the traceback)", shown_id, error)
                logger.debug("traceback of %s", shown_id, exc_info=True)
    if annotation_dir is not None:
        _warn_unmatched_annotations(annotation_dir, {path.stem for path in paths})

    summary = pd.DataFrame(rows, columns=None if rows else ["slide_id", "slide_path", "tiles"])
    _write_atomic(out_root / "summary.csv", lambda p: summary.to_csv(p, index=False))
    failed = pd.DataFrame(failures, columns=["slide_path", "slide_id", "error"])
    _write_atomic(out_root / "failures.csv", lambda p: failed.to_csv(p, index=False))
    total = sum(int(r["tiles"]) for r in rows)
    logger.info("tiled %d of %d slides (%d tiles) into %s", len(rows), len(paths), total, out_root)
    if failures:
        logger.error("%d slide(s) failed; see %s", len(failures), out_root / "failures.csv")
        return 1
    return 0


def _warn_unmatched_annotations(annotation_dir: Path, slide_ids: set[str]) -> None:
    """One warning naming the annotation files of ``annotation_dir`` that match none of ``slide_ids``."""
    unmatched = sorted(
        p.name
        for p in annotation_dir.iterdir()
        if p.suffix.lower() in _ANNOTATION_SUFFIXES and p.is_file() and p.stem not in slide_ids
    )
    if not unmatched:
        return
    by_lower = {slide_id.lower(): slide_id for slide_id in slide_ids}
    named = [
        f"{name} (slide {printable(by_lower[Path(name).stem.lower()])!r} differs in case)"
        if Path(name).stem.lower() in by_lower
        else name
        for name in unmatched
    ]
    more = f" and {len(named) - 5} more" if len(named) > 5 else ""
    logger.warning(
        "%d annotation file(s) in %s match no slide of this run and were not used: %s%s; an annotation labels the "
        "slide whose id (file name without the extension) is its own file name without the extension",
        len(named),
        annotation_dir,
        printable(", ".join(named[:5])),
        more,
    )
