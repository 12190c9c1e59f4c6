"""Tile loading alone: how fast WSIEngine's DataLoader delivers uint8 tiles, without a model.

Prints tiles/s of the prediction DataLoader (per-worker slide handles, pinned memory on GPU machines) for several
worker counts, measured from the first batch on (worker start-up reported apart), and the main process's own cost
per batch when the batch is only copied to the device. If these figures are below the bare model's tiles/s, the
end-to-end prediction is limited by reading, not by the GPU.

    python benchmarks/bench_tile_loader.py --slide-size 30000 --tile-size 256 --batch-size 128 --workers 8 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None, help="slide to read (default: a synthetic one)")
    parser.add_argument("--slide-size", type=int, default=8192)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_predict"))
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from anomalib_wsi.data.synthetic import synthesize_slide
    from anomalib_wsi.engine import _PredictTiles, _SlideJob
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    slide_path = args.slide or args.workdir / f"synth_{args.slide_size}.tif"
    if not slide_path.exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        synthesize_slide(slide_path, size_px=args.slide_size, mpp=0.5, seed=0, tumour=True)
        print(f"synthesised {slide_path.name} in {time.perf_counter() - start:.1f} s")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    slide = Slide(slide_path)
    plan = slide.plan_read(args.mpp, args.tile_size)
    table = tile_slide(slide, TilingConfig(mpp=args.mpp, tile_size_px=args.tile_size))
    job = _SlideJob(
        slide_path, slide.slide_id, None, args.workdir, plan, table, slide.dimensions, slide.mpp, 1.0, None, 1.0
    )  # type: ignore[arg-type]
    dataset = _PredictTiles([job])
    print(f"{slide_path.name}: {len(dataset)} tiles of {args.tile_size} px, batch {args.batch_size}, device {device}")

    start = time.perf_counter()
    for _ in range(min(200, len(dataset))):
        dataset[_]
    item_ms = 1000 * (time.perf_counter() - start) / min(200, len(dataset))
    print(f"one item in the main process: {item_ms:.2f} ms")

    results = {"tiles": len(dataset), "item_ms": item_ms, "loaders": {}}
    print(f"{'workers':>7} {'startup s':>9} {'tiles/s':>9} {'main ms/batch':>13}")
    for workers in args.workers:
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
        )
        start = time.perf_counter()
        first = None
        main_s = 0.0
        count = 0
        for batch in loader:
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                count += len(batch["image"])
            images = batch["image"].to(device, non_blocking=True).float().div_(255.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            main_s += time.perf_counter() - now
            del images
        end = time.perf_counter()
        rate = count / max(end - (first or end), 1e-9)
        batches = max(1, len(loader))
        print(f"{workers:>7} {(first or end) - start:>9.2f} {rate:>9.0f} {1000 * main_s / batches:>13.1f}")
        results["loaders"][workers] = {"startup_s": (first or end) - start, "tiles_per_s": rate}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
