"""Time the QuPath tile objects and the pyramidal heatmap overlay of a Camelyon16-sized slide, on the CPU.

A 100k x 200k level-0 px slide at 0.243 µm/px tiled at 512 level-0 px (256 px at about 0.5 µm/px) gives a
391 x 196 heatmap; an elliptic tissue region holds ``--tiles`` scored cells (NaN elsewhere) with three tumour-like
blobs. Printed per step: the time, the file size, and for ``tiles.geojson(.gz)`` the feature count and the time
of ``json.load`` of the file (a proxy for QuPath's import, which parses the JSON the same way before making
objects), next to the same collection built as dictionaries and written by ``json.dumps`` (what the streaming
writer replaces). For ``heatmap.tif``: each mode at two overlay levels, with the peak memory traced while writing.

Usage:
    python benchmarks/bench_overlay.py [--tiles 30000 40000] [--level-downsample 16 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import openslide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomalib_wsi.post_processing import Heatmap, write_heatmap_tiff, write_tile_objects

WIDTH, HEIGHT, TILE_LV0, MPP = 100_000, 200_000, 512.0, 0.243


def _heatmaps(n_tiles: int) -> tuple[Heatmap, Heatmap]:
    """Normalised and raw heatmaps with ``n_tiles`` scored cells inside an ellipse (the tissue)."""
    rows, cols = -(-HEIGHT // int(TILE_LV0)), -(-WIDTH // int(TILE_LV0))
    r, c = np.mgrid[0:rows, 0:cols]
    y, x = (r + 0.5) * TILE_LV0, (c + 0.5) * TILE_LV0
    ellipse = ((x - WIDTH / 2) / (WIDTH / 2)) ** 2 + ((y - HEIGHT / 2) / (HEIGHT / 2)) ** 2
    order = np.argsort(ellipse, axis=None, kind="stable")[:n_tiles]  # the n cells nearest the centre
    rng = np.random.default_rng(0)
    values = np.full(r.shape, np.nan, dtype=np.float32)
    score = 0.2 + 0.1 * rng.random(r.shape)
    for cx, cy, radius in ((30_000, 50_000, 6_000), (70_000, 120_000, 3_000), (50_000, 150_000, 9_000)):
        score += 0.7 * np.exp(-((np.hypot(x - cx, y - cy) / radius) ** 2))
    values.flat[order] = np.clip(score.flat[order], 0, 1)
    heatmap = Heatmap(values, TILE_LV0, "camelyon_sized", (WIDTH, HEIGHT))
    return heatmap, heatmap.with_values(values * 3.1 - 0.8)


def _best(func: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return min(times), result


def _dumps_baseline(path: Path, heatmap: Heatmap, raw: Heatmap) -> None:
    """The same features as dictionaries, written with one ``json.dumps`` (the straightforward way)."""
    import uuid

    rows, cols = np.nonzero(np.isfinite(heatmap.values))
    ds = heatmap.downsample
    features = []
    for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
        x0, y0 = col * ds, row * ds
        x1, y1 = min(x0 + ds, WIDTH), min(y0 + ds, HEIGHT)
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{heatmap.slide_id}:{x0},{y0}")),
                "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                "properties": {
                    "objectType": "tile",
                    "measurements": {
                        "anomaly_score": float(heatmap.values[row, col]),
                        "raw_score": float(raw.values[row, col]),
                    },
                },
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")))


def _parse(path: Path) -> int:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return len(json.load(handle)["features"])


def _tile_object_figures(folder: Path, n_tiles: int, repeats: int) -> None:
    heatmap, raw = _heatmaps(n_tiles)
    print(f"\n{n_tiles:,} scored tiles, heatmap {heatmap.shape[0]} x {heatmap.shape[1]} cells")
    for name in ("tiles.geojson", "tiles.geojson.gz"):
        path = folder / name
        seconds, _ = _best(partial(write_tile_objects, path, heatmap, raw, threshold=0.5), repeats)
        parse, count = _best(partial(_parse, path), repeats)
        print(
            f"  {name:<18s} write {seconds:6.3f} s  {path.stat().st_size / 1e6:6.2f} MB  "
            f"json.load {parse:6.3f} s  {count:,} features"
        )
    baseline = folder / "dumps.geojson"
    seconds, _ = _best(partial(_dumps_baseline, baseline, heatmap, raw), repeats)
    print(f"  {'dicts + json.dumps':<18s} write {seconds:6.3f} s  {baseline.stat().st_size / 1e6:6.2f} MB")


def _overlay_figures(folder: Path, n_tiles: int, downsamples: list[float], repeats: int) -> None:
    heatmap, _ = _heatmaps(n_tiles)
    print(f"\nheatmap.tif, {n_tiles:,} scored tiles")
    for ds in downsamples:
        for mode in ("uint8", "float32", "rgba"):
            path = folder / f"heatmap_{mode}.tif"
            write = partial(write_heatmap_tiff, path, heatmap, MPP, level_downsample=ds, mode=mode)
            seconds, _ = _best(write, repeats)
            tracemalloc.start()
            write()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            with openslide.OpenSlide(str(path)) as slide:
                dims, levels = slide.level_dimensions[0], slide.level_count
            canvas = dims[0] * dims[1] * {"uint8": 1, "float32": 4, "rgba": 4}[mode]
            print(
                f"  level downsample {ds:4g} {mode:<8s} write {seconds:6.3f} s  "
                f"{path.stat().st_size / 1e6:6.2f} MB  {dims[0]:,} x {dims[1]:,} px, {levels} levels  "
                f"peak {peak / 1e6:5.1f} MB (first page as an array: {canvas / 1e6:,.0f} MB)"
            )


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[30_000, 40_000], help="scored cells (tissue tiles)")
    parser.add_argument("--level-downsample", type=float, nargs="+", default=[16.0, 32.0], help="overlay levels")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_overlay_") as tmp:
        print(f"slide {WIDTH:,} x {HEIGHT:,} px at {MPP} µm/px, heatmap cells of {TILE_LV0:g} px")
        for n_tiles in args.tiles:
            _tile_object_figures(Path(tmp), n_tiles, args.repeats)
        _overlay_figures(Path(tmp), args.tiles[0], args.level_downsample, args.repeats)


if __name__ == "__main__":
    main()
