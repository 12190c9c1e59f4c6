"""Fraction of each tile covered by a low-resolution mask, by integral image (O(1) per tile, no pixel reads)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["coverage_from_integral", "mask_coverage", "mask_integral"]


def mask_integral(mask: np.ndarray) -> np.ndarray:
    """Integral image of a boolean (or 0/1) mask: ``(H + 1, W + 1)``, entry ``[r, c]`` counts the set pixels above
    and left of ``(r, c)``.

    int32 when the mask has fewer than 2**31 pixels (half the memory of float64, the same values), else float64.
    """
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    depth = cv2.CV_32S if binary.size < 2**31 else cv2.CV_64F
    return cv2.integral(binary, sdepth=depth)


def mask_coverage(
    mask: np.ndarray,
    mask_downsample: float,
    xs_lv0: np.ndarray,
    ys_lv0: np.ndarray,
    tile_size_lv0: float,
) -> np.ndarray:
    """Covered fraction of square tiles given by level-0 top-left corners, from a boolean mask.

    Args:
        mask: (H, W) boolean (or 0/1) mask at ``mask_downsample`` (level-0 px per mask px).
        mask_downsample: level-0 pixels per mask pixel (may differ per axis by rounding; the mean is fine).
        xs_lv0: level-0 x of each tile's top-left corner.
        ys_lv0: level-0 y of each tile's top-left corner.
        tile_size_lv0: tile side in level-0 pixels.

    Returns:
        float32 array, one fraction in [0, 1] per tile. Parts of a tile outside the mask count as uncovered.
        Tile edges fall between mask pixels; each edge pixel counts by the fraction of it the tile covers.
    """
    if np.asarray(xs_lv0).size == 0:
        return np.zeros(0, dtype=np.float32)
    return coverage_from_integral(mask_integral(mask), mask_downsample, xs_lv0, ys_lv0, tile_size_lv0)


def coverage_from_integral(
    integral: np.ndarray,
    mask_downsample: float,
    xs_lv0: np.ndarray,
    ys_lv0: np.ndarray,
    tile_size_lv0: float,
) -> np.ndarray:
    """:func:`mask_coverage` from the mask's :func:`mask_integral`, computed once for many calls."""
    xs = np.asarray(xs_lv0, dtype=np.float64) / mask_downsample
    ys = np.asarray(ys_lv0, dtype=np.float64) / mask_downsample
    side = float(tile_size_lv0) / mask_downsample
    if xs.size == 0:
        return np.zeros(0, dtype=np.float32)
    height, width = integral.shape[0] - 1, integral.shape[1] - 1

    def area(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
        """Covered mask area in [x0, x1) x [y0, y1) with fractional bounds, by bilinear reading of the integral."""
        return (
            _integral_at(integral, x1, y1)
            - _integral_at(integral, x0, y1)
            - _integral_at(integral, x1, y0)
            + (_integral_at(integral, x0, y0))
        )

    x0 = np.clip(xs, 0, width)
    y0 = np.clip(ys, 0, height)
    x1 = np.clip(xs + side, 0, width)
    y1 = np.clip(ys + side, 0, height)
    covered = area(x0, y0, x1, y1)
    return np.clip(covered / (side * side), 0.0, 1.0).astype(np.float32)


def _integral_at(integral: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integral image evaluated at fractional (x, y): exact for masks that are constant inside each pixel."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    xi = np.clip(np.floor(x).astype(np.int64), 0, w)
    yi = np.clip(np.floor(y).astype(np.int64), 0, h)
    fx = x - xi
    fy = y - yi
    xj = np.clip(xi + 1, 0, w)
    yj = np.clip(yi + 1, 0, h)
    top = integral[yi, xi] * (1 - fx) + integral[yi, xj] * fx
    bottom = integral[yj, xi] * (1 - fx) + integral[yj, xj] * fx
    # S(x, y) is bilinear inside a pixel only along each axis separately; for a pixel-constant mask the
    # bilinear blend of the four corners is exact.
    return top * (1 - fy) + bottom * fy
