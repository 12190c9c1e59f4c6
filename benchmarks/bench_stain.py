"""Stain normalisation in the prediction tile loader: tiles/s with normalisation off, Macenko and Reinhard.

In one process, the engine's tile loader (``make_tile_loader``: DataLoader workers reading into the shared ring)
over the same synthetic slide, timed from the first batch to the last, the best of ``--repeats`` runs each:
``off`` (no normalisation), ``macenko`` and ``reinhard`` (each slide's colour map estimated by the worker from 16
of its tiles, then applied to every tile; Reinhard's through a colour table after 256 tiles) and
``macenko_device`` (the workers estimate the map, the device applies it: ``WSIEngine(stain_on="device")``, the
default on a GPU). The goal is macenko/off >= 0.8 on CPU. It also prints the per-tile costs in one thread:
reading a tile, the colour map applied to it, Macenko's map in torch on this CPU (what the device does, on a GPU
it is microseconds), and torchstain's own ``normalize`` (which fits the stain of every tile anew), the reason
the loader does not call torchstain per tile. The default slide holds 2,626 tissue tiles (a Camelyon16 slide
holds thousands to tens of thousands at 256 px, 0.5 µm/px): each slide's fixed costs (the stain fit, 40 ms, and
Reinhard's colour table, 0.5 s) are spread over them as in real use.

The synthetic tissue is smoother than real H&E, so its JPEG tiles decode a little faster than real ones and the
map weighs more against a read. ``--mosaic-of SLIDE`` benchmarks real tissue instead: the level 0 of a small
real slide (e.g. openslide's CMU-1-Small-Region.svs), mirrored and repeated to ``--slide-size`` and written like
the synthetic slides (256 px JPEG tiles, quality 90); ``--slide`` takes a slide of your own as it is.

    python benchmarks/bench_stain.py --slide-size 32768 --tile-size 256 --workers 1 --repeats 3
    python benchmarks/bench_stain.py --mosaic-of CMU-1-Small-Region.svs --slide-size 24576 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _loader_rate(jobs: list[Any], batch_size: int, workers: int, stain: Any, on_device: bool = False) -> float:
    from anomalib_wsi.inference.loader import make_tile_loader

    loader, _, ring = make_tile_loader(jobs, batch_size, workers, stain, on_device)
    batches = iter(loader)
    first = next(batches)
    ring.receive(first["batch"], first["count"])
    start, tiles = time.perf_counter(), 0
    for batch in batches:
        ring.receive(batch["batch"], batch["count"])
        tiles += batch["count"]
    return tiles / max(time.perf_counter() - start, 1e-9)


def _mosaic(source: Path, path: Path, size: int, mpp: float) -> None:
    """A ``size`` px square slide of real tissue: ``source``'s level 0 mirrored and repeated, written like the
    synthetic slides (pyramidal BigTIFF, 256 px JPEG tiles at quality 90), so that reads decode real H&E."""
    import cv2
    import numpy as np
    import openslide
    import tifffile

    with openslide.OpenSlide(str(source)) as handle:
        image = np.asarray(handle.read_region((0, 0), 0, handle.dimensions).convert("RGB"))
    row = np.concatenate([image, image[:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1]], axis=0)  # mirrored: no seams between the copies
    reps = (-(-size // block.shape[0]), -(-size // block.shape[1]), 1)
    level0 = np.ascontiguousarray(np.tile(block, reps)[:size, :size])
    options: dict[str, Any] = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 90},
                               "photometric": "rgb", "resolutionunit": "CENTIMETER", "metadata": None}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(level0, subfiletype=0, resolution=(1e4 / mpp, 1e4 / mpp), **options)
        factor = 2
        while size // factor >= 512:
            small = cv2.resize(level0, (size // factor, size // factor), interpolation=cv2.INTER_AREA)
            tif.write(small, subfiletype=1, resolution=(1e4 / (mpp * factor),) * 2, **options)
            factor *= 2


def _per_tile_ms(function: Any, repeats: int = 30) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide-size", type=int, default=32768)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_stain"))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--slide", type=Path, default=None, help="a slide of your own instead of the synthetic one")
    source.add_argument(
        "--mosaic-of", type=Path, default=None, help="a real slide whose tissue, repeated, makes the benchmark slide"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch
    import torchstain

    from anomalib_wsi.data.stain import TABLE_COLOURS, StainNormalizer, fit_reference, od_maps_on_device
    from anomalib_wsi.data.synthetic import synthesize_slide
    from anomalib_wsi.inference.loader import SlideJob
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if args.slide is not None:
        path = args.slide
    elif args.mosaic_of is not None:
        path = args.workdir / f"mosaic_{args.mosaic_of.stem}_{args.slide_size}.tif"
        if not path.exists():
            _mosaic(args.mosaic_of, path, args.slide_size, 0.5)
    else:
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
    modes = {
        "off": (None, False),
        "macenko": (references["macenko"], False),
        "macenko_device": (references["macenko"], True),
        "reinhard": (references["reinhard"], False),
    }
    rates = dict.fromkeys(modes, 0.0)
    for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every method
        for method, (stain, on_device) in modes.items():
            rates[method] = max(rates[method], _loader_rate(jobs, args.batch_size, args.workers, stain, on_device))
    for method, rate in rates.items():
        print(f"loader {method:>14}: {rate:8.0f} tiles/s   ratio to off {rate / rates['off']:.2f}")
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
        normalizer = StainNormalizer(reference, colour_table=True)
        source = normalizer.source_map(tiles)
        costs[f"{method}_map"] = _per_tile_ms(lambda n=normalizer, s=source: n.apply(tile, s))
        if method == "reinhard" and source is not None:
            normalizer._count(source, TABLE_COLOURS)  # what a slide's tiles after its 256th go through
            costs["reinhard_table"] = _per_tile_ms(lambda n=normalizer, s=source: n.apply(tile, s))
        if method == "macenko" and source is not None and source.od_matrix is not None:
            batch = torch.from_numpy(np.stack([tile] * args.batch_size))
            maps = torch.from_numpy(np.stack([source.od_matrix] * args.batch_size))
            per_batch = _per_tile_ms(lambda b=batch, m=maps: od_maps_on_device(b, m), 5)
            costs["macenko_torch_cpu"] = per_batch / args.batch_size
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
