"""The ``anomalib-wsi`` command: synth, tile, predict, evaluate, demo, benchmark.

Sub-commands are built with jsonargparse, as anomalib's own CLI is. Each one is a thin layer over a Python
function, imported only when its sub-command runs so that ``anomalib-wsi --help`` stays fast. A user mistake
(a :class:`~anomalib_wsi.errors.WSIError`) prints one line and exits with status 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser

from anomalib_wsi.errors import WSIError

__all__ = ["build_parser", "main"]


def _synth_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write a synthetic cohort: pyramidal H&E-like TIFFs and Camelyon16-style ASAP XML.")
    p.add_argument("--output", required=True, help="folder to write slides/, annotations/ and labels.csv into")
    p.add_argument("--slides", type=int, default=6, help="number of slides (about half carry tumour)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same cohort")
    p.add_argument("--size", type=int, default=8192, help="side of each slide in level-0 pixels")
    p.add_argument("--mpp", type=float, default=0.5, help="level-0 resolution written into the TIFF (0.25 or 0.5)")
    return p


def _tile_parser() -> ArgumentParser:
    p = ArgumentParser(description="Detect tissue and tile slides; writes DIR/<slide_id>/tiles.csv and tissue.png.")
    p.add_argument("slides", nargs="+", help="slide files or folders of slides")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=0.5, help="target resolution of the tiles in µm per pixel")
    p.add_argument("--tile-size", type=int, default=256, help="tile side in pixels at the target resolution")
    p.add_argument("--stride", type=int, default=None, help="step between tiles at the target mpp (default: tile size)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile")
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 mpp for slides that record none")
    p.add_argument("--annotations", default=None, help="folder of ASAP .xml / QuPath .geojson, matched by slide stem")
    p.add_argument("--tumour-threshold", type=float, default=0.5, help="tumour fraction from which a tile is tumour")
    return p


def _predict_parser() -> ArgumentParser:
    p = ArgumentParser(description="Predict slides: heatmaps, QuPath GeoJSON lesions, Camelyon16 detections, scores.")
    p.add_argument("slides", nargs="+", help="slide files, folders of slides, or a manifest CSV")
    p.add_argument("--ckpt", required=True, help="RDFocal checkpoint (.ckpt) from anomalib train or the demo")
    p.add_argument("--output", required=True, help="output folder (one sub-folder per slide)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--num-workers", type=int, default=None, help="tile-reading workers (default: half the usable CPUs, at most 8)"
    )
    p.add_argument("--precision", default="32", help="32, bf16 or 16 (autocast on GPU)")
    p.add_argument(
        "--stride", type=int, default=None, help="step between tiles at the model's mpp (default: tile size)"
    )
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 mpp for slides that record none")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threshold", type=float, default=None, help="lesion threshold on normalised scores (0-1)")
    p.add_argument("--min-tissue", type=float, default=0.25, help="minimum tissue fraction of a scored tile")
    p.add_argument("--channels-last", action="store_true", help="channels-last network (faster on GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU; slow first batches)")
    return p


def _evaluate_parser() -> ArgumentParser:
    p = ArgumentParser(description="Slide AUC and Camelyon16 lesion FROC of a prediction folder.")
    p.add_argument("--predictions", required=True, help="output folder of anomalib-wsi predict")
    p.add_argument("--annotations", required=True, help="folder of ground-truth ASAP XML / GeoJSON / mask TIFFs")
    p.add_argument("--labels", required=True, help="CSV slide_id,label or Camelyon16 reference.csv")
    p.add_argument("--output", required=True, help="folder for report.json, report.md and the curves")
    p.add_argument("--slides", default=None, help="folder of slides, for the size of the ground-truth masks")
    p.add_argument(
        "--keep-excluded",
        action="store_true",
        help="keep test_049 (a duplicate, left out of everything) and test_114 (left out of the FROC), "
        "as the Camelyon16 organisers excluded them",
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=0.243,
        help="level-0 spacing of the FROC protocol (Camelyon16: 0.243 µm/px; other data: the slides' own)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the slide-AUC interval")
    return p


def _demo_parser() -> ArgumentParser:
    p = ArgumentParser(description="Synthetic cohort -> train RDFocal -> predict -> evaluate, on CPU in minutes.")
    p.add_argument("--output", default="demo_output", help="folder for the cohort, the model and the results")
    p.add_argument("--seed", type=int, default=0)
    return p


def _benchmark_parser() -> ArgumentParser:
    p = ArgumentParser(description="Reproduce the paper's Camelyon16 protocol on a Camelyon16 download.")
    p.add_argument("dataset", choices=["camelyon16"], help="which benchmark")
    p.add_argument("--root", required=True, help="Camelyon16 folder (training/, testing/, lesion_annotations/ ...)")
    p.add_argument("--output", default="camelyon16_run")
    p.add_argument("--config", default=None, help="training config (default: configs/rd_focal_wsi.yaml settings)")
    p.add_argument("--dry-run", action="store_true", help="check the layout and print the plan, train nothing")
    return p


_COMMANDS: dict[str, tuple[Callable[[], ArgumentParser], str, str]] = {
    "synth": (_synth_parser, "anomalib_wsi.data.synthetic", "synth_command"),
    "tile": (_tile_parser, "anomalib_wsi.slide.tiling", "tile_command"),
    "predict": (_predict_parser, "anomalib_wsi.engine", "predict_command"),
    "evaluate": (_evaluate_parser, "anomalib_wsi.evaluation.report", "evaluate_command"),
    "demo": (_demo_parser, "anomalib_wsi.demo", "demo_command"),
    "benchmark": (_benchmark_parser, "anomalib_wsi.benchmark", "benchmark_command"),
}


def build_parser() -> ArgumentParser:
    """The ``anomalib-wsi`` parser with one sub-command per entry of the command table."""
    parser = ArgumentParser(prog="anomalib-wsi", description="Whole-slide metastasis detection with anomalib.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    subcommands = parser.add_subcommands(dest="command")
    for name, (make, _, _) in _COMMANDS.items():
        sub = make()
        subcommands.add_subcommand(name, sub, help=sub.description)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (0 ok, 1 some slides failed, 2 user error)."""
    import importlib

    parser = build_parser()
    cfg = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.DEBUG if cfg.verbose else logging.INFO, format="%(levelname)s %(message)s")
    name = cfg.command
    _, module_name, func_name = _COMMANDS[name]
    options: dict[str, Any] = {k.replace("-", "_"): v for k, v in dict(cfg[name]).items() if k != "__path__"}
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        status = func(**options)
    except WSIError as err:
        print(f"anomalib-wsi {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"anomalib-wsi {name}: interrupted; outputs written so far are kept", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
