"""Throughput of the RDFocal network: tiles per second for inference and for a training step.

Measures the bare network (teacher, bottleneck, student, anomaly map and tile score; no data loading, no
pre-processing) on random, already normalised tiles, in several settings: float32, bfloat16 autocast,
channels-last, optionally torch.compile. Training steps use the focal loss and Adam, as RDFocal does.

Examples::

    python benchmarks/bench_model.py                                   # resnet18, 128 px, CPU
    python benchmarks/bench_model.py --device cuda --backbone wide_resnet50_2 --size 256 --batch-size 32
    python benchmarks/bench_model.py --device cuda --backbone wide_resnet50_2 --size 256 --compile \\
        --modes fp32 bf16 cl-bf16 train-bf16 train-cl-bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

try:
    import anomalib_wsi  # noqa: F401
except ImportError:  # run from a checkout that is not installed (e.g. a bare GPU machine)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import parse_bool, select_device, synchronize

FORWARD_MODES = ("fp32", "bf16", "fp16", "cl-fp32", "cl-bf16")
TRAIN_MODES = ("train-fp32", "train-bf16", "train-cl-bf16")
DEFAULT_MODES = ("fp32", "bf16", "cl-fp32", "cl-bf16", "train-fp32", "train-bf16", "train-cl-bf16")

logger = logging.getLogger("bench_model")


@dataclass
class Result:
    """One measured setting."""

    mode: str
    tiles_per_s: float
    ms_per_batch: float
    peak_memory_gib: float | None
    compile_s: float | None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18", help="teacher backbone (the paper: wide_resnet50_2)")
    parser.add_argument("--size", type=int, default=128, help="tile side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--pre-trained", type=parse_bool, default=False, help="fetch ImageNet weights (needs the hub)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (compile time reported)")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=FORWARD_MODES + TRAIN_MODES)
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches (default: 2 CPU, 5 CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed batches (default: 5 CPU, 20 CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def _build(backbone: str, size: int, pre_trained: bool, channels_last: bool) -> torch.nn.Module:
    from anomalib_wsi.models.rd_focal import RDFocal

    model = RDFocal(
        backbone=backbone,
        pre_trained=pre_trained,
        pre_processor=RDFocal.configure_pre_processor(image_size=(size, size)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
        channels_last=channels_last,
    )
    return model.model


def _autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager[None]:
    if "bf16" in mode:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if "fp16" in mode:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[list[float | None]]:
    box: list[float | None] = [None]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield box
    if device.type == "cuda":
        box[0] = torch.cuda.max_memory_allocated(device) / 2**30


def _time(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    """Seconds per call after warm-up, and the duration of the first call when it is a compilation."""
    start = time.perf_counter()
    step()
    synchronize(device)
    first_s = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / iters, first_s


def _measure(mode: str, args: argparse.Namespace, device: torch.device, warmup: int, iters: int) -> Result:
    from anomalib_wsi.models.rd_focal import FocalCosineLoss

    network = _build(args.backbone, args.size, args.pre_trained, channels_last=mode.startswith(("cl-", "train-cl-")))
    network = network.to(device)
    runner: torch.nn.Module = torch.compile(network) if args.compile else network  # type: ignore[assignment]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator).to(device)
    labels = (torch.arange(args.batch_size) % 8 == 1).to(device)  # one tumour tile in eight

    if mode.startswith("train-"):
        network.train()
        criterion = FocalCosineLoss()
        parameters = [p for p in network.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=0.005, betas=(0.5, 0.999))

        def step() -> None:
            with _autocast(device, mode):
                encoder_features, decoder_features = runner(images)
                loss = criterion(encoder_features, decoder_features, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    else:
        network.eval()

        def step() -> None:
            with torch.inference_mode(), _autocast(device, mode):
                output = runner(images)
            assert output.pred_score is not None

    with _peak_memory(device) as peak:
        seconds, first_s = _time(step, device, warmup, iters)
    return Result(
        mode=mode,
        tiles_per_s=args.batch_size / seconds,
        ms_per_batch=1000 * seconds,
        peak_memory_gib=peak[0],
        compile_s=first_s if args.compile else None,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table (and write JSON when asked).

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = select_device(args.device)
    if selected is None:
        return 2
    device = selected
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 2)
    iters = args.iters if args.iters is not None else (20 if device.type == "cuda" else 5)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"RDFocal {args.backbone} {args.size}px batch {args.batch_size} on {device} ({hardware}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, compile {args.compile}, "
        f"warmup {warmup}, iters {iters}"
    )
    print(header)
    print(f"{'mode':<15}{'tiles/s':>10}{'ms/batch':>11}{'peak GiB':>10}{'compile s':>11}")
    results = []
    for mode in args.modes:
        if mode == "fp16" and device.type != "cuda":
            continue
        result = _measure(mode, args, device, warmup, iters)
        results.append(result)
        peak = f"{result.peak_memory_gib:.2f}" if result.peak_memory_gib is not None else "-"
        compiled = f"{result.compile_s:.1f}" if result.compile_s is not None else "-"
        print(f"{mode:<15}{result.tiles_per_s:>10.1f}{result.ms_per_batch:>11.1f}{peak:>10}{compiled:>11}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"setup": header, "results": [asdict(r) for r in results]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
