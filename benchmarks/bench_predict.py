"""Slide prediction throughput: ``WSIEngine.predict`` end to end against the bare model and anomalib's stock path.

In one process, with the same checkpoint, batch size and precision, it measures

a) **bare**: the model on tiles already in memory as a uint8 tensor on the device, through the engine's own
   ``TileForward`` (float/255, pre-processor, channels-last, autocast, scores back to the CPU): the ceiling;
b) **engine**: ``WSIEngine(...).predict(slides=[slide])`` on a synthetic (or given) slide: the whole call
   (checkpoint loading, tissue detection, tiling, reading, the model, stitching, lesions, output files) and the
   streaming rate the engine reports (``PredictionRun.tiles_per_second``); the ratio b/a is the issue's goal
   (CPU + tiny backbone: at least 0.7; GPU + wide_resnet50_2 at 256 px in bf16: at least 0.8). A warm-up
   prediction of the same slide runs first (compilation, cuDNN autotuning, the last partial batch's shape); with
   ``--repeats N`` the engine runs N times with a bare measurement before and after each, and the best is kept;
c) **stock**: anomalib's ``Engine().predict(data_path=folder)`` on the same tiles exported as PNG files (batch size
   1, no workers, as anomalib builds that loader; the model's visualizer is off, so no PNG is written per tile);
d) **memory** of the slide post-processing for a Camelyon16-sized slide (default 100k x 220k px at 0.243 µm/px)
   without writing such a slide: random scores for every grid cell stream through ``HeatmapAccumulator``, then
   ``WSIPostProcessor.process_slide`` and ``render_heatmap_png``; peak RSS is measured in a fresh subprocess so
   that the model and the earlier runs do not count (tile reading itself is streaming, bounded by
   batch size x prefetch).

Examples::

    python benchmarks/bench_predict.py --slide-size 4096 --tile-size 64 --stock-tiles 100      # CPU smoke check
    python benchmarks/bench_predict.py --device cuda --backbone wide_resnet50_2 --tile-size 256 --precision bf16 \\
        --slide-size 30000 --batch-size 64 --num-workers 8 --channels-last --json predict_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

try:
    import anomalib_wsi  # noqa: F401
except ImportError:  # run from a checkout that is not installed (e.g. a bare GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import parse_bool, quiet_logs, select_device, synchronize, work_folder

logger = logging.getLogger("bench_predict")

#: Camelyon16's largest slides are about 98k x 221k level-0 px at 0.243 µm/px.
CAMELYON_SIZE_LV0 = (100_000, 220_000)
CAMELYON_MPP = 0.243


# -- small helpers ------------------------------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) <= 0:
        msg = f"expected WIDTHxHEIGHT in pixels, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values  # type: ignore[return-value]


def _max_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size so far, in MiB.

    For this process: ``VmHWM`` from ``/proc/self/status`` where there is one (Linux), since ``ru_maxrss`` carries
    the parent's peak across ``fork``/``exec``; else and for children ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    if who == resource.RUSAGE_SELF:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    value = resource.getrusage(who).ru_maxrss
    return value / (2**20 if sys.platform == "darwin" else 2**10)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the expected warnings (no normalisation statistics, no ckpt, Lightning tips) while timing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("slide")
    data.add_argument("--slide", default=None, help="predict this slide instead of a synthetic one")
    data.add_argument("--slide-size", type=int, default=8192, help="side of the synthetic slide in level-0 px")
    data.add_argument("--slide-mpp", type=float, default=0.5, help="level-0 µm/px of the synthetic slide")
    data.add_argument("--mpp", type=float, default=None, help="tile resolution (default: the slide's level 0)")
    data.add_argument("--tile-size", type=int, default=256, help="tile side in px, also the model's image size")
    data.add_argument("--min-tissue", type=float, default=0.25)
    data.add_argument("--workdir", default=None, help="keep slide, checkpoint and outputs here (default: temp)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="resnet18", help="teacher backbone (the paper: wide_resnet50_2)")
    model.add_argument("--pre-trained", type=parse_bool, default=False, help="fetch ImageNet weights (needs hub)")
    model.add_argument("--weights-path", default=None, help="local teacher weights instead of the hub")
    model.add_argument("--channels-last", action="store_true", help="channels-last model")
    model.add_argument(
        "--cells-per-tile", type=int, default=1, help="heatmap cells per tile side (>1: anomaly maps are stitched)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    run.add_argument("--precision", default="32", choices=("32", "bf16", "16"))
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--num-workers", type=int, default=2)
    run.add_argument("--compile", action="store_true", help="torch.compile (a failure is reported, not fatal)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--bare-iters", type=int, default=None, help="timed bare batches (default: 5 CPU, 50 CUDA)")
    run.add_argument("--repeats", type=int, default=1, help="engine runs (bare before and after each); best kept")
    run.add_argument(
        "--warmup-size",
        type=int,
        default=0,
        help="side of a small synthetic slide for the warm-up prediction (0: warm up on the measured slide itself, "
        "so that the last, partial batch is compiled and autotuned before the timed run)",
    )
    run.add_argument("--stock-tiles", type=int, default=500, help="tiles for anomalib's stock path (slow)")
    run.add_argument("--skip-stock", action="store_true", help="skip anomalib's stock path")
    run.add_argument("--skip-memory", action="store_true", help="skip the Camelyon16-sized memory measurement")
    run.add_argument("--memory-slide", type=_parse_size, default=CAMELYON_SIZE_LV0, help="WxH level-0 px")
    run.add_argument("--memory-slide-mpp", type=float, default=CAMELYON_MPP)
    run.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--_memory-only", dest="memory_only", default=None, help=argparse.SUPPRESS)
    return parser


# -- set-up -------------------------------------------------------------------------------------------------------
def _make_slide(path: Path, size_px: int, mpp: float, seed: int) -> Path:
    from anomalib_wsi.data.synthetic import synthesize_slide

    if not path.is_file():
        start = time.perf_counter()
        synthesize_slide(path, size_px=size_px, mpp=mpp, seed=seed, tumour=True)
        logger.warning("synthesised %s (%d px) in %.1f s", path.name, size_px, time.perf_counter() - start)
    return path


def _build_checkpoint(args: argparse.Namespace, path: Path) -> Path:
    """An untrained RDFocal saved as a Lightning checkpoint (what ``anomalib train`` writes)."""
    from anomalib_wsi.models.rd_focal import RDFocal
    from anomalib_wsi.post_processing.post_processor import WSIPostProcessor

    model = RDFocal(
        backbone=args.backbone,
        post_processor=WSIPostProcessor(heatmap_cells_per_tile=args.cells_per_tile),
        pre_trained=args.pre_trained,
        weights_path=args.weights_path,
        anomaly_map_mode="add",  # a plain string: the enum default does not load with weights_only=True
        image_size=args.tile_size,
        visualizer=False,
        channels_last=args.channels_last,
    )
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def _tile_table(slide_path: Path, args: argparse.Namespace, mpp: float, cache_dir: Path) -> Any:
    from anomalib_wsi.slide.tiling import TilingConfig, load_or_tile

    config = TilingConfig(mpp=mpp, tile_size_px=args.tile_size, min_tissue=args.min_tissue)
    table, _ = load_or_tile(slide_path, config, cache_dir)
    return table


def _read_tiles(slide_path: Path, table: Any, mpp: float, tile_size: int, n: int) -> torch.Tensor:
    """The first ``n`` tiles of the table as a uint8 (n, H, W, 3) tensor, as the engine's loader delivers them."""
    from anomalib_wsi.slide.reader import Slide

    with Slide(slide_path) as slide:
        plan = slide.plan_read(mpp, tile_size)
        tiles = [slide.read_tile(int(x), int(y), plan) for x, y in zip(table.x[:n], table.y[:n], strict=True)]
    return torch.from_numpy(np.stack(tiles))


# -- a) bare model ------------------------------------------------------------------------------------------------
def _bare(
    module: Any, device: torch.device, args: argparse.Namespace, tiles_u8: torch.Tensor, compile_model: bool
) -> dict[str, Any]:
    from anomalib_wsi.inference.forward import TileForward

    cells = int(getattr(module.post_processor, "heatmap_cells_per_tile", 1) or 1)
    forward = TileForward(
        module, device, args.precision, compile_model, None, args.batch_size, cells if cells > 1 else 0
    )
    batch = tiles_u8[: args.batch_size]
    if len(batch) < args.batch_size:  # a small slide: repeat tiles up to one batch
        batch = batch.repeat((args.batch_size + len(batch) - 1) // len(batch), 1, 1, 1)[: args.batch_size]
    batch = batch.to(device)
    iters = args.bare_iters or (50 if device.type == "cuda" else 5)
    warmup = 10 if device.type == "cuda" else 2
    start = time.perf_counter()
    forward(batch)  # the scores come back to the CPU: this synchronises
    first_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        forward(batch)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        forward(batch)
    synchronize(device)
    seconds = time.perf_counter() - start
    del forward, batch
    module.to("cpu")  # free the device for the engine's own copy of the model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "tiles_per_s": iters * args.batch_size / seconds,
        "ms_per_batch": 1000 * seconds / iters,
        "first_batch_s": first_s,
        "iters": iters,
    }


# -- b) engine ----------------------------------------------------------------------------------------------------
def _engine_predict(
    ckpt: Path, slide: Path, out_dir: Path, args: argparse.Namespace, device: torch.device, compile_model: bool
) -> dict[str, Any]:
    from anomalib_wsi.inference import WSIEngine
    from anomalib_wsi.models.rd_focal import RDFocal

    engine = WSIEngine(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=str(device),
        precision=args.precision,
        compile_model=compile_model,
        progress=False,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with _quiet():
        results = engine.predict(
            model=RDFocal,
            ckpt_path=ckpt,
            slides=[slide],
            output_dir=out_dir,
            mpp=args.mpp_used,
            tile_size_px=args.tile_size,
            min_tissue=args.min_tissue,
        )
    seconds = time.perf_counter() - start
    if results.failures or not results:
        msg = f"prediction failed: {results.failures}"
        raise RuntimeError(msg)
    result = results[0]
    return {
        "tiles": result.n_tiles,
        "call_s": seconds,
        "tiles_per_s_call": result.n_tiles / seconds,
        "tiles_per_s_stream": results.tiles_per_second,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "main_process_s": {k: round(v, 3) for k, v in results.stage_seconds.items()},
        "heatmap_shape": list(result.heatmap.values.shape),
        "cuda_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


# -- c) anomalib's stock path -------------------------------------------------------------------------------------
class _BatchClock(lightning.Callback):
    """Time from the first predict batch's start to the last one's end (the steady state, set-up excluded)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.batches = 0

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """Note the start of the first batch."""
        if self.first is None:
            self.first = time.perf_counter()

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Note the end of the latest batch."""
        self.last = time.perf_counter()
        self.batches += 1


def _stock(ckpt: Path, tiles_u8: torch.Tensor, work: Path, args: argparse.Namespace, device: torch.device) -> dict:
    import cv2
    from anomalib.engine import Engine

    from anomalib_wsi.models.rd_focal import RDFocal

    folder = work / "stock_png"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, tile in enumerate(tiles_u8.numpy()):
        cv2.imwrite(str(folder / f"tile_{i:06d}.png"), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
    n = len(tiles_u8)
    with _quiet():
        model = RDFocal.load_from_checkpoint(ckpt, map_location="cpu", visualizer=False)
    precision = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[args.precision]
    clock = _BatchClock()
    engine = Engine(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision,
        default_root_dir=work / "stock_results",
        logger=False,
        enable_progress_bar=False,
        callbacks=[clock],
    )
    start = time.perf_counter()
    with _quiet():
        predictions = engine.predict(model=model, data_path=folder, ckpt_path=ckpt)
    seconds = time.perf_counter() - start
    batches: list[Any] = list(predictions or [])
    scored = sum(len(batch.pred_score) for batch in batches)
    steady = (clock.batches - 1) / (clock.last - clock.first) if clock.first and clock.batches > 1 else float("nan")
    return {
        "tiles": n,
        "scored": scored,
        "call_s": seconds,
        "tiles_per_s_call": n / seconds,
        "tiles_per_s_stream": steady,  # batch size 1: batches == tiles
        "visualizer": "off",
    }


# -- d) memory of a Camelyon16-sized slide ------------------------------------------------------------------------
def _memory_only(spec: str) -> int:
    """Child process: post-process a big slide's heatmap from random scores; print one JSON line."""
    from anomalib_wsi.post_processing import HeatmapAccumulator
    from anomalib_wsi.post_processing.post_processor import WSIPostProcessor
    from anomalib_wsi.post_processing.render import render_heatmap_png

    opts = json.loads(spec)
    width, height = opts["size"]
    mpp, tile_size, tile_mpp, batch = opts["mpp"], opts["tile_size"], opts["tile_mpp"], opts["batch_size"]
    cells = opts["cells_per_tile"]
    out: dict[str, Any] = {"rss_after_imports_mib": _max_rss_mib()}
    tile_lv0 = tile_size * tile_mpp / mpp
    stride_lv0 = tile_lv0
    acc = HeatmapAccumulator((width, height), tile_lv0, stride_lv0, cells)
    out["heatmap_shape"] = list(acc.shape)
    xs = np.arange(0, width - tile_lv0 + 1, stride_lv0)
    ys = np.arange(0, height - tile_lv0 + 1, stride_lv0)
    out["grid_tiles"] = int(xs.size * ys.size)
    rng = np.random.default_rng(0)
    grid_x, grid_y = np.meshgrid(xs, ys)
    gx, gy = grid_x.ravel(), grid_y.ravel()
    del grid_x, grid_y
    # background noise plus three smooth tumour-like blobs, so lesions are few and realistic
    scores = (0.2 + 0.1 * rng.random(gx.size)).astype(np.float32)
    for fx, fy, fr in ((0.3, 0.25, 0.06), (0.7, 0.55, 0.03), (0.5, 0.8, 0.09)):
        dist = np.hypot(gx - fx * width, gy - fy * height)
        scores += (0.7 * np.exp(-((dist / (fr * width)) ** 2))).astype(np.float32)
    maps_shape = (batch, tile_size, tile_size)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(0, gx.size, batch):
        sl = slice(i, i + batch)
        maps = None
        if cells > 1:
            n = len(scores[sl])
            maps = np.broadcast_to(scores[sl, None, None], (n, *maps_shape[1:]))
        acc.add(gx[sl], gy[sl], scores[sl], maps)
    timings["stitch_s"] = time.perf_counter() - start
    del gx, gy, scores
    heatmap = acc.result()
    out["rss_after_stitch_mib"] = _max_rss_mib()
    start = time.perf_counter()
    post = WSIPostProcessor(heatmap_cells_per_tile=cells)
    with _quiet():
        result = post.process_slide(heatmap, mpp)
    timings["process_slide_s"] = time.perf_counter() - start
    out["lesions"] = len(result.lesions)
    out["detections"] = len(result.detections)
    out["rss_after_process_mib"] = _max_rss_mib()
    thumb_ds = max(width, height) / 4096  # what read_thumbnail(max_side=4096) gives for such a slide
    thumbnail = rng.integers(150, 255, (round(height / thumb_ds), round(width / thumb_ds), 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        np.save(Path(tmp) / "heatmap.npy", result.heatmap.values.astype(np.float32))
        render_heatmap_png(Path(tmp) / "heatmap.png", result.heatmap, thumbnail, thumb_ds, lesions=result.lesions)
        timings["write_s"] = time.perf_counter() - start
    out["rss_peak_mib"] = _max_rss_mib()
    out["timings"] = {k: round(v, 3) for k, v in timings.items()}
    print(json.dumps(out))
    return 0


def _memory(args: argparse.Namespace, cells: int) -> dict[str, Any]:
    spec = {
        "size": list(args.memory_slide),
        "mpp": args.memory_slide_mpp,
        "tile_size": args.tile_size,
        "tile_mpp": args.mpp_used,
        "batch_size": args.batch_size,
        "cells_per_tile": cells,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--_memory-only", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"memory subprocess failed ({done.returncode}): {done.stderr.strip()[-500:]}"
        raise RuntimeError(msg)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(spec)
    return result


# -- main ---------------------------------------------------------------------------------------------------------
def _try(label: str, func: Callable[[], dict[str, Any]], errors: dict[str, str]) -> dict[str, Any] | None:
    try:
        return func()
    except Exception as err:  # a benchmark reports what failed and goes on
        errors[label] = _first_line(err)
        logger.debug("%s failed", label, exc_info=True)
        sys.stderr.write(f"{label} failed: {errors[label]}\n")
        if logger.isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        return None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den or not np.isfinite(num) or not np.isfinite(den):
        return None
    return num / den


def _rate(figures: dict[str, Any] | None, key: str) -> float | None:
    return None if figures is None else figures.get(key)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def _print_report(figures: dict[str, Any], args: argparse.Namespace, device: torch.device) -> None:
    """Print the table of rates, the ratios and the memory figures."""
    bare, engine, stock, memory = (figures.get(k) for k in ("bare", "engine", "stock", "memory"))
    ratios, errors, compile_model = figures["ratios"], figures["errors"], figures["compiled"]
    what = f"{args.warmup_size} px slide" if args.warmup_size else "the same slide"
    print(f"warm-up prediction ({what}, compile {compile_model}): {figures['warmup_s']:.1f} s")
    print(f"\n{'path':<40}{'tiles':>8}{'seconds':>10}{'tiles/s':>10}")
    if bare:
        print(
            f"{'a) bare model (tiles on device)':<40}{bare['iters'] * args.batch_size:>8}"
            f"{bare['iters'] * bare['ms_per_batch'] / 1000:>10.2f}{bare['tiles_per_s']:>10.1f}"
            f"   (best of {', '.join(f'{v:.1f}' for v in bare['all_tiles_per_s'])})"
        )
    if engine:
        print(
            f"{'b) WSIEngine.predict, whole call':<40}{engine['tiles']:>8}{engine['call_s']:>10.2f}"
            f"{engine['tiles_per_s_call']:>10.1f}"
        )
        print(
            f"{'b) WSIEngine, streaming (last_tiles/s)':<40}{engine['tiles']:>8}{'':>10}"
            f"{engine['tiles_per_s_stream']:>10.1f}"
            f"   (best of {', '.join(f'{v:.1f}' for v in engine['all_tiles_per_s_stream'])})"
        )
        print(f"   stages: {engine['timings']}")
        print(f"   main process while streaming (s): {engine['main_process_s']}")
    if stock:
        print(
            f"{'c) anomalib Engine.predict(data_path)':<40}{stock['tiles']:>8}{stock['call_s']:>10.2f}"
            f"{stock['tiles_per_s_call']:>10.1f}"
        )
        print(f"{'c) anomalib, steady batches':<40}{stock['tiles']:>8}{'':>10}{_fmt(stock['tiles_per_s_stream']):>10}")
    print("\nratios: " + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in ratios.items()))
    goal = 0.8 if device.type == "cuda" else 0.7
    reached = ratios["engine_stream/bare"]
    print(f"goal engine/bare >= {goal} on {device.type}: {'-' if reached is None else f'{reached:.2f}'}")
    if engine:
        cuda = engine["cuda_peak_gib"]
        print(
            f"memory of the prediction: RSS peak {engine['rss_peak_mib']:.0f} MiB (before it "
            f"{engine['rss_peak_before_mib']:.0f}), largest worker {engine['workers_rss_peak_mib']:.0f} MiB"
            + (f", CUDA peak {cuda:.2f} GiB" if cuda is not None else "")
        )
    if memory:
        w, h = memory["size"]
        print(
            f"d) {w}x{h} px slide at {memory['mpp']} µm/px: {memory['grid_tiles']} tiles, heatmap "
            f"{memory['heatmap_shape'][0]}x{memory['heatmap_shape'][1]}, {memory['lesions']} lesions; RSS "
            f"after imports {memory['rss_after_imports_mib']:.0f} MiB, after stitching "
            f"{memory['rss_after_stitch_mib']:.0f}, peak {memory['rss_peak_mib']:.0f} MiB; {memory['timings']}"
        )
    if errors:
        print("errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table (and write JSON when asked).

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status (0, or 1 when the engine's end-to-end run failed).
    """
    args = _parser().parse_args(argv)
    if args.memory_only is not None:
        return _memory_only(args.memory_only)
    quiet_logs()
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = select_device(args.device)
    if selected is None:
        return 2
    device = selected

    from anomalib_wsi.inference import load_model
    from anomalib_wsi.models.rd_focal import RDFocal
    from anomalib_wsi.slide.reader import Slide

    work, tmp = work_folder(args.workdir, "bench_predict_")
    errors: dict[str, str] = {}
    figures: dict[str, Any] = {}
    try:
        slide = (
            Path(args.slide)
            if args.slide
            else _make_slide(work / f"synth_{args.slide_size}.tif", args.slide_size, args.slide_mpp, 7)
        )
        warm_slide = (
            _make_slide(work / f"warmup_{args.warmup_size}.tif", args.warmup_size, args.slide_mpp, 8)
            if args.warmup_size
            else slide
        )
        with Slide(slide) as handle:
            slide_size, slide_mpp = handle.dimensions, handle.mpp
        args.mpp_used = float(args.mpp if args.mpp is not None else slide_mpp)
        ckpt = _build_checkpoint(args, work / "model.ckpt")
        with _quiet():
            module, _ = load_model(RDFocal, ckpt)  # the engine's own loader: the checkpoint must load
        table = _tile_table(slide, args, args.mpp_used, work / "tile_cache")
        n_tiles = len(table)
        if n_tiles == 0:
            sys.stderr.write(f"{slide}: no tissue tiles at these settings\n")
            return 2
        hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        setup = {
            "device": str(device),
            "hardware": hardware,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "backbone": args.backbone,
            "tile_size_px": args.tile_size,
            "tile_mpp": args.mpp_used,
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "heatmap_cells_per_tile": args.cells_per_tile,
            "slide": str(slide),
            "slide_size_lv0": list(slide_size),
            "slide_mpp": slide_mpp,
            "tiles": n_tiles,
        }
        figures["setup"] = setup
        print(
            f"RDFocal {args.backbone} {args.tile_size}px @ {args.mpp_used:g} µm/px, batch {args.batch_size}, "
            f"{args.cells_per_tile} heatmap cells per tile side, "
            f"precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}, "
            f"workers {args.num_workers}\n{device} ({hardware}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; slide {slide.name} {slide_size[0]}x{slide_size[1]} px, "
            f"{n_tiles} tissue tiles",
            flush=True,
        )
        n_mem = min(n_tiles, max(args.batch_size, args.stock_tiles if not args.skip_stock else 0))
        tiles_u8 = _read_tiles(slide, table, args.mpp_used, args.tile_size, n_mem)

        # warm-up prediction (torch.compile, cuDNN autotuning, worker start-up code paths, file caches)
        compile_model = args.compile
        start = time.perf_counter()
        warm = _try(
            "warm-up",
            lambda: _engine_predict(ckpt, warm_slide, work / "out_warmup", args, device, compile_model),
            errors,
        )
        if warm is None and compile_model:
            errors["compile"] = errors.pop("warm-up")
            sys.stderr.write("torch.compile failed: measuring without it\n")
            compile_model = False
            warm = _try(
                "warm-up",
                lambda: _engine_predict(ckpt, warm_slide, work / "out_warmup2", args, device, False),
                errors,
            )
        figures["warmup_s"] = time.perf_counter() - start
        figures["compiled"] = compile_model

        # bare before and after each engine run, so that a machine shared with other work disturbs both alike;
        # the best of each is kept
        bares: list[dict[str, Any]] = []
        engines: list[dict[str, Any]] = []
        rss_before = _max_rss_mib()
        for repeat in range(args.repeats + 1):
            result = _try("bare", lambda: _bare(module, device, args, tiles_u8, compile_model), errors)
            if result is not None:
                bares.append(result)
            if repeat == args.repeats:
                break
            out_dir = work / f"out_engine_{repeat}"
            run = functools.partial(_engine_predict, ckpt, slide, out_dir, args, device, compile_model)
            result = _try("engine", run, errors)
            if result is not None:
                engines.append(result)
        rss_after = _max_rss_mib()
        bare = max(bares, key=lambda r: r["tiles_per_s"]) if bares else None
        if bare is not None:
            bare["all_tiles_per_s"] = [r["tiles_per_s"] for r in bares]
        engine = max(engines, key=lambda r: r["tiles_per_s_stream"]) if engines else None
        if engine is not None:
            engine["all_tiles_per_s_stream"] = [r["tiles_per_s_stream"] for r in engines]
        figures["bare"] = bare
        if engine is not None:
            engine["rss_peak_mib"] = rss_after
            engine["rss_peak_before_mib"] = rss_before
            engine["workers_rss_peak_mib"] = _max_rss_mib(resource.RUSAGE_CHILDREN)
        figures["engine"] = engine
        stock = None
        if not args.skip_stock:
            n_stock = min(args.stock_tiles, len(tiles_u8))
            stock = _try("stock", lambda: _stock(ckpt, tiles_u8[:n_stock], work, args, device), errors)
        figures["stock"] = stock
        memory = None
        if not args.skip_memory:
            cells = int(getattr(module.post_processor, "heatmap_cells_per_tile", 1) or 1)
            memory = _try("memory", lambda: _memory(args, cells), errors)
        figures["memory"] = memory

        ratios = {
            "engine_stream/bare": _ratio(_rate(engine, "tiles_per_s_stream"), _rate(bare, "tiles_per_s")),
            "engine_call/bare": _ratio(_rate(engine, "tiles_per_s_call"), _rate(bare, "tiles_per_s")),
            "engine_call/stock_call": _ratio(_rate(engine, "tiles_per_s_call"), _rate(stock, "tiles_per_s_call")),
            "engine_stream/stock_stream": _ratio(
                _rate(engine, "tiles_per_s_stream"), _rate(stock, "tiles_per_s_stream")
            ),
        }
        figures["ratios"] = ratios
        figures["errors"] = errors

        _print_report(figures, args, device)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
        return 0 if engine is not None else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
