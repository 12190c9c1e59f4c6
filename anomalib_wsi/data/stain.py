"""Stain normalisation (Macenko, Reinhard) and H&E colour augmentation of tiles.

A :class:`StainReference` is fitted with ``torchstain`` to reference tissue (a tile, a folder of tiles or a slide
region, see :func:`reference_images`) and stored as plain data (``as_dict``: a method name and lists of floats), so
it rides in a checkpoint that ``torch.load(weights_only=True)`` reads. A :class:`StainNormalizer` maps tiles to
it. The source stain of a slide is estimated once per slide and process, with ``torchstain`` again, from a few of
its tiles (:meth:`StainNormalizer.fit_slide`), and every tile of that slide then goes through the same colour map,
applied with OpenCV (Macenko: a 3 x 3 map in optical density, computed as one affine map of the logarithms of the
pixel values, 0.09-0.12 ms per 256 px tile on one CPU core; Reinhard: a per-channel affine map in LAB, 0.5-0.9 ms,
or 0.1-0.2 ms through a table of all RGB colours once a slide has had 256 tiles). Fitting ``torchstain`` to every
256 px tile costs 4-10 ms, ten to twenty times the tile's read (0.3-0.5 ms), and estimates stains badly on tiles
that hold mostly one of them. On a GPU the Macenko map runs on the device instead (:func:`od_maps_on_device`),
leaving the loader workers only the reads.

A slide whose sample tiles hold almost no stain (background, only pen), or whose fit is not finite, is passed
through unchanged (and so is a single tile normalised on its own stain, :meth:`StainNormalizer.normalize`,
with almost no stained pixel); the normaliser counts them
(:attr:`StainNormalizer.passed_through`), never returns NaN and never raises on a tile.

:class:`HEDJitter` (random scale and shift of the haematoxylin, eosin and DAB concentrations, Tellez et al. 2018)
and :class:`RandomRot90` are torchvision v2 transforms for ``train_augmentations``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from anomalib_wsi.errors import WSIError

__all__ = [
    "STAIN_METHODS",
    "HEDJitter",
    "RandomRot90",
    "StainNormalizer",
    "StainReference",
    "fit_reference",
    "od_maps_on_device",
    "reference_images",
    "resolve_reference",
]

#: The normalisation methods.
STAIN_METHODS = ("macenko", "reinhard")

#: Transmitted light intensity and the optical-density threshold of a stained pixel (torchstain's defaults).
IO = 240.0
BETA = 0.15
#: A pixel is stained when every channel is at most this (optical density >= BETA in all channels).
_STAINED_MAX = math.floor(IO * math.exp(-BETA) - 1)
#: Fraction of stained pixels below which a tile (or a slide's sample) is left as it is.
MIN_STAINED_FRACTION = 0.05
#: Tiles of a slide from which its source stain is estimated.
SOURCE_TILES = 16

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _torch_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).contiguous()


def stained_fraction(image: np.ndarray) -> float:
    """Fraction of pixels whose optical density is at least 0.15 in every channel (uint8 RGB (H, W, 3))."""
    if image.size == 0:
        return 0.0
    mask = cv2.inRange(np.ascontiguousarray(image[..., :3]), (0, 0, 0), (_STAINED_MAX,) * 3)
    return cv2.countNonZero(mask) / float(mask.size)


def _all_pixels(images: list[np.ndarray]) -> np.ndarray:
    """The pixels of ``images`` as one (1, N, 3) uint8 image (what torchstain fits on)."""
    parts = [img[..., :3].reshape(-1, 3) for img in images]
    return (np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8))[None]


@dataclass(frozen=True)
class StainReference:
    """A fitted stain reference as plain data.

    Attributes:
        method: "macenko" or "reinhard".
        stain_matrix: Macenko: optical density of haematoxylin and eosin, rows R, G, B (3 x 2).
        max_concentrations: Macenko: 99th percentile of the two stain concentrations.
        lab_means: Reinhard: mean of L, a, b (CIE units).
        lab_stds: Reinhard: standard deviation of L, a, b.
    """

    method: str
    stain_matrix: tuple[tuple[float, float], ...] = ()
    max_concentrations: tuple[float, ...] = ()
    lab_means: tuple[float, ...] = ()
    lab_stds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in STAIN_METHODS:
            msg = f"stain normalisation must be one of {', '.join(STAIN_METHODS)}, got {self.method!r}"
            raise WSIError(msg)
        if self.method == "macenko":
            ok = len(self.stain_matrix) == 3 and all(len(r) == 2 for r in self.stain_matrix)
            ok = ok and len(self.max_concentrations) == 2
            values = [v for r in self.stain_matrix for v in r] + list(self.max_concentrations) if ok else []
            ok = ok and all(math.isfinite(v) for v in values) and min(self.max_concentrations) > 0
        else:
            ok = len(self.lab_means) == 3 and len(self.lab_stds) == 3
            ok = ok and all(math.isfinite(v) for v in (*self.lab_means, *self.lab_stds)) and min(self.lab_stds) > 0
        if not ok:
            msg = f"{self.method} stain reference is incomplete or not finite: {self.as_dict()}"
            raise WSIError(msg)

    @classmethod
    def default_macenko(cls) -> StainReference:
        """torchstain's (and Macenko's HEnorm) standard H&E reference."""
        from torchstain.torch.normalizers import TorchMacenkoNormalizer

        normalizer = TorchMacenkoNormalizer()
        return cls._from_macenko(normalizer)

    @classmethod
    def _from_macenko(cls, normalizer: Any) -> StainReference:
        matrix = normalizer.HERef.detach().cpu().double().numpy()
        return cls(
            "macenko",
            stain_matrix=tuple((float(a), float(b)) for a, b in matrix),
            max_concentrations=tuple(float(v) for v in normalizer.maxCRef.detach().cpu().double().numpy()),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data (str, lists of floats): JSON, hyper-parameters, ``torch.load(weights_only=True)``."""
        if self.method == "macenko":
            return {
                "method": self.method,
                "stain_matrix": [list(row) for row in self.stain_matrix],
                "max_concentrations": list(self.max_concentrations),
            }
        return {"method": self.method, "lab_means": list(self.lab_means), "lab_stds": list(self.lab_stds)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "stain reference") -> StainReference:
        """The reference of :meth:`as_dict`; a malformed one is a one-line :class:`WSIError` naming ``where``."""
        if not isinstance(data, dict) or data.get("method") not in STAIN_METHODS:
            msg = f"{where}: not a stain reference (a dict with method macenko or reinhard); fit one again"
            raise WSIError(msg)
        try:
            return cls(
                str(data["method"]),
                stain_matrix=tuple((float(a), float(b)) for a, b in data.get("stain_matrix", ())),
                max_concentrations=tuple(float(v) for v in data.get("max_concentrations", ())),
                lab_means=tuple(float(v) for v in data.get("lab_means", ())),
                lab_stds=tuple(float(v) for v in data.get("lab_stds", ())),
            )
        except (TypeError, ValueError, WSIError) as err:
            msg = f"{where}: not a valid stain reference ({err}); fit one again"
            raise WSIError(msg) from None


def fit_reference(images: list[np.ndarray], method: str, where: str = "stain reference") -> StainReference:
    """Fit ``method`` to the stained pixels of uint8 RGB ``images`` with torchstain.

    Raises:
        WSIError: unknown method, or the images hold almost no stained tissue (below 5 % of their pixels).
    """
    if method not in STAIN_METHODS:
        msg = f"stain normalisation must be one of {', '.join(STAIN_METHODS)}, got {method!r}"
        raise WSIError(msg)
    fit = _fit(images, method)
    if fit is None:
        msg = (
            f"{where}: almost no stained tissue (under {MIN_STAINED_FRACTION:.0%} of the pixels); "
            "choose reference tiles of well-stained tissue"
        )
        raise WSIError(msg)
    return fit


#: Pixels a slide's source stain is fitted on (an even subsample of its sample tiles: 50 ms instead of 200 ms
#: for 16 tiles of 256 px), and at most for a reference.
SOURCE_PIXELS = 1 << 18
REFERENCE_PIXELS = 1 << 23


def _fit(images: list[np.ndarray], method: str, max_pixels: int = REFERENCE_PIXELS) -> StainReference | None:
    """torchstain's fit on the pixels of ``images``; None when ill-posed (too little stain, not finite)."""
    pixels = _all_pixels(images)
    if pixels.shape[1] > max_pixels:  # an even subsample: the percentiles and statistics barely move
        pixels = np.ascontiguousarray(pixels[:, :: -(-pixels.shape[1] // max_pixels)])
    stained = stained_fraction(pixels)
    if stained < MIN_STAINED_FRACTION or stained * pixels.shape[1] < 64:
        return None
    try:
        if method == "macenko":
            from torchstain.torch.normalizers import TorchMacenkoNormalizer

            macenko = TorchMacenkoNormalizer()
            macenko.fit(_torch_image(pixels), Io=IO, beta=BETA)
            return StainReference._from_macenko(macenko)
        from torchstain.torch.normalizers import TorchReinhardNormalizer

        reinhard = TorchReinhardNormalizer()
        reinhard.fit(_torch_image(pixels))
        return StainReference(
            "reinhard",
            lab_means=tuple(float(v) for v in reinhard.target_means),
            lab_stds=tuple(float(v) for v in reinhard.target_stds),
        )
    except (RuntimeError, ValueError, IndexError, WSIError):  # singular fits, NaN: ill-posed
        return None


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        msg = f"{path}: cannot read this image; give PNG/JPEG/TIFF reference tiles"
        raise WSIError(msg)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def reference_images(spec: str | Path) -> list[np.ndarray]:
    """The uint8 RGB reference images named by ``spec``.

    ``spec`` is an image file (PNG, JPEG, TIFF), a folder of them, or a slide region ``SLIDE@x,y,width,height``
    (level-0 pixels, read at level 0, at most 4096 px a side).

    Raises:
        WSIError: the file, folder or slide does not exist, holds no image, or the region is malformed.
    """
    text = str(spec)
    if "@" in text and not Path(text).exists():
        slide_text, _, region_text = text.rpartition("@")
        try:
            x, y, width, height = (int(v) for v in region_text.split(","))
        except ValueError:
            msg = f"{text}: a slide region is SLIDE@x,y,width,height in level-0 pixels"
            raise WSIError(msg) from None
        if not (0 < width <= 4096 and 0 < height <= 4096):
            msg = f"{text}: the region's width and height must be 1-4096 px"
            raise WSIError(msg)
        from anomalib_wsi.slide.reader import Slide

        slide = Slide(slide_text, mpp=1.0)  # read at level 0: the slide's own mpp does not matter here
        try:
            region = slide.read_region(x, y, 0, (width, height))
        finally:
            slide.close()
        return [region]
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            msg = f"{path}: no reference tiles ({', '.join(IMAGE_EXTENSIONS)}) in this folder"
            raise WSIError(msg)
        return [_read_image(p) for p in files]
    if not path.is_file():
        msg = f"{path}: stain reference not found; give a tile, a folder of tiles, SLIDE@x,y,w,h or a .json fit"
        raise WSIError(msg)
    return [_read_image(path)]


def resolve_reference(method: str | None, reference: Any, where: str = "stain_reference") -> StainReference | None:
    """The reference of a ``stain_normalization`` / ``stain_reference`` pair of options (None: no normalisation).

    ``reference`` is a fitted reference (its dict, or a ``.json`` file of it), an image, a folder of images, a
    slide region (see :func:`reference_images`), or None (Macenko: torchstain's standard H&E reference).

    Raises:
        WSIError: unknown method, a reference of another method, a Reinhard normalisation without a reference,
            or a reference that cannot be read or fitted.
    """
    if method is None or method == "none":
        return None
    if method not in STAIN_METHODS:
        msg = f"stain_normalization must be one of none, {', '.join(STAIN_METHODS)}; got {method!r}"
        raise WSIError(msg)
    if reference is None:
        if method == "reinhard":
            msg = f"{where}: Reinhard normalisation needs a reference (a tile, a folder of tiles or SLIDE@x,y,w,h)"
            raise WSIError(msg)
        return StainReference.default_macenko()
    if isinstance(reference, StainReference):
        fitted = reference
    elif isinstance(reference, dict):
        fitted = StainReference.from_dict(reference, where=where)
    elif str(reference).lower().endswith(".json"):
        import json

        path = Path(str(reference))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            msg = f"{path}: cannot read this stain reference ({err}); write it with anomalib-wsi stain fit"
            raise WSIError(msg) from None
        fitted = StainReference.from_dict(data, where=str(path))
    else:
        return fit_reference(reference_images(reference), method, where=str(reference))
    if fitted.method != method:
        msg = f"{where}: a {fitted.method} reference, but stain_normalization is {method}; fit a {method} one"
        raise WSIError(msg)
    return fitted


@dataclass
class _SourceMap:
    """The colour map of one slide: a 3 x 3 optical-density map (Macenko) or three LAB lookup tables (Reinhard).

    ``mapped`` counts the pixels that went through the map; ``table``, when built (see
    :attr:`StainNormalizer.colour_table`), holds the map's output for every one of the 2**24 RGB colours.
    """

    od_matrix: np.ndarray | None = None  # (3, 3) float32: OD_out = od_matrix @ OD_in
    lab_luts: np.ndarray | None = None  # (256, 1, 3) uint8
    mapped: int = 0
    table: np.ndarray | None = field(default=None, repr=False)  # (2**24,) uint32: RGBA of colour R | G<<8 | B<<16
    log_affine: np.ndarray | None = field(default=None, repr=False)  # (3, 4) float32: log(out) from log(in + 1)

    def __post_init__(self) -> None:
        if self.od_matrix is not None:
            # OD_in = log(IO) - log(v + 1), out = IO * exp(-OD_out) = exp(log(IO) - M @ OD_in): one affine map from
            # log(v + 1) to log(out), with no lookup of OD (a gather, half the map's time) in the pixel loop
            matrix = self.od_matrix.astype(np.float64)
            offset = math.log(IO) * (1.0 - matrix.sum(axis=1))
            self.log_affine = np.hstack([matrix, offset[:, None]]).astype(np.float32)


_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / IO)).astype(np.float32)
#: Entries of a colour table: every 8-bit RGB colour.
TABLE_COLOURS = 1 << 24
#: Colour tables a normaliser keeps (64 MiB each): the slide being read and the one before it.
TABLES_KEPT = 2


@dataclass
class StainNormalizer:
    """Maps tiles to a :class:`StainReference`, one colour map per slide (see the module's docstring).

    Picklable (DataLoader workers each build their own per-slide maps). Each process counts the tiles it passed
    through unchanged in :attr:`passed_through`.

    With ``colour_table`` a slide's Reinhard map is turned into a table of all 2**24 RGB colours (64 MiB) once it
    has mapped as many pixels as the table has entries (256 tiles of 256 px): from then on each pixel is one
    lookup instead of two LAB conversions (0.5-0.9 -> 0.1-0.2 ms per 256 px tile on one core), with identical output.
    Building it costs about what mapping those first pixels did (0.5 s), so a slide pays at most twice the best
    possible. Worth it where tiles come slide after slide (prediction), not where they come from many slides at
    random (training). Macenko's direct map (0.09-0.12 ms) is not: between tile reads its table's lookups, spread
    over 64 MiB, measured slower than the map itself.

    Args:
        reference: the fitted reference.
        colour_table: build per-slide colour tables (at most :data:`TABLES_KEPT` at a time).

    Example:
        >>> normalizer = StainNormalizer(fit_reference([reference_tile], "macenko"))   # doctest: +SKIP
        >>> out, changed = normalizer.normalize(tile)        # the tile's own stain estimated from the tile
    """

    reference: StainReference
    colour_table: bool = False
    passed_through: int = 0
    _maps: dict[Any, _SourceMap | None] = field(default_factory=dict, repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)
    _buffers: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "colour_table": self.colour_table,
            "passed_through": 0,
            "_maps": {},
            "_pid": -1,
            "_buffers": None,
        }

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._maps, self.passed_through, self._pid = {}, 0, os.getpid()

    def source_map(self, images: list[np.ndarray]) -> _SourceMap | None:
        """The colour map from the stain of ``images`` to the reference; None when that stain is ill-posed."""
        source = _fit(images, self.reference.method, max_pixels=SOURCE_PIXELS)
        if source is None:
            return None
        if self.reference.method == "macenko":
            he_src = np.asarray(source.stain_matrix, np.float64)
            he_ref = np.asarray(self.reference.stain_matrix, np.float64)
            scale = np.asarray(self.reference.max_concentrations) / np.asarray(source.max_concentrations)
            matrix = he_ref @ np.diag(scale) @ np.linalg.pinv(he_src)
            return _SourceMap(od_matrix=matrix.astype(np.float32)) if np.isfinite(matrix).all() else None
        # LAB in OpenCV's 8-bit units (L * 2.55, a + 128, b + 128), torchstain's Reinhard map per channel
        levels = np.arange(256, dtype=np.float64)
        luts = []
        for channel in range(3):
            offset, unit = (0.0, 2.55) if channel == 0 else (128.0, 1.0)
            value = (levels - offset) / unit
            mapped = (value - source.lab_means[channel]) / source.lab_stds[channel]
            mapped = mapped * self.reference.lab_stds[channel] + self.reference.lab_means[channel]
            luts.append(np.clip(np.rint(mapped * unit + offset), 0, 255))
        lut = np.stack(luts, axis=-1).astype(np.uint8)[:, None, :]
        return _SourceMap(lab_luts=lut)

    def fit_slide(self, key: Any, read_samples: Any) -> _SourceMap | None:
        """The (cached) colour map of slide ``key``; ``read_samples()`` gives its sample tiles when not cached."""
        self._check_pid()
        if key not in self._maps:
            try:
                self._maps[key] = self.source_map(list(read_samples()))
            except Exception:  # unreadable samples: the slide's tiles pass unchanged (their reads report errors)
                self._maps[key] = None
        return self._maps[key]

    def apply(
        self, tile: np.ndarray, source: _SourceMap | None, check_stain: bool = False, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, bool]:
        """``tile`` (uint8 RGB (H, W, 3)) through ``source``; unchanged (and counted) without a map.

        With ``check_stain`` a tile with almost no stained pixel is left unchanged too (a slide's map is applied
        to all its tiles: background stays near white under it, and one map keeps the slide's colours coherent).
        ``out`` (uint8 (H, W, 3); may be ``tile`` itself) receives the result, the tile as it is when unchanged.
        """
        self._check_pid()
        if out is not None and out.shape != (*tile.shape[:2], 3):
            msg = f"out has shape {out.shape}, the tile {tile.shape}"
            raise ValueError(msg)
        if source is None or (check_stain and stained_fraction(tile) < MIN_STAINED_FRACTION):
            self.passed_through += 1
            if out is None or out is tile:
                return tile, False
            out[...] = tile[..., :3]
            return out, False
        rgb = tile if tile.shape[-1] == 3 and tile.flags.c_contiguous else np.ascontiguousarray(tile[..., :3])
        if self.colour_table and source.lab_luts is not None:  # Macenko's direct map is nearly as fast
            self._count(source, rgb.size // 3)
        if source.table is not None:
            return self._look_up(rgb, source.table, out), True
        return self._map(rgb, source, out), True

    def _map(self, rgb: np.ndarray, source: _SourceMap, out: np.ndarray | None = None) -> np.ndarray:
        """``rgb`` (uint8 (H, W, 3), contiguous) through the slide's map, computed pixel by pixel."""
        if source.log_affine is not None:
            log_in, log_out = self._scratch(rgb.shape)  # reused buffers: no page faults for new arrays per tile
            cv2.add(rgb, (1.0, 1.0, 1.0, 1.0), dst=log_in, dtype=cv2.CV_32F)  # a tuple: every channel
            cv2.log(log_in, dst=log_in)
            cv2.transform(log_in, source.log_affine, dst=log_out)
            cv2.exp(log_out, dst=log_out)  # IO * exp(-OD_out)
            if out is None:
                return cv2.convertScaleAbs(log_out)  # rounded and saturated to 0-255
            cv2.convertScaleAbs(log_out, dst=out)
            return out
        assert source.lab_luts is not None
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        result = cv2.cvtColor(cv2.LUT(lab, source.lab_luts), cv2.COLOR_LAB2RGB)
        if out is not None:
            out[...] = result
            return out
        return result

    def _count(self, source: _SourceMap, pixels: int) -> None:
        """Count ``pixels`` mapped with ``source``; build its colour table once they reach the table's size."""
        source.mapped += pixels
        if source.table is not None or source.mapped < TABLE_COLOURS:
            return
        kept = [m for m in self._maps.values() if m is not None and m.table is not None]
        for old in kept[: max(len(kept) - TABLES_KEPT + 1, 0)]:  # the oldest slides' tables go first
            old.table = None
        source.table = self._build_table(source)

    def _build_table(self, source: _SourceMap) -> np.ndarray:
        """The map's output for every RGB colour, as RGBA packed in uint32 and indexed by R | G << 8 | B << 16."""
        table = np.empty(TABLE_COLOURS, np.uint32)
        side = 1024  # 1 Mi colours at a time: 12 MiB of float scratch instead of 200 MiB
        chunk = side * side
        low = np.arange(chunk, dtype=np.uint32)
        colours = np.empty((side, side, 3), np.uint8)
        rgba = np.empty((side, side, 4), np.uint8)
        self._buffers = None
        for start in range(0, TABLE_COLOURS, chunk):
            index = (low + np.uint32(start)).reshape(side, side)
            for channel in range(3):
                colours[..., channel] = (index >> np.uint32(8 * channel)) & np.uint32(255)
            cv2.cvtColor(self._map(colours, source), cv2.COLOR_RGB2RGBA, dst=rgba)
            table[start : start + chunk] = rgba.view(np.uint32).reshape(-1)
        self._buffers = None  # the chunk-sized scratch is not kept
        return table

    @staticmethod
    def _look_up(rgb: np.ndarray, table: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """``rgb`` through a colour table: one lookup per pixel."""
        image = rgb.reshape(-1, rgb.shape[-2], 3)
        packed = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA).view(np.uint32)  # R | G<<8 | B<<16 | 255<<24
        np.bitwise_and(packed, np.uint32(TABLE_COLOURS - 1), out=packed)
        mapped = np.take(table, packed).view(np.uint8).reshape(*image.shape[:2], 4)
        if out is None:
            return cv2.cvtColor(mapped, cv2.COLOR_RGBA2RGB).reshape(rgb.shape)
        cv2.cvtColor(mapped, cv2.COLOR_RGBA2RGB, dst=out.reshape(image.shape))
        return out

    def _scratch(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if self._buffers is None or self._buffers[0].shape != shape:
            self._buffers = (np.empty(shape, np.float32), np.empty(shape, np.float32))
        return self._buffers

    def normalize(self, tile: np.ndarray) -> tuple[np.ndarray, bool]:
        """One tile with its own stain estimated from it (ill-posed tiles come back unchanged, ``False``)."""
        return self.apply(tile, self.source_map([tile]), check_stain=True)


def od_maps_on_device(images_u8: torch.Tensor, od_maps: torch.Tensor) -> torch.Tensor:
    """Macenko colour maps applied in torch on the images' device, one 3 x 3 optical-density map per tile.

    ``images_u8`` (N, H, W, 3) uint8; ``od_maps`` (N, 3, 3), the :class:`_SourceMap` ``od_matrix`` of each tile's
    slide, NaN for a tile left as it is. The same map as the loader workers' (optical density through a lookup, the
    3 x 3 map, ``IO * exp(-OD)`` rounded and saturated to uint8; the workers fold the lookup and ``IO`` into one
    affine map of ``log(v + 1)``), within one grey level of it.
    """
    maps = od_maps.to(images_u8.device, torch.float32, non_blocking=True)
    keep = ~torch.isfinite(maps).flatten(1).all(1)
    lut = torch.as_tensor(_OD_LUT, device=images_u8.device)
    od_out = torch.einsum("nhwc,ndc->nhwd", lut[images_u8.int()], torch.nan_to_num(maps))
    mapped = od_out.neg_().exp_().mul_(IO).round_().clamp_(0, 255).to(torch.uint8)
    return torch.where(keep.view(-1, 1, 1, 1), images_u8, mapped)


def sample_rows(n_rows: int, count: int = SOURCE_TILES) -> np.ndarray:
    """``count`` rows spread evenly over ``n_rows`` (the tiles a slide's source stain is estimated from)."""
    if n_rows <= count:
        return np.arange(n_rows, dtype=np.int64)
    return np.linspace(0, n_rows - 1, count).round().astype(np.int64)


# -- augmentation --------------------------------------------------------------------------------------------
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


class HEDJitter(v2.Transform):
    """Random H&E colour perturbation in HED space (Ruifrok-Johnston stain vectors, as ``skimage.color.rgb2hed``).

    Each stain's concentration ``c`` becomes ``c * a + b`` with ``a`` uniform in ``1 ± sigma`` and ``b`` uniform in
    ``± bias`` (Tellez et al., 2018), drawn per image. Masks and other non-image inputs pass unchanged.

    Args:
        sigma: scale range of the concentrations.
        bias: shift range of the concentrations (optical density units).
        p: probability of perturbing an image.
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, p: float = 1.0) -> None:
        super().__init__()
        if not (0 <= sigma < 1 and bias >= 0 and 0 <= p <= 1):
            msg = f"HEDJitter needs 0 <= sigma < 1, bias >= 0, 0 <= p <= 1; got sigma={sigma}, bias={bias}, p={p}"
            raise ValueError(msg)
        self.sigma, self.bias, self.p = float(sigma), float(bias), float(p)
        self._to_hed = torch.tensor(_HED_FROM_RGB, dtype=torch.float32)
        self._to_rgb = torch.tensor(_RGB_FROM_HED, dtype=torch.float32)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        del flat_inputs
        apply = bool(torch.rand(()) < self.p)
        scale = 1 + (torch.rand(3) * 2 - 1) * self.sigma
        shift = (torch.rand(3) * 2 - 1) * self.bias
        return {"apply": apply, "scale": scale, "shift": shift}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, torch.Tensor) or not params["apply"]:
            return inpt
        if inpt.ndim < 3 or inpt.shape[-3] != 3:
            return inpt
        is_uint8 = inpt.dtype == torch.uint8
        rgb = inpt.float() / 255 if is_uint8 else inpt.float()
        od = -torch.log(rgb.clamp(min=1e-6))  # (..., 3, H, W)
        hed = torch.einsum("...chw,cd->...dhw", od, self._to_hed)
        hed = hed * params["scale"].view(3, 1, 1) + params["shift"].view(3, 1, 1)
        out = torch.exp(-torch.einsum("...dhw,dc->...chw", hed, self._to_rgb)).clamp(0, 1)
        out = (out * 255).round().to(torch.uint8) if is_uint8 else out.to(inpt.dtype)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class RandomRot90(v2.Transform):
    """Rotate image and mask together by a random multiple of 90 degrees (tiles have no orientation)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        del flat_inputs
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or inpt.ndim < 2 or params["k"] == 0:
            return inpt
        out = torch.rot90(inpt, params["k"], dims=(-2, -1))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
