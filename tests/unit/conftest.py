"""Fixtures of the unit tests: small pyramidal TIFF slides written with tifffile, with known tissue and ink."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

#: Layout of the default synthetic slide (level-0 px, 0.5 µm/px): tissue and a green pen blob on glass.
SLIDE_SIZE = (4096, 3072)  # (width, height)
TISSUE_BOX = (1024, 512, 3072, 2048)  # x0, y0, x1, y1: 8 x 6 tiles of 256 px
PEN_BOX = (256, 2304, 768, 2816)  # a green ink blob on glass, 2 x 2 tiles


def write_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float | None = 0.5,
    downsamples: tuple[int, ...] = (4, 16),
) -> Path:
    """Write a tiled JPEG pyramidal BigTIFF that openslide opens as ``generic-tiff``.

    Args:
        path: file to write.
        image: (H, W, 3) uint8 level 0.
        mpp: level-0 µm per pixel written as the TIFF resolution (None: no resolution tag).
        downsamples: reduced levels written after level 0.

    Returns:
        The path.
    """
    import tifffile

    height, width = image.shape[:2]
    opts = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        extra = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
        tif.write(image, **extra, **opts)
        for ds in downsamples:
            level = cv2.resize(image, (width // ds, height // ds), interpolation=cv2.INTER_AREA)
            extra = (
                {} if mpp is None else {"resolution": (1e4 / mpp / ds, 1e4 / mpp / ds), "resolutionunit": "CENTIMETER"}
            )
            tif.write(level, subfiletype=1, **extra, **opts)
    return path


def synthetic_image(
    size: tuple[int, int] = SLIDE_SIZE,
    tissue_box: tuple[int, int, int, int] | None = TISSUE_BOX,
    pen_box: tuple[int, int, int, int] | None = PEN_BOX,
    seed: int = 0,
) -> np.ndarray:
    """Glass (near white) with an H&E-like textured rectangle of tissue and a green ink blob."""
    width, height = size
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 242, dtype=np.uint8)
    image += rng.integers(0, 6, image.shape, dtype=np.uint8)
    if tissue_box is not None:
        x0, y0, x1, y1 = tissue_box
        texture = rng.integers(0, 60, ((y1 - y0) // 8, (x1 - x0) // 8, 1), dtype=np.uint8)
        texture = cv2.resize(texture, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)[..., None]
        pink = np.array([215, 130, 185], dtype=np.int16)  # eosin/haematoxylin mix, saturation ~100
        image[y0:y1, x0:x1] = np.clip(pink - texture.astype(np.int16), 0, 255).astype(np.uint8)
    if pen_box is not None:
        x0, y0, x1, y1 = pen_box
        image[y0:y1, x0:x1] = (40, 150, 110)  # green marker
    return image


@pytest.fixture
def make_slide(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_slide(name="slide.tif", mpp=0.5, **synthetic_image kwargs)`` writes a slide in tmp_path."""

    def make(
        name: str = "slide.tif", mpp: float | None = 0.5, downsamples: tuple[int, ...] = (4, 16), **kw: object
    ) -> Path:
        return write_tiff(tmp_path / name, synthetic_image(**kw), mpp=mpp, downsamples=downsamples)  # type: ignore[arg-type]

    return make


def write_claimed_size_tiff(
    path: Path,
    claimed: tuple[int, int],
    tissue_px: tuple[int, int] = (2048, 2048),
    mpp: float = 0.25,
    tile_px: int = 2048,
    downsamples: tuple[int, ...] = (16, 64, 256),
) -> Path:
    """A small TIFF that claims a huge slide: real pixels only in its top-left corner, every other tile missing.

    A real pyramid of a ``tissue_px`` image (pink tissue on all of it) is written with tifffile; then each level's
    ImageWidth / ImageLength are patched to the claimed size (over its downsample) and its TileOffsets /
    TileByteCounts are replaced by arrays for the claimed tile grid, appended at the end of the file: the real
    tiles keep their place in the top-left corner, all others have offset 0 and byte count 0, which openslide
    paints as transparent (white) background. The file stays small: 4 bytes per claimed tile and offset array.

    Args:
        path: file to write.
        claimed: level-0 ``(width, height)`` the file claims.
        tissue_px: level-0 ``(width, height)`` of the real pixels (all tissue) at the top-left.
        mpp: level-0 µm per pixel recorded.
        tile_px: tile side of level 0 (reduced levels use 256 px tiles).
        downsamples: reduced levels (their claimed size is the claimed size over the downsample, rounded up).

    Returns:
        The path.
    """
    import struct

    import tifffile

    width, height = tissue_px
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (215, 130, 185)  # flat H&E pink: tissue at any resolution, and a few KB of JPEG
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, ds in enumerate((1, *downsamples)):
            side = tile_px if ds == 1 else 256
            size = (max(1, width // ds), max(1, height // ds))
            small = image if ds == 1 else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            level = np.full((-(-small.shape[0] // side) * side, -(-small.shape[1] // side) * side, 3), 242, np.uint8)
            level[: small.shape[0], : small.shape[1]] = small  # whole tiles, glass around the tissue
            tif.write(
                level,
                tile=(side, side),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if index == 0 else 1,
                resolution=(1e4 / mpp / ds, 1e4 / mpp / ds),
                resolutionunit="CENTIMETER",
            )
    entries: list[tuple[int, int, int, int]] = []  # (entry offset, type, count, value) of each patched tag
    arrays: list[tuple[int, int, np.ndarray]] = []  # (entry offset of the tag, count, data) appended at the end
    with tifffile.TiffFile(path) as tif:
        pages = [page for page in tif.pages if isinstance(page, tifffile.TiffPage)]
        for page, ds in zip(pages, (1, *downsamples), strict=True):
            level_w, level_h = -(-claimed[0] // ds), -(-claimed[1] // ds)
            entries.append((page.tags["ImageWidth"].offset, 4, 1, level_w))
            entries.append((page.tags["ImageLength"].offset, 4, 1, level_h))
            across, down = -(-level_w // page.tilewidth), -(-level_h // page.tilelength)
            real_across = -(-page.imagewidth // page.tilewidth)
            offsets = np.zeros(across * down, dtype=np.uint32)
            counts = np.zeros(across * down, dtype=np.uint32)
            for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=True)):
                row, col = divmod(index, real_across)
                offsets[row * across + col], counts[row * across + col] = offset, count
            arrays.append((page.tags["TileOffsets"].offset, len(offsets), offsets))
            arrays.append((page.tags["TileByteCounts"].offset, len(counts), counts))
    with path.open("r+b") as handle:
        for entry, kind, count, value in entries:  # BigTIFF entry: code u16, type u16, count u64, value u64
            handle.seek(entry + 2)
            handle.write(struct.pack("<HQQ", kind, count, value))
        for entry, count, data in arrays:
            end = handle.seek(0, 2)
            start = end + (-end % 8)
            handle.write(b"\0" * (start - end) + data.tobytes())
            handle.seek(entry + 2)
            handle.write(struct.pack("<HQQ", 4, count, start))  # type 4: LONG
    return path


@pytest.fixture
def make_claimed_slide(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_claimed_slide(name, claimed=(W, H), **kw)``: :func:`write_claimed_size_tiff` in tmp_path."""

    def make(name: str, claimed: tuple[int, int], **kw: object) -> Path:
        return write_claimed_size_tiff(tmp_path / name, claimed, **kw)  # type: ignore[arg-type]

    return make
