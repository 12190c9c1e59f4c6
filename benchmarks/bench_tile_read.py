"""Tile-read throughput: ``Slide.read_tile`` against a bare openslide ``read_region`` loop (same coordinates).

The loops run in this process over the same tile grid, alternating, several rounds; the best round of each is
reported (tiles/s) with the ratio ours / bare (goal: at least 0.9). The bare loop is ``read_region`` only
(a PIL RGBA image); the ``bare+numpy`` line adds the conversion to a numpy array that any consumer needs.
``ours`` decodes TIFF tiles directly where it can (:mod:`anomalib_wsi.slide.tiff_tiles`); ``ours, openslide``
is the same ``Slide`` with ``direct_tiff=False``. Every round opens fresh handles, so no loop starts with the
previous round's decoded tiles in a cache (a slide smaller than the 32 MiB caches still hits them within a round).

Slides: ``../shared/data/slides/real/CMU-1-Small-Region.svs`` (real Aperio JPEG) when present, and a synthetic
pyramidal JPEG BigTIFF written to a temporary folder (``--size`` px square, 0.25 µm/px).

Usage:
    python benchmarks/bench_tile_read.py [--size 8192] [--rounds 5] [--mpp 0.5] [--tile-size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from anomalib_wsi.slide import Slide, TilingConfig
from anomalib_wsi.slide.tiling import tiles_from_mask

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT.parent / "shared" / "data" / "slides" / "real" / "CMU-1-Small-Region.svs"


def write_synthetic_tiff(path: Path, size: int, mpp: float = 0.25) -> Path:
    """A pyramidal JPEG BigTIFF with H&E-like noise texture (downsamples 1, 2, 4, 16)."""
    import cv2
    import tifffile

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
    base = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    base = (base.astype(np.float32) * np.array([0.35, 0.2, 0.3]) + np.array([150, 90, 160])).astype(np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        opts = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
        res = (1e4 / mpp, 1e4 / mpp)
        tif.write(base, resolution=res, resolutionunit="CENTIMETER", **opts)
        for ds in (2, 4, 16):
            level = cv2.resize(base, (size // ds, size // ds), interpolation=cv2.INTER_AREA)
            tif.write(level, subfiletype=1, resolution=(res[0] / ds, res[1] / ds), resolutionunit="CENTIMETER", **opts)
    return path


def bench(slide_path: Path, target_mpp: float, tile_size: int, rounds: int) -> None:
    """Print tiles/s of the three loops and the ratio for one slide."""
    import openslide

    slide = Slide(slide_path)
    plan = slide.plan_read(target_mpp, tile_size)
    full = np.ones((64, 64), dtype=bool)
    table = tiles_from_mask(full, max(slide.dimensions) / 64, slide.dimensions, plan, min_tissue=0.0)
    coords = list(zip(table.x.tolist(), table.y.tolist(), strict=True))
    size = (plan.read_size_px, plan.read_size_px)

    def ours(direct_tiff: bool = True) -> None:
        fresh = Slide(slide_path, direct_tiff=direct_tiff)
        for x, y in coords:
            fresh.read_tile(x, y, plan)
        fresh.close()

    def bare(to_numpy: bool = False) -> None:
        handle = openslide.OpenSlide(str(slide_path))
        for x, y in coords:
            region = handle.read_region((x, y), plan.level, size)
            if to_numpy:
                np.asarray(region)
        handle.close()

    loops = {
        "ours": ours,
        "ours, openslide": partial(ours, direct_tiff=False),
        "bare": bare,
        "bare+numpy": partial(bare, to_numpy=True),
    }
    best = dict.fromkeys(loops, np.inf)
    for name in loops:  # warm-up: file cache, decoder
        loops[name]()
    for index in range(rounds):
        order = list(loops) if index % 2 == 0 else list(reversed(loops))
        for name in order:
            start = time.perf_counter()
            loops[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    n = len(coords)
    width, height = slide.dimensions
    print(f"{slide_path.name}: {width}x{height}, {n} tiles of {tile_size} px at {target_mpp} mpp")
    print(f"  level {plan.level}, read {plan.read_size_px} px{' + resize' if plan.needs_resize else ''}")
    for name, seconds in best.items():
        print(f"  {name:15s} {n / seconds:8.0f} tiles/s  ({seconds * 1e3 / n:.3f} ms/tile)")
    ratio, ratio_numpy = best["bare"] / best["ours"], best["bare+numpy"] / best["ours"]
    print(f"  ratio ours/bare = {ratio:.3f}, ours/bare+numpy = {ratio_numpy:.3f}")
    print(f"  direct TIFF decoding / openslide only = {best['ours, openslide'] / best['ours']:.2f}")
    slide.close()


def main() -> None:
    """Run the benchmark on the real slide (if present) and a synthetic one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12288, help="side of the synthetic slide in px")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--tile-size", type=int, default=256)
    args = parser.parse_args()
    _ = TilingConfig(mpp=args.mpp, tile_size_px=args.tile_size)  # validates the options
    if CMU.is_file():
        bench(CMU, max(args.mpp, 0.5), args.tile_size, args.rounds)
        bench(CMU, 1.0, args.tile_size, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_tiff(Path(tmp) / "synthetic.tif", args.size)
        bench(path, args.mpp, args.tile_size, args.rounds)
        bench(path, 1.0, args.tile_size, args.rounds)


if __name__ == "__main__":
    main()
