"""Slide reading with openslide: resolution by mpp, level choice, uint8 RGB tiles.

A :class:`Slide` is cheap to pickle: the openslide handle is opened lazily in each process (DataLoader workers
get their own), never shared across a fork.

Example:
    >>> slide = Slide("tumor_001.tif")                     # doctest: +SKIP
    >>> plan = slide.plan_read(target_mpp=0.5, tile_size_px=256)
    >>> tile = slide.read_tile(1024, 2048, plan)            # (256, 256, 3) uint8

Over 500 lines on purpose: :class:`Slide` and the slide-list helpers share the openslide error handling and the
resolution rules; the direct TIFF decoding is in tiff_tiles.py.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomalib_wsi.errors import SlideOpenError, SlideReadError, SlideResolutionError, SlideTooSmallError, WSIError
from anomalib_wsi.slide.tiff_tiles import TiffTiles

__all__ = [
    "MAX_PLAUSIBLE_MPP",
    "MAX_SLIDE_PIXELS",
    "MAX_SLIDE_PIXELS_ENV",
    "SLIDE_EXTENSIONS",
    "ReadPlan",
    "Slide",
    "SlideSearch",
    "SlideTooLargeError",
    "find_slides",
    "list_slides",
    "max_slide_pixels",
]

#: Largest level-0 resolution (µm per pixel) taken from metadata; coarser values are file-format defaults
#: (a TIFF written at 72 dpi claims 352.8 µm/px), not scans, and count as unknown.
MAX_PLAUSIBLE_MPP = 20.0

#: Largest level-0 area (pixels) a slide may claim. A whole 75 x 25 mm glass slide scanned at 0.12 µm/px, finer
#: than any scanner in routine use, is 625,000 x 208,000 = 1.3e11 px; Camelyon16's largest are about 2.2e10. A
#: file claiming more is damaged or crafted (a 500 KB TIFF can claim 10^6 x 10^6 px) and is refused at once.
MAX_SLIDE_PIXELS = 200_000_000_000
#: Environment variable that replaces :data:`MAX_SLIDE_PIXELS` (a number of pixels, e.g. ``1e12``).
MAX_SLIDE_PIXELS_ENV = "ANOMALIB_WSI_MAX_SLIDE_PIXELS"

#: File extensions taken as slides when a folder is given.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")


class SlideTooLargeError(SlideOpenError):
    """The slide claims a level-0 size beyond any scanner's (see :data:`MAX_SLIDE_PIXELS`)."""


def max_slide_pixels() -> int:
    """The largest level-0 area a slide may claim: :data:`MAX_SLIDE_PIXELS`, or ``ANOMALIB_WSI_MAX_SLIDE_PIXELS``.

    Raises:
        WSIError: the environment variable is set but is not a positive number.
    """
    text = os.environ.get(MAX_SLIDE_PIXELS_ENV, "").strip()
    if not text:
        return MAX_SLIDE_PIXELS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        msg = f"{MAX_SLIDE_PIXELS_ENV}={text!r}: not a positive number of pixels; set e.g. 1e12 or unset it"
        raise WSIError(msg)
    return int(value)


def _missing_reason(path: Path) -> str:
    """Why ``path`` cannot be opened as a file, in a few words with the fix (it does not exist as a file)."""
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop (the link leads back to itself); fix or remove the link"
        if path.is_symlink():
            with_target = f" to {os.readlink(path)}" if hasattr(os, "readlink") else ""
            return f"a broken symbolic link{with_target}; fix the link or give the slide file itself"
        if err.errno in (errno.EACCES, errno.EPERM):
            return "permission denied; make the file (and its folders) readable"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "no such file; check the path"
        return f"cannot be read ({err.strerror}); check the path"
    if path.is_dir():
        return "a folder, not a slide file; give the slide file (for MIRAX, the .mrxs file beside its folder)"
    return "not a regular file; give the slide file"


@dataclass(frozen=True)
class ReadPlan:
    """How to read tiles of ``tile_size_px`` at ``target_mpp`` from one slide.

    Attributes:
        target_mpp: resolution given to the model (µm per pixel).
        tile_size_px: side of the tile given to the model.
        level: pyramid level read.
        level_downsample: downsample of that level relative to level 0.
        read_size_px: side of the region read at ``level``; equals ``tile_size_px`` when no resize is needed.
        tile_size_lv0: side of the tile in level-0 pixels (float: it may not be whole).
    """

    target_mpp: float
    tile_size_px: int
    level: int
    level_downsample: float
    read_size_px: int
    tile_size_lv0: float

    @property
    def needs_resize(self) -> bool:
        """Whether the region read must be resized to the tile size."""
        return self.read_size_px != self.tile_size_px


@dataclass(frozen=True)
class SlideSearch:
    """What :func:`find_slides` found.

    Attributes:
        slides: slide paths in input order (each folder's slide files sorted by name); files given explicitly
            are kept as given, even when missing (opening them names the problem).
        problems: ``(path, message)`` for each input that yields no slide: a folder holding no slide file (also a
            folder named like a slide), and entries of a folder that carry a slide extension but are no file (a
            broken symbolic link, a link loop, a folder); each message is one line naming the path and the fix.
    """

    slides: list[Path]
    problems: list[tuple[Path, str]]


def find_slides(inputs: list[str | Path] | str | Path) -> SlideSearch:
    """Expand files and folders into slide paths, and say which inputs gave none (never a silent skip).

    Args:
        inputs: slide files and folders of slides (a folder's files with a slide extension, not recursive).

    Returns:
        The slides and the problems (see :class:`SlideSearch`).
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    slides: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            slides.append(path)
            continue
        entries = sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_EXTENSIONS)
        for entry in entries:
            if entry.is_file():
                slides.append(entry)
            else:
                problems.append((entry, f"{entry}: {_missing_reason(entry)}"))
        if not entries:
            named = " (it is named like one)" if path.suffix.lower() in SLIDE_EXTENSIONS else ""
            msg = (
                f"{path}: a folder, not a slide file{named}, and it holds no slide file "
                f"({', '.join(SLIDE_EXTENSIONS[:5])}, ...); give slide files or folders of slides"
            )
            problems.append((path, msg))
    return SlideSearch(slides, problems)


def list_slides(inputs: list[str | Path] | str | Path) -> list[Path]:
    """Expand files and folders into a sorted list of slide paths (folders: files with a slide extension).

    Inputs that give no slide are left out; :func:`find_slides` says which and why.
    """
    return find_slides(inputs).slides


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite a (straight-alpha) RGBA array over white; transparent (unscanned) background becomes white."""
    if rgba.shape[-1] == 3:
        return rgba
    rgba = np.ascontiguousarray(rgba)
    if rgba.size == 0 or cv2.minMaxLoc(cv2.extractChannel(rgba, 3))[0] == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)  # a strided numpy copy is ~50 times slower
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
    return ((rgb + 127) // 255).astype(np.uint8)


def _premultiplied_bgra_to_rgb(bgra: np.ndarray) -> np.ndarray:
    """Composite openslide's premultiplied BGRA bytes over white: ``colour + 255 - alpha`` per channel."""
    if bgra.size == 0 or cv2.minMaxLoc(cv2.extractChannel(bgra, 3))[0] == 255:
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB).astype(np.uint16)
    rgb += (255 - bgra[..., 3:4]).astype(np.uint16)
    return np.minimum(rgb, 255).astype(np.uint8)


def _read_bgra(handle: Any, x: int, y: int, level: int, width: int, height: int) -> np.ndarray | None:
    """openslide's premultiplied ARGB straight into a numpy buffer, as (H, W, 4) BGRA bytes.

    This skips the PIL image that ``OpenSlide.read_region`` builds (un-premultiplied, then copied again into
    numpy), about a third of the time of a cached 256 px tile. It uses openslide-python's ctypes binding
    ``lowlevel._read_region``; None when that is absent (another openslide-python version, a big-endian machine),
    and the caller falls back to the public API.
    """
    if sys.byteorder != "little":
        return None
    try:
        from openslide import lowlevel

        read = lowlevel._read_region
        osr = handle._osr
    except (ImportError, AttributeError):
        return None
    buffer = np.empty((height, width), dtype=np.uint32)
    if buffer.size:
        read(osr, buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), x, y, level, width, height)
    return buffer.view(np.uint8).reshape(height, width, 4)


def _reason(err: BaseException) -> str:
    """The first line of an openslide error, for a one-line message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Slide:
    """One whole-slide image opened with openslide.

    Args:
        path: slide file.
        mpp: level-0 resolution in µm per pixel; overrides the metadata. Required when the slide records none.
        mpp_tolerance: relative tolerance when matching a pyramid level to a target mpp (0.1 = 10 %).
        direct_tiff: decode the tiles of TIFF-based slides (generic TIFF, Aperio) directly where the result equals
            openslide's (see :mod:`anomalib_wsi.slide.tiff_tiles`); False reads every pixel through openslide.
        max_pixels: largest level-0 area (width x height) the slide may claim; None means
            :func:`max_slide_pixels` (:data:`MAX_SLIDE_PIXELS`, 2e11, or ``ANOMALIB_WSI_MAX_SLIDE_PIXELS``).

    Raises:
        SlideOpenError: openslide cannot open the file (missing, a folder, a broken link or a link loop, not a
            slide).
        SlideTooLargeError: the slide claims more than ``max_pixels``.
    """

    def __init__(
        self,
        path: str | Path,
        mpp: float | None = None,
        mpp_tolerance: float = 0.1,
        direct_tiff: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.direct_tiff = direct_tiff
        self._direct: TiffTiles | None = None
        self._direct_pid = -1
        self.slide_id = self.path.stem
        self.mpp_tolerance = mpp_tolerance
        self._mpp_override = mpp
        self._handle: Any = None
        self._pid = -1
        if mpp is not None and not mpp > 0:
            msg = f"{self.path}: slide mpp must be a positive number of µm per pixel, got {mpp}"
            raise SlideResolutionError(msg)
        limit = max_slide_pixels() if max_pixels is None else int(max_pixels)
        handle = self.handle  # opens now, so a bad file fails at construction
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)  # type: ignore[assignment]
        width, height = self.dimensions
        if width * height > limit:
            self.close()
            msg = (
                f"{self.path}: the file claims a slide of {width:,} x {height:,} px ({width * height:.2g} px), more "
                f"than any scanner writes (limit {limit:.2g} px; a whole 75 x 25 mm slide at 0.12 µm/px is 1.3e11): "
                f"damaged or crafted? If the size is real, set {MAX_SLIDE_PIXELS_ENV}={width * height:.2g}"
            )
            raise SlideTooLargeError(msg)
        self.level_count: int = handle.level_count
        self.level_dimensions: list[tuple[int, int]] = [tuple(d) for d in handle.level_dimensions]  # type: ignore[misc]
        self.level_downsamples: list[float] = [float(d) for d in handle.level_downsamples]
        self.properties: dict[str, str] = dict(handle.properties)
        self.vendor: str = self.properties.get("openslide.vendor", "unknown")

    # -- handle management -----------------------------------------------------------------------------------
    @property
    def handle(self) -> Any:
        """The openslide handle of this process, opened on first use (one per process, fork-safe)."""
        if self._handle is None or self._pid != os.getpid():
            import openslide

            if not self.path.is_file():
                msg = f"{self.path}: {_missing_reason(self.path)}"
                raise SlideOpenError(msg)
            try:
                self._handle = openslide.OpenSlide(str(self.path))
            except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as err:
                reason = _reason(err)
                msg = (
                    f"{self.path}: openslide cannot open this file ({reason}); "
                    "check that it is a complete whole-slide image (.svs, .tif, .ndpi, .mrxs, ...)"
                )
                raise SlideOpenError(msg) from None
            self._pid = os.getpid()
        return self._handle

    def _direct_tiles(self) -> TiffTiles | None:
        """This process's direct TIFF tile reader (None when the slide is not served by one)."""
        if self._direct_pid != os.getpid():
            self._direct = None
            if self.direct_tiff:
                self._direct = TiffTiles.open(self.path, self.vendor, self.level_dimensions, self.level_downsamples)
            self._direct_pid = os.getpid()
        return self._direct

    def close(self) -> None:
        """Close the handles of this process (they reopen on next use)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        if self._direct is not None and self._direct_pid == os.getpid():
            self._direct.close()
        self._handle = None
        self._direct, self._direct_pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = -1
        state["_direct"] = None
        state["_direct_pid"] = -1
        return state

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = self._mpp_override if self._mpp_override is not None else self._metadata_mpp()
        size = f"{self.dimensions[0]}x{self.dimensions[1]}"
        return f"Slide({str(self.path)!r}, {size}, levels={self.level_count}, mpp={mpp})"

    # -- resolution --------------------------------------------------------------------------------------------
    def _recorded_mpp(self) -> float | None:
        """Mean of ``openslide.mpp-x`` and ``-y`` as recorded (None when absent or not a positive number)."""
        values = []
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                value = float(self.properties.get(key, "nan"))
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value > 0:
                values.append(value)
        return sum(values) / len(values) if values else None

    def _metadata_mpp(self) -> float | None:
        """The recorded mpp when it is plausible for a slide scan (at most :data:`MAX_PLAUSIBLE_MPP`)."""
        mpp = self._recorded_mpp()
        return mpp if mpp is not None and mpp <= MAX_PLAUSIBLE_MPP else None

    @property
    def has_mpp(self) -> bool:
        """Whether the resolution is known (metadata or override)."""
        return self._mpp_override is not None or self._metadata_mpp() is not None

    @property
    def mpp(self) -> float:
        """Level-0 resolution in µm per pixel.

        Raises:
            SlideResolutionError: the slide records none and none was given; never guessed.
        """
        if self._mpp_override is not None:
            return float(self._mpp_override)
        mpp = self._metadata_mpp()
        if mpp is None:
            recorded = self._recorded_mpp()
            what = (
                "records no resolution (openslide.mpp-x)"
                if recorded is None
                else f"records an implausible resolution ({recorded:.4g} µm/px, a file-format default such as 72 dpi)"
            )
            msg = (
                f"{self.path}: the slide {what}; "
                "pass it with --slide-mpp MPP (Python: slide_mpp=MPP), e.g. 0.25 for 40x or 0.5 for 20x"
            )
            raise SlideResolutionError(msg)
        return mpp

    def level_mpp(self, level: int) -> float:
        """Resolution of a pyramid level in µm per pixel."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float, mpp_tolerance: float | None = None) -> int:
        """The level to read for ``target_mpp``: a level within tolerance if any, else the nearest finer level.

        Args:
            target_mpp: wanted resolution in µm per pixel.
            mpp_tolerance: relative tolerance; default the slide's ``mpp_tolerance``.

        Returns:
            The pyramid level.

        Raises:
            SlideResolutionError: the mpp is unknown, or the target is finer than level 0 (beyond the tolerance).
        """
        tol = self.mpp_tolerance if mpp_tolerance is None else mpp_tolerance
        if target_mpp < self.mpp * (1 - tol):
            msg = (
                f"{self.path}: target resolution {target_mpp:g} µm/px is finer than the slide's level 0 "
                f"({self.mpp:g} µm/px); choose --mpp {self.mpp:.3g} or coarser"
            )
            raise SlideResolutionError(msg)
        matching = [lv for lv in range(self.level_count) if abs(self.level_mpp(lv) / target_mpp - 1) <= tol]
        if matching:
            return min(matching, key=lambda lv: abs(self.level_mpp(lv) / target_mpp - 1))
        finer = [lv for lv in range(self.level_count) if self.level_mpp(lv) <= target_mpp]
        return max(finer, key=self.level_mpp) if finer else 0

    def plan_read(self, target_mpp: float, tile_size_px: int, mpp_tolerance: float | None = None) -> ReadPlan:
        """Choose the level and read size for tiles of ``tile_size_px`` at ``target_mpp``.

        Args:
            target_mpp: resolution given to the model in µm per pixel.
            tile_size_px: tile side given to the model.
            mpp_tolerance: relative tolerance of the level match; default the slide's ``mpp_tolerance``.

        Returns:
            The read plan.

        Raises:
            SlideResolutionError: unknown mpp, or a target finer than the slide offers.
            SlideTooSmallError: no tile fits in the slide.
        """
        if tile_size_px <= 0 or target_mpp <= 0:
            msg = f"tile size and mpp must be positive, got tile_size_px={tile_size_px}, mpp={target_mpp}"
            raise ValueError(msg)
        tol = self.mpp_tolerance if mpp_tolerance is None else mpp_tolerance
        level = self.best_level_for_mpp(target_mpp, mpp_tolerance=tol)
        level_mpp = self.level_mpp(level)
        within = abs(level_mpp / target_mpp - 1) <= tol
        read_size = tile_size_px if within else max(1, round(tile_size_px * target_mpp / level_mpp))
        tile_size_lv0 = tile_size_px * target_mpp / self.mpp
        if within:
            tile_size_lv0 = tile_size_px * self.level_downsamples[level]
        width, height = self.dimensions
        extent_lv0 = max(tile_size_lv0, read_size * self.level_downsamples[level])  # what one read covers
        if extent_lv0 > width or extent_lv0 > height:
            msg = (
                f"{self.path}: slide is {width}x{height} px, smaller than one {tile_size_px} px tile at "
                f"{target_mpp:g} µm/px ({tile_size_lv0:.0f} px at level 0); use a smaller --tile-size or a finer --mpp"
            )
            raise SlideTooSmallError(msg)
        return ReadPlan(
            target_mpp=float(target_mpp),
            tile_size_px=int(tile_size_px),
            level=level,
            level_downsample=self.level_downsamples[level],
            read_size_px=int(read_size),
            tile_size_lv0=float(tile_size_lv0),
        )

    # -- pixels ------------------------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region as uint8 RGB (H, W, 3); (x, y) in level-0 pixels, ``size`` (w, h) at ``level``.

        Areas outside the slide and unscanned (transparent) areas are white.

        Raises:
            SlideReadError: openslide fails to decode the pixels.
        """
        x, y, level, width, height = int(x), int(y), int(level), int(size[0]), int(size[1])
        if width < 0 or height < 0:
            msg = f"read_region: size must not be negative, got {size}"
            raise ValueError(msg)
        direct = self._direct_tiles()
        if direct is not None:
            region = direct.read_region(
                x, y, level, width, height, reference=lambda: self._read_openslide(x, y, level, width, height)
            )
            if region is not None:
                return region
        return self._read_openslide(x, y, level, width, height)

    def _read_openslide(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        import openslide

        try:
            bgra = _read_bgra(self.handle, x, y, level, width, height)
            if bgra is not None:
                return _premultiplied_bgra_to_rgb(bgra)
            region = self.handle.read_region((x, y), level, (width, height))
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            reason = _reason(err)
            msg = f"{self.path}: cannot read pixels at ({x}, {y}) level {level} ({reason}); the file may be corrupt"
            raise SlideReadError(msg) from None
        return _rgba_to_rgb(np.asarray(region))

    def read_tile(self, x: int, y: int, plan: ReadPlan) -> np.ndarray:
        """Read one tile at level-0 (x, y) as uint8 RGB of ``plan.tile_size_px`` (resized when the level is finer)."""
        tile = self.read_region(x, y, plan.level, (plan.read_size_px, plan.read_size_px))
        if plan.needs_resize:
            tile = cv2.resize(tile, (plan.tile_size_px, plan.tile_size_px), interpolation=cv2.INTER_AREA)
        return tile

    def read_thumbnail(self, target_mpp: float | None = None, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """Read the whole slide at a low resolution, never from level 0 unless it is the only small-enough level.

        Args:
            target_mpp: wanted resolution in µm/px; when None (or the mpp is unknown) the thumbnail fits ``max_side``.
            max_side: upper bound on the longer side of the result.

        Returns:
            The uint8 RGB image and its downsample relative to level 0 (level-0 px = image px * downsample).
        """
        width, height = self.dimensions
        downsample = max(width, height) / max_side
        if target_mpp is not None and self.has_mpp:
            downsample = max(downsample, target_mpp / self.mpp)
        downsample = max(downsample, 1.0)
        out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
        level = self.handle.get_best_level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        # read in horizontal stripes so a large level never sits in memory whole
        stripe_h = max(1, min(level_h, (64 << 20) // max(1, level_w * 4)))
        pieces = []
        for top in range(0, level_h, stripe_h):
            h = min(stripe_h, level_h - top)
            part = self.read_region(0, round(top * level_ds), level, (level_w, h))
            top_out, bottom_out = round(top * out_h / level_h), round((top + h) * out_h / level_h)
            if bottom_out > top_out:
                pieces.append(cv2.resize(part, (out_w, bottom_out - top_out), interpolation=cv2.INTER_AREA))
        image = np.concatenate(pieces, axis=0) if pieces else np.full((out_h, out_w, 3), 255, np.uint8)
        return image, width / out_w
