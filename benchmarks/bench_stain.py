"""Stain normalisation in the prediction tile loader: tiles/s with normalisation off, Macenko and Reinhard.

In one process, the engine's tile loader (``make_tile_loader``: DataLoader workers reading into the shared ring)
over the same synthetic slide, timed from the first batch to the last, the best of ``--repeats`` runs each:
``off`` (no normalisation), ``macenko`` and ``reinhard`` (each slide's colour map estimated by the worker from 16
of its tiles, then applied to every tile). The goal is macenko/off >= 0.8 on CPU. It also prints the per-tile
costs in one thread: reading a tile, the colour map applied to it, and torchstain's own ``normalize`` (which fits
the stain of every tile anew), the reason the loader does not call torchstain per tile.

    python benchmarks/bench_stain.py --slide-size 16384 --tile-size 256 --workers 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _loader_rate(jobs: list[Any], batch_size: int, workers: int, stain: Any) -> float:
    from anomalib_wsi.inference.loader import make_tile_loader

    loader, _, ring = make_tile_loader(jobs, batch_size, workers, stain=stain)
    batches = iter(loader)
    first = next(batches)
    ring.receive(first["batch"], first["count"])
    start, tiles = time.perf_counter(), 0
    for batch in batches:
        ring.receive(batch["batch"], batch["count"])
        tiles += batch["count"]
    return tiles / max(time.perf_counter() - start, 1e-9)


def _per_tile_ms(function: Any, repeats: int = 30) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide-size", type=int, default=16384)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_stain"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch
    import torchstain

    from anomalib_wsi.data.stain import StainNormalizer, fit_reference
    from anomalib_wsi.data.synthetic import synthesize_slide
    from anomalib_wsi.inference.loader import SlideJob
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    path = args.workdir / f"synth_{args.slide_size}.tif"
    if not path.exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        synthesize_slide(path, size_px=args.slide_size, mpp=0.5, seed=0, tumour=True)
    slide = Slide(path)
    plan = slide.plan_read(args.mpp, args.tile_size)
    table = tile_slide(slide, TilingConfig(mpp=args.mpp, tile_size_px=args.tile_size))
    jobs = [SlideJob(path, slide.slide_id, None, args.workdir, plan, table, slide.dimensions, slide.mpp, 1.0, b"", 1.0)]
    print(f"{path.name}: {len(table)} tiles of {args.tile_size} px, batch {args.batch_size}, {args.workers} worker(s)")

    tiles = [slide.read_tile(int(x), int(y), plan) for x, y in zip(table.x[:16], table.y[:16], strict=True)]
    references = {method: fit_reference(tiles, method) for method in ("macenko", "reinhard")}
    results: dict[str, Any] = {"tiles": len(table), "tile_size_px": args.tile_size, "workers": args.workers}
    rates: dict[str, float] = {"off": 0.0, "macenko": 0.0, "reinhard": 0.0}
    for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every method
        for method, stain in (("off", None), ("macenko", references["macenko"]), ("reinhard", references["reinhard"])):
            rates[method] = max(rates[method], _loader_rate(jobs, args.batch_size, args.workers, stain))
    for method, rate in rates.items():
        print(f"loader {method:>8}: {rate:8.0f} tiles/s   ratio to off {rate / rates['off']:.2f}")
    results["loader_tiles_per_s"] = rates
    results["ratio_to_off"] = {m: r / rates["off"] for m, r in rates.items()}

    tile = tiles[0]
    rows = iter(range(10**9))

    def read_next() -> Any:  # a different tile each time (a stored tile read twice is decoded once)
        row = next(rows) % len(table)
        return slide.read_tile(int(table.x[row]), int(table.y[row]), plan)

    costs = {"read": _per_tile_ms(read_next, repeats=min(len(table), 200))}
    as_tensor = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1).contiguous()
    for method, reference in references.items():
        normalizer = StainNormalizer(reference)
        source = normalizer.source_map(tiles)
        costs[f"{method}_map"] = _per_tile_ms(lambda n=normalizer, s=source: n.apply(tile, s))
        library = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        if method == "reinhard":
            library = torchstain.normalizers.ReinhardNormalizer(backend="torch")
        library.fit(as_tensor)
        call = (lambda lib=library: lib.normalize(as_tensor, stains=False)) if method == "macenko" else None
        costs[f"{method}_torchstain"] = _per_tile_ms(call or (lambda lib=library: lib.normalize(as_tensor)), 10)
    for name, ms in costs.items():
        print(f"one tile, one thread: {name:>20} {ms:7.3f} ms")
    results["per_tile_ms"] = costs
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
