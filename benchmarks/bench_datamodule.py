"""Training throughput through ``WSIDataModule`` against the same training step on batches already in memory.

Two ``lightning.Trainer.fit`` runs of a fresh RDFocal with the same settings (``max_steps``, precision, batch size),
timed by a callback from the end of the warm-up steps to the end of the last step:

a) **datamodule**: batches from ``WSIDataModule.train_dataloader()`` (tiles read from the slides by
   ``num_workers`` workers, labelled, collated, moved to the device by Lightning);
b) **in memory**: the same training step on a few real batches read beforehand from that loader and kept on the
   device (a DataLoader over the list of batches, no workers): the ceiling.

The ratio a/b is the issue's goal (at least 0.8). With ``--repeats N`` the two runs alternate N times and the
best of each is kept (use it on a machine shared with other work). Also printed, to explain a low ratio: the loader
alone (tiles/s with no model), one dataset item in the main process (ms per tile), and per step the time spent
inside the step against the time between steps (waiting for data, Lightning's bookkeeping).

Examples::

    python benchmarks/bench_datamodule.py                                     # CPU: 6 synthetic slides, 64 px
    python benchmarks/bench_datamodule.py --device cuda --backbone wide_resnet50_2 --tile-size 256 --mpp 0.5 \\
        --precision bf16 --batch-size 32 --num-workers 8 --slide-size 8192 --steps 100 --json dm_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import platform
import pstats
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

try:
    import anomalib_wsi  # noqa: F401
except ImportError:  # run from a checkout that is not installed (e.g. a bare GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import parse_bool, quiet_logs, select_device, work_folder

logger = logging.getLogger("bench_datamodule")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data")
    data.add_argument("--root", default=None, help="an existing cohort folder or manifest (default: synthesise)")
    data.add_argument("--slides", type=int, default=6, help="synthetic slides (half of them with tumour)")
    data.add_argument("--slide-size", type=int, default=4096, help="side of each synthetic slide in level-0 px")
    data.add_argument("--slide-mpp", type=float, default=0.5, help="level-0 µm/px of the synthetic slides")
    data.add_argument("--mpp", type=float, default=1.0, help="tile resolution in µm/px")
    data.add_argument("--tile-size", type=int, default=64, help="tile side in px, also the model's image size")
    data.add_argument("--normal-tiles-per-slide", type=int, default=300)
    data.add_argument("--tumour-tiles-per-slide", type=int, default=120)
    data.add_argument("--workdir", default=None, help="keep the synthetic cohort here (default: temp)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="resnet18", help="teacher backbone (the paper: wide_resnet50_2)")
    model.add_argument("--pre-trained", type=parse_bool, default=False, help="fetch ImageNet weights (needs hub)")
    model.add_argument("--channels-last", action="store_true")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--precision", default="32", choices=("32", "bf16", "16"))
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--num-workers", type=int, default=2)
    run.add_argument("--steps", type=int, default=20, help="timed training steps per run")
    run.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of each run")
    run.add_argument("--in-memory-batches", type=int, default=8, help="real batches kept for the in-memory run")
    run.add_argument("--repeats", type=int, default=1, help="runs of each path, alternated; the best is kept")
    run.add_argument("--loader-batches", type=int, default=20, help="batches of the loader-only measurement")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--profile", action="store_true", help="cProfile the main process of the datamodule run")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser


class _StepClock(lightning.Callback):
    """Start and end time and tile count of every training step (synchronised on CUDA)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.tiles: list[int] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Note the start of a step and its batch size."""
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.starts.append(time.perf_counter())
        self.tiles.append(len(batch.image))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Note the end of a step (after backward and the optimiser step)."""
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.ends.append(time.perf_counter())

    def figures(self, warmup: int) -> dict[str, Any]:
        """Tiles per second from the end of the warm-up steps to the end of the last step, and where time went."""
        starts, ends, tiles = np.array(self.starts), np.array(self.ends), np.array(self.tiles)
        if len(ends) <= warmup:
            msg = f"only {len(ends)} steps ran, not more than the {warmup} warm-up steps"
            raise RuntimeError(msg)
        seconds = ends[-1] - ends[warmup - 1] if warmup > 0 else ends[-1] - starts[0]
        timed = slice(warmup, None)
        inside = ends[timed] - starts[timed]
        between = starts[timed] - (ends[warmup - 1 : -1] if warmup > 0 else np.r_[starts[0], ends[:-1]])
        return {
            "steps": len(ends) - warmup,
            "tiles": int(tiles[timed].sum()),
            "seconds": float(seconds),
            "tiles_per_s": float(tiles[timed].sum() / seconds),
            "step_ms_mean": float(1000 * inside.mean()),
            "between_steps_ms_mean": float(1000 * between.mean()),
            "between_steps_ms_max": float(1000 * between.max()),
        }


class _Batches(Dataset):
    """Ready batches as a dataset (DataLoader with ``batch_size=None`` hands them over unchanged)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


def _same(batch: Any) -> Any:
    return batch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _model(args: argparse.Namespace) -> Any:
    from anomalib_wsi.models.rd_focal import RDFocal

    lightning.seed_everything(args.seed, verbose=False)
    return RDFocal(
        backbone=args.backbone,
        pre_trained=args.pre_trained,
        image_size=args.tile_size,
        visualizer=False,
        evaluator=False,
        channels_last=args.channels_last,
    )


def _trainer(args: argparse.Namespace, device: torch.device, clock: _StepClock) -> lightning.Trainer:
    precision = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[args.precision]
    return lightning.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=args.warmup_steps + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )


def _loader_only(datamodule: Any, n_batches: int) -> dict[str, Any]:
    """The training DataLoader alone: tiles per second with nothing else running (workers started included)."""
    start = time.perf_counter()
    tiles = 0
    first_s = None
    for i, batch in enumerate(datamodule.train_dataloader()):
        tiles += len(batch.image)
        if first_s is None:
            first_s = time.perf_counter() - start
        if i + 1 >= n_batches:
            break
    seconds = time.perf_counter() - start
    return {"tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds, "first_batch_s": first_s}


def _item_ms(datamodule: Any, n: int = 64) -> float:
    """Milliseconds per ``train_data[i]`` in this process (read, label, validate), the workers' cost per tile."""
    data = datamodule.train_data
    indices = np.random.default_rng(0).permutation(len(data))[:n]
    data[int(indices[0])]  # open the slides first
    start = time.perf_counter()
    for i in indices:
        data[int(i)]
    return 1000 * (time.perf_counter() - start) / len(indices)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table (and write JSON when asked).

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = _parser().parse_args(argv)
    quiet_logs()
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = select_device(args.device)
    if selected is None:
        return 2
    device = selected
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.data.synthetic import synthesize_cohort

    work, tmp = work_folder(args.workdir, "bench_datamodule_")
    try:
        root = Path(args.root) if args.root else work / "cohort"
        if args.root is None and not (root / "labels.csv").is_file():
            start = time.perf_counter()
            synthesize_cohort(root, n_slides=args.slides, seed=args.seed, size_px=args.slide_size, mpp=args.slide_mpp)
            logger.warning("synthesised %d slides in %.1f s", args.slides, time.perf_counter() - start)
        datamodule = WSIDataModule(
            root=root,
            mpp=args.mpp,
            tile_size_px=args.tile_size,
            normal_tiles_per_slide=args.normal_tiles_per_slide,
            tumour_tiles_per_slide=args.tumour_tiles_per_slide,
            train_batch_size=args.batch_size,
            num_workers=args.num_workers,
            cache_dir=work / "tile_cache",
            seed=args.seed,
        )
        with _quiet():
            datamodule.setup("fit")
        train = datamodule.train_data.samples
        n_train, n_tumour = len(train), int((train.label_index == 1).sum())
        hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        print(
            f"RDFocal {args.backbone} {args.tile_size}px @ {args.mpp:g} µm/px, batch {args.batch_size}, precision "
            f"{args.precision}, channels_last {args.channels_last}, workers {args.num_workers}\n{device} "
            f"({hardware}), torch {torch.__version__}, {torch.get_num_threads()} threads; {n_train} training tiles "
            f"({n_tumour} tumour) = {-(-n_train // args.batch_size)} steps per epoch; {args.warmup_steps} warm-up "
            f"+ {args.steps} timed steps per run",
            flush=True,
        )
        item_ms = _item_ms(datamodule)
        loader = _loader_only(datamodule, args.loader_batches)

        # b) needs real batches read beforehand, kept on the device, with at least one tumour tile among them
        # (full batches only: an epoch's last, smaller batch would be repeated in every in-memory epoch)
        batches: list[Any] = []
        has_tumour = False
        for _ in range(10):  # epochs, in case a few batches are not enough for one tumour tile
            for batch in datamodule.train_dataloader():
                if len(batch.image) == args.batch_size:
                    batches.append(move_data_to_device(batch, device))
                has_tumour = any(bool((b.gt_label == 1).any()) for b in batches)
                if len(batches) >= args.in_memory_batches and has_tumour:
                    break
            if len(batches) >= args.in_memory_batches and has_tumour:
                break
        if not batches:
            sys.stderr.write(f"no full batch of {args.batch_size} tiles: use a smaller --batch-size\n")
            return 2

        # alternate b) and a), so that a machine shared with other work disturbs both alike; keep the best of each
        profiler = cProfile.Profile() if args.profile else None
        runs: dict[str, list[dict[str, Any]]] = {"datamodule": [], "in_memory": []}
        for _ in range(args.repeats):
            clock = _StepClock()
            memory_loader = DataLoader(_Batches(batches), batch_size=None, shuffle=False, collate_fn=_same)
            with _quiet():
                _trainer(args, device, clock).fit(_model(args), train_dataloaders=memory_loader)
            runs["in_memory"].append(clock.figures(args.warmup_steps))
            clock = _StepClock()
            with _quiet():
                if profiler is not None:
                    profiler.enable()
                _trainer(args, device, clock).fit(_model(args), datamodule=datamodule)
                if profiler is not None:
                    profiler.disable()
            runs["datamodule"].append(clock.figures(args.warmup_steps))
        datamodule_run = max(runs["datamodule"], key=lambda r: r["tiles_per_s"])
        memory_run = max(runs["in_memory"], key=lambda r: r["tiles_per_s"])
        ratio = datamodule_run["tiles_per_s"] / memory_run["tiles_per_s"]
        figures = {
            "setup": {
                "device": str(device),
                "hardware": hardware,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "backbone": args.backbone,
                "tile_size_px": args.tile_size,
                "mpp": args.mpp,
                "batch_size": args.batch_size,
                "num_workers": args.num_workers,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "training_tiles": n_train,
                "tumour_tiles": n_tumour,
                "in_memory_batches": len(batches),
            },
            "item_ms": item_ms,
            "loader_only": loader,
            "datamodule": datamodule_run,
            "in_memory": memory_run,
            "ratio": ratio,
            "all_runs": runs,
        }
        print(f"\n{'path':<34}{'tiles':>7}{'seconds':>9}{'tiles/s':>9}{'step ms':>9}{'between ms':>12}")
        for label, run in (("a) fit, WSIDataModule loader", datamodule_run), ("b) fit, batches in memory", memory_run)):
            print(
                f"{label:<34}{run['tiles']:>7}{run['seconds']:>9.2f}{run['tiles_per_s']:>9.1f}"
                f"{run['step_ms_mean']:>9.1f}{run['between_steps_ms_mean']:>12.1f}"
            )
        print(
            f"{'loader alone (no model)':<34}{loader['tiles']:>7}{loader['seconds']:>9.2f}{loader['tiles_per_s']:>9.1f}"
            f"   (first batch {loader['first_batch_s']:.2f} s)"
        )
        print(f"one dataset item in the main process: {item_ms:.2f} ms")
        if args.repeats > 1:
            for key, values in runs.items():
                print(
                    f"{key} runs (tiles/s, the best is kept): " + ", ".join(f"{r['tiles_per_s']:.1f}" for r in values)
                )
        print(f"\nratio a/b {ratio:.2f} (goal >= 0.8)")
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            print(out.getvalue())
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
