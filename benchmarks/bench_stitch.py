"""Time the slide post-processing on a Camelyon16-sized slide (100k x 200k level-0 px), on the CPU.

Stitching tile scores (tile and half-tile stride), pasting per-tile anomaly maps at 4 cells per tile, lesion
polygons, detection points, the slide score and the heatmap picture; prints one line per step with the heatmap
size, so a regression in time or memory shows at once.

Usage:
    python benchmarks/bench_stitch.py [--batch 256] [--map-tiles 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_wsi.post_processing import (
    HeatmapAccumulator,
    detection_points,
    extract_lesions,
    render_heatmap_png,
    slide_score,
)

WIDTH, HEIGHT, TILE, MPP = 100_000, 200_000, 256, 0.25


def _timed(label: str, func: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = func()
    print(f"{label:<52s} {time.perf_counter() - start:8.3f} s")
    return result


def _tiles(stride: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : HEIGHT - TILE + 1 : stride, 0 : WIDTH - TILE + 1 : stride]
    return xs.ravel(), ys.ravel()


def _scores(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Background noise with three tumour-like blobs (one with a necrotic hole)."""
    rng = np.random.default_rng(0)
    scores = 0.2 + 0.1 * rng.random(xs.size)
    for cx, cy, r in ((30_000, 50_000, 6_000), (70_000, 120_000, 3_000), (50_000, 170_000, 9_000)):
        d = np.hypot(xs + TILE / 2 - cx, ys + TILE / 2 - cy)
        scores += 0.7 * np.exp(-((d / r) ** 2))
    d = np.hypot(xs + TILE / 2 - 50_000, ys + TILE / 2 - 170_000)
    scores[d < 2_500] = 0.25
    return scores.astype(np.float32)


def _stream(acc: HeatmapAccumulator, xs: np.ndarray, ys: np.ndarray, scores: np.ndarray, batch: int) -> None:
    for start in range(0, xs.size, batch):
        acc.add(xs[start : start + batch], ys[start : start + batch], scores[start : start + batch])


def main() -> None:
    """Run the benchmark and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="tiles per accumulator.add call")
    parser.add_argument("--map-tiles", type=int, default=20_000, help="tiles with 256 x 256 anomaly maps")
    args = parser.parse_args()

    for stride in (TILE, TILE // 2):
        xs, ys = _tiles(stride)
        scores = _scores(xs, ys)
        stride_acc = HeatmapAccumulator((WIDTH, HEIGHT), TILE, stride)

        def stream(
            acc: HeatmapAccumulator = stride_acc, xs: np.ndarray = xs, ys: np.ndarray = ys, s: np.ndarray = scores
        ) -> None:
            _stream(acc, xs, ys, s, args.batch)

        _timed(f"stitch {xs.size:,} tile scores, stride {stride} (batches of {args.batch})", stream)
        heatmap = stride_acc.result()
        print(f"    heatmap {heatmap.shape[0]} x {heatmap.shape[1]} cells, {heatmap.values.nbytes / 1e6:.1f} MB")

    xs, ys = _tiles(TILE)
    scores = _scores(xs, ys)
    acc = HeatmapAccumulator((WIDTH, HEIGHT), TILE, TILE, cells_per_tile=4)
    n = min(args.map_tiles, xs.size)
    maps = np.random.default_rng(1).random((args.batch, TILE, TILE), dtype=np.float32)

    def paste_maps() -> None:
        for start in range(0, n, args.batch):
            stop = min(start + args.batch, n)
            acc.add(xs[start:stop], ys[start:stop], scores[start:stop], maps=maps[: stop - start])

    _timed(f"paste {n:,} anomaly maps 256 x 256 at 4 cells per tile", paste_maps)
    fine = acc.result()
    print(f"    heatmap {fine.shape[0]} x {fine.shape[1]} cells, {fine.values.nbytes / 1e6:.1f} MB")

    tile_acc = HeatmapAccumulator((WIDTH, HEIGHT), TILE, TILE)
    tile_acc.add(xs, ys, scores)
    result = tile_acc.result()
    lesions = _timed("extract_lesions (threshold 0.5)", lambda: extract_lesions(result, 0.5, MPP, 2500.0))
    holes = sum(len(part.interiors) for le in lesions for part in getattr(le.polygon, "geoms", [le.polygon]))
    print(f"    {len(lesions)} lesions, {holes} holes, largest {max(le.area_um2 for le in lesions) / 1e6:.2f} mm²")
    points = _timed("detection_points (NMS 100 µm)", lambda: detection_points(result, MPP, 100.0, 0.3))
    print(f"    {len(points)} points")
    _timed("slide_score topk", lambda: slide_score(result, "topk", 10))
    thumbnail = np.full((2000, 1000, 3), 235, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        _timed("render_heatmap_png", lambda: render_heatmap_png(Path(tmp) / "h.png", result, thumbnail, 100.0, lesions))


if __name__ == "__main__":
    main()
