"""Fixtures of the slide tests: small pyramidal TIFF slides written with tifffile, with known tissue and ink."""

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
