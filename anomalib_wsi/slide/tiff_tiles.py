"""Direct tile decoding for TIFF-based slides (generic tiled TIFF such as Camelyon16's, Aperio SVS).

openslide paints every region through cairo into premultiplied ARGB; for a region that sits on a level's own
pixel grid the result is just the stored tiles, decoded and cut. :class:`TiffTiles` reads those tiles' bytes with
``os.pread`` and decodes them with imagecodecs (libjpeg-turbo, OpenJPEG: the same decoders openslide uses), about
five times less CPU per 256 px tile than ``openslide.read_region`` on a synthetic JPEG slide (``bench_tile_read``).
That is CPU the DataLoader workers no longer need to keep a GPU fed.

It only serves what it can reproduce exactly and leaves everything else to openslide:

- vendors ``generic-tiff`` and ``aperio``; a level served only when exactly one tiled, 8-bit, 3-sample, chunky
  TIFF page has that level's size;
- regions whose origin falls on a whole pixel of the level (openslide resamples fractional origins);
- the first region read from each level is also read by openslide and compared; any difference turns the level
  over to openslide for good (logged), so a file this module misreads costs one extra read, never a wrong tile;
- a tile whose bytes are cut short, do not end with the JPEG / JPEG 2000 end marker, or fail to decode hands the
  read back to openslide, which reports the error as it always did (if openslide reads it after all, the level is
  turned over to openslide).

One difference remains: JPEG data garbled in the middle of a tile (not cut short or zeroed) decodes here with
visible artefacts, where openslide refuses the read.

Set ``ANOMALIB_WSI_DIRECT_TIFF=0`` to read everything through openslide.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DIRECT_TIFF_VENDORS", "TiffTiles", "direct_tiff_enabled"]

logger = logging.getLogger(__name__)

#: openslide vendors whose levels are plain TIFF pages that this module may decode itself.
DIRECT_TIFF_VENDORS = ("generic-tiff", "aperio")

#: TIFF compressions whose tile data must start with a marker (0xFF) and end with 0xFFD9 (JPEG EOI, JPEG 2000 EOC).
_END_MARKER_CODECS = {6, 7, 33003, 33004, 33005, 34712}
_CACHE_BYTES = 32 << 20  # decoded tiles kept per process, all slides together


class _TileCache:
    """Decoded tiles of every open slide of this process, least recently used first out, within one byte budget.

    One budget per process rather than per slide: a training worker may hold dozens of slides open. Emptied when
    it finds itself in a new process (a forked DataLoader worker), and keyed by a serial number per reader, never
    by object identity.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self.bytes = 0
        self.pid = os.getpid()
        self.serials = itertools.count()

    def _check_pid(self) -> None:
        if self.pid != os.getpid():
            self.tiles.clear()
            self.bytes, self.pid = 0, os.getpid()

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        self._check_pid()
        tile = self.tiles.get(key)
        if tile is not None:
            self.tiles.move_to_end(key)
        return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        self._check_pid()
        self.tiles[key] = tile
        self.bytes += tile.nbytes
        while self.bytes > self.max_bytes and len(self.tiles) > 1:
            _, old = self.tiles.popitem(last=False)
            self.bytes -= old.nbytes

    def drop(self, serial: int) -> None:
        """Forget the tiles of one reader."""
        self._check_pid()
        for key in [k for k in self.tiles if k[0] == serial]:
            self.bytes -= self.tiles.pop(key).nbytes


_CACHE = _TileCache(_CACHE_BYTES)


def direct_tiff_enabled() -> bool:
    """False when the environment variable ``ANOMALIB_WSI_DIRECT_TIFF`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("ANOMALIB_WSI_DIRECT_TIFF", "1").strip().lower() not in {"0", "false", "no", "off"}


@dataclass
class _Level:
    """One pyramid level served from one TIFF page."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    tiles_across: int
    offsets: np.ndarray
    byte_counts: np.ndarray
    decode: Callable[..., Any]
    jpeg_tables: bytes | None
    compression: int
    verified: bool = False
    disabled: bool = False
    reads: int = field(default=0)


class TiffTiles:
    """The levels of one slide that can be decoded straight from its TIFF tiles (one instance per process).

    Args:
        path: slide file.
        level_dimensions: openslide's (width, height) of each level.
        level_downsamples: openslide's downsample of each level.
        levels: the levels served, by openslide level index.

    Use :meth:`open`, which returns None for files it cannot serve. ``decoded`` counts the tiles decoded.
    """

    def __init__(
        self,
        path: Path,
        level_dimensions: list[tuple[int, int]],
        level_downsamples: list[float],
        levels: dict[int, _Level],
    ) -> None:
        self.path = path
        self.level_dimensions = level_dimensions
        self.level_downsamples = level_downsamples
        self.levels: dict[int, _Level] = levels
        self._closed = False
        self._serial = next(_CACHE.serials)
        self.decoded = 0  # tiles decoded (cache misses)

    @classmethod
    def open(
        cls, path: str | Path, vendor: str, level_dimensions: list[tuple[int, int]], level_downsamples: list[float]
    ) -> TiffTiles | None:
        """Map openslide's levels to TIFF pages; None when the vendor or the file offers no level to serve."""
        if vendor not in DIRECT_TIFF_VENDORS or not direct_tiff_enabled():
            return None
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
                levels = {}
                for index, (width, height) in enumerate(level_dimensions):
                    level = _level_from_pages(pages, int(width), int(height))
                    if level is not None:
                        levels[index] = level
        except Exception as err:  # anything tifffile cannot parse stays with openslide
            logger.debug("%s: no direct TIFF reads (%s: %s)", path, type(err).__name__, err)
            return None
        if not levels:
            return None
        return cls(Path(path), list(level_dimensions), list(level_downsamples), levels)

    def close(self) -> None:
        """Drop the decoded tiles; later reads go to openslide. (No file stays open between reads: a training
        worker may hold hundreds of slides, each already with openslide's own file descriptor.)"""
        self._closed = True
        _CACHE.drop(self._serial)

    def read_region(
        self, x: int, y: int, level: int, width: int, height: int, reference: Callable[[], np.ndarray]
    ) -> np.ndarray | None:
        """The region as uint8 RGB (H, W, 3), white outside the level; None when openslide must read it.

        Args:
            x: left edge in level-0 pixels.
            y: top edge in level-0 pixels.
            level: pyramid level.
            width: width at ``level``.
            height: height at ``level``.
            reference: reads the same region with openslide; called once per level to check this module's result.

        Returns:
            The region, or None (not a whole-pixel origin on a served level).

        Raises:
            SlideReadError: from ``reference``, when a tile does not decode here and openslide cannot read it either.
        """
        info = self.levels.get(level)
        if info is None or info.disabled or self._closed:
            return None
        downsample = self.level_downsamples[level]
        left, top = x / downsample, y / downsample
        if abs(left - round(left)) > 1e-6 or abs(top - round(top)) > 1e-6:
            return None
        try:
            region = self._paint(info, level, round(left), round(top), width, height)
        except Exception as err:  # a tile that does not decode: openslide reads it (and reports its error)
            expected = reference()
            self._disable(info, level, f"a tile that openslide reads does not decode here ({err})")
            return expected
        if not info.verified:
            expected = reference()
            if expected.shape != region.shape or not np.array_equal(expected, region):
                self._disable(info, level, "its tiles decoded here differ from openslide's")
                return expected
            info.verified = True
        info.reads += 1
        return region

    def _disable(self, info: _Level, level: int, why: str) -> None:
        info.disabled = True
        logger.info("%s: level %d is read with openslide from now on: %s", self.path, level, why)

    # -- painting ----------------------------------------------------------------------------------------------
    def _paint(self, info: _Level, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, info.width), min(top + height, info.height)
        if x1 <= x0 or y1 <= y0:
            return out
        file = _File(self.path)
        try:
            for row in range(y0 // info.tile_height, (y1 - 1) // info.tile_height + 1):
                for col in range(x0 // info.tile_width, (x1 - 1) // info.tile_width + 1):
                    tile = self._tile(info, level, row * info.tiles_across + col, file)
                    if tile is None:  # a tile the scanner never wrote: background, as openslide paints it
                        continue
                    tx, ty = col * info.tile_width, row * info.tile_height
                    ax0, ay0 = max(x0, tx), max(y0, ty)
                    ax1 = min(x1, tx + info.tile_width, tx + tile.shape[1])
                    ay1 = min(y1, ty + info.tile_height, ty + tile.shape[0])
                    if ax1 > ax0 and ay1 > ay0:
                        region = tile[ay0 - ty : ay1 - ty, ax0 - tx : ax1 - tx]
                        out[ay0 - top : ay1 - top, ax0 - left : ax1 - left] = region
        finally:
            file.close()
        return out

    def _tile(self, info: _Level, level: int, index: int, file: _File) -> np.ndarray | None:
        key = (self._serial, level, index)
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        count = int(info.byte_counts[index])
        if count == 0:
            return None
        data = file.pread(count, int(info.offsets[index]))
        if len(data) != count:
            msg = f"tile {index} of level {level} is cut short ({len(data)} of {count} bytes)"
            raise OSError(msg)
        if info.compression in _END_MARKER_CODECS and not (data.startswith(b"\xff") and data.endswith(b"\xff\xd9")):
            msg = f"tile {index} of level {level} does not end with the JPEG end marker (cut short or zeroed)"
            raise OSError(msg)
        decoded = info.decode(data, index, jpegtables=info.jpeg_tables)[0]
        if decoded is None:
            msg = f"tile {index} of level {level} did not decode"
            raise OSError(msg)
        tile = np.ascontiguousarray(decoded.reshape(decoded.shape[-3:]))
        if tile.shape[-1] != 3 or tile.dtype != np.uint8:
            msg = f"tile {index} of level {level} decoded as {tile.shape} {tile.dtype}"
            raise OSError(msg)
        self.decoded += 1
        _CACHE.put(key, tile)
        return tile


class _File:
    """The slide file, opened on the first read of a region that needs undecoded tiles and closed after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def pread(self, count: int, offset: int) -> bytes:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self.fd, count, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _level_from_pages(pages: list[Any], width: int, height: int) -> _Level | None:
    """The single tiled RGB page of this size, as a level; None when there is none or more than one."""
    matches = [p for p in pages if p.is_tiled and int(p.imagewidth) == width and int(p.imagelength) == height]
    if len(matches) != 1:
        return None
    page = matches[0]
    if (
        int(page.samplesperpixel) != 3
        or int(page.planarconfig) != 1
        or int(page.imagedepth) != 1
        or np.dtype(page.dtype) != np.uint8
        or int(page.photometric) not in {2, 6}  # RGB, YCbCr
        or len(page.dataoffsets) != len(page.databytecounts)
    ):
        return None
    tile_width, tile_height = int(page.tilewidth), int(page.tilelength)
    tiles_across = -(-width // tile_width)
    if len(page.dataoffsets) < tiles_across * -(-height // tile_height):
        return None
    return _Level(
        width=width,
        height=height,
        tile_width=tile_width,
        tile_height=tile_height,
        tiles_across=tiles_across,
        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        byte_counts=np.asarray(page.databytecounts, dtype=np.int64),
        decode=page.decode,
        jpeg_tables=page.jpegtables,
        compression=int(page.compression),
    )
