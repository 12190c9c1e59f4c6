"""Tile loading alone: how fast WSIEngine's DataLoader delivers uint8 tiles, without a model.

Prints tiles/s of the prediction DataLoader (per-worker slide handles) for several worker counts, measured from the
first batch on (worker start-up reported apart), the main process's own cost per batch when the batch is only
copied to the device and made float, and the CPU time the main thread spends receiving a batch. Two loaders:
``ring`` (the engine's: workers read into reusable shared slots, page-locked on CUDA, and hand over batch
numbers) and ``fresh`` (the DataLoader's default: a new shared-memory batch each time, pinned by its pin-memory
thread). If these figures are below the bare model's tiles/s, the
end-to-end prediction is limited by reading, not by the GPU.

    python benchmarks/bench_tile_loader.py --slide-size 30000 --tile-size 256 --batch-size 128 --workers 8 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

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
    from anomalib_wsi.inference.loader import SlideJob, TileBatches
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
    job = SlideJob(
        slide_path, slide.slide_id, None, args.workdir, plan, table, slide.dimensions, slide.mpp, 1.0, None, 1.0
    )  # type: ignore[arg-type]
    dataset = TileBatches([job], args.batch_size)
    print(
        f"{slide_path.name}: {dataset.n_tiles} tiles of {args.tile_size} px, batch {args.batch_size}, device {device}"
    )

    start = time.perf_counter()
    dataset[0]
    item_ms = 1000 * (time.perf_counter() - start) / min(args.batch_size, dataset.n_tiles)
    print(f"one tile in the main process: {item_ms:.2f} ms")

    results: dict[str, Any] = {"tiles": dataset.n_tiles, "item_ms": item_ms, "loaders": {}}
    print(f"{'loader':>6} {'workers':>7} {'startup s':>9} {'tiles/s':>9} {'main ms/batch':>13} {'receive CPU ms':>14}")
    for workers in args.workers:
        for mode in ("ring", "fresh"):
            row = _run_loader(dataset, args, device, workers, mode)
            print(
                f"{mode:>6} {workers:>7} {row['startup_s']:>9.2f} {row['tiles_per_s']:>9.0f} "
                f"{row['main_ms_per_batch']:>13.1f} {row['receive_cpu_ms_per_batch']:>14.2f}"
            )
            results["loaders"][f"{mode}_{workers}"] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _run_loader(
    dataset: Any, args: argparse.Namespace, device: torch.device, workers: int, mode: str
) -> dict[str, float]:
    """One pass over the slide: ``ring`` as the engine reads (shared slots, batch numbers handed over), ``fresh``
    the DataLoader's default (a new shared-memory batch each time, pinned by its pin-memory thread on CUDA)."""
    from anomalib_wsi.inference.loader import TileRing, pass_through

    prefetch = 2
    for handle in dataset._handles.values():  # no pass starts with the previous pass's decoded tiles cached
        handle.close()
    dataset._handles = {}
    ring = None
    if mode == "ring":
        ring = TileRing(min(len(dataset), prefetch * max(1, workers) + 2), args.batch_size, args.tile_size)
    dataset.ring = ring
    loader = DataLoader(
        dataset,
        batch_size=None,
        collate_fn=pass_through,
        num_workers=workers,
        pin_memory=device.type == "cuda" and ring is None,
        prefetch_factor=prefetch if workers > 0 else None,
    )
    start = time.perf_counter()
    first = None
    main_s = receive_cpu_s = 0.0
    count = 0
    batches_iter = iter(loader)
    if ring is not None:
        ring.register(device)
    while True:
        cpu_before = time.thread_time()  # CPU of the main thread only: waiting for workers costs none
        batch = next(batches_iter, None)
        receive_cpu_s += time.thread_time() - cpu_before
        if batch is None:
            break
        now = time.perf_counter()
        if first is None:
            first = now
        else:
            count += batch["count"]
        tiles = ring.receive(batch["batch"], batch["count"]) if ring is not None else batch["image"]
        images = tiles.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        main_s += time.perf_counter() - now
        del images
    end = time.perf_counter()
    del batches_iter
    if ring is not None:
        ring.unregister()
    dataset.ring = None
    batches = max(1, len(loader))
    return {
        "startup_s": (first or end) - start,
        "tiles_per_s": count / max(end - (first or end), 1e-9),
        "main_ms_per_batch": 1000 * main_s / batches,
        "receive_cpu_ms_per_batch": 1000 * receive_cpu_s / batches,
    }


if __name__ == "__main__":
    main()
