"""Slide prediction on CPU: torch vs OpenVINO Runtime vs ONNX Runtime, end to end, at the same thread count.

For each configuration (default: resnet18 at 64 px and wide_resnet50_2 at 256 px, random weights,
``pre_trained=False``) one RDFocal is built, exported with ``anomalib_wsi.inference.export.export_module`` to
OpenVINO IR and ONNX, and a synthetic slide of a few hundred tissue tiles is predicted by
``WSIEngine(device="cpu").predict`` four times: with the torch module, with ``model.xml``, with ``model.onnx``
and with a copy of ``model.xml`` quantised to INT8 (NNCF, ``--calibration-tiles`` tiles of the slide; needs the
``int8`` extra). torch, OpenVINO and ONNX Runtime all run ``--threads`` CPU threads (``torch.set_num_threads``;
the backends take the same number); the tile readers are ``--num-workers`` processes in every case. Each backend
predicts the slide once as a warm-up (and to check the exported scores against torch's), then ``--repeats``
timed runs into fresh folders; the best streaming rate (``PredictionRun.tiles_per_second``: reading, network,
stitching, lesions and files of the slide) is kept. Goal: OpenVINO >= 1.5x torch.

The INT8 heatmap difference is against torch's, in normalised 0-1 scores.

    python benchmarks/bench_deploy.py --threads 1
    python benchmarks/bench_deploy.py --threads 8 --num-workers 4 --configs wide_resnet50_2:256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _common import quiet_logs, work_folder

BACKENDS = ("torch", "openvino", "onnx", "openvino-int8")
EXPORTED = BACKENDS[1:]


def _slide(folder: Path, tile_px: int, tiles: int) -> Path:
    """A synthetic tumour slide at 0.5 µm/px holding about ``tiles`` tiles of ``tile_px`` at 0.5 µm/px."""
    from anomalib_wsi.data.synthetic import synthesize_slide

    side = int(np.ceil(np.sqrt(tiles / 0.2)) * tile_px)  # about 20 % of the tiles of a synthetic slide are tissue
    path = folder / f"slide_{tile_px}_{side}.tif"
    if not path.exists():
        synthesize_slide(path, size_px=side, mpp=0.5, seed=3, tumour=True)
    return path


def _int8(fp32_xml: Path, folder: Path, slide: Path, args: argparse.Namespace) -> Path:
    """A copy of the OpenVINO export quantised to INT8 on ``--calibration-tiles`` tiles of the benchmark slide."""
    import shutil

    from anomalib_wsi.inference.quantize import calibration_slides, calibration_tiles, quantize_export

    shutil.copytree(fp32_xml.parent, folder, dirs_exist_ok=True)
    side = json.loads((folder / "metadata.json").read_text())["tile_size_px"]
    pairs = calibration_slides([slide], args.calibration_tiles)
    tiles, names = calibration_tiles(pairs, 0.5, side, args.calibration_tiles)
    check = quantize_export(folder / "model.xml", tiles, names, threads=args.threads)["held_out_check"]
    print(f"  INT8 held-out check: {check}", flush=True)
    return folder / "model.xml"


def _bench(args: argparse.Namespace, backbone: str, tile_px: int, folder: Path) -> dict[str, Any]:
    from anomalib_wsi.inference import WSIEngine
    from anomalib_wsi.inference.export import export_module
    from anomalib_wsi.models.rd_focal import RDFocal

    torch.manual_seed(0)
    module = RDFocal(backbone=backbone, pre_trained=False, image_size=tile_px).eval()
    data = {"mpp": 0.5, "tile_size_px": tile_px}
    models: dict[str, Any] = {"torch": module}
    for fmt in ("openvino", "onnx"):
        models[fmt] = export_module(module, fmt, folder / f"{backbone}_{tile_px}" / fmt, data)
    slide = _slide(folder, tile_px, args.tiles)
    models["openvino-int8"] = _int8(models["openvino"], folder / f"{backbone}_{tile_px}" / "int8", slide, args)
    figures: dict[str, Any] = {"backbone": backbone, "tile_px": tile_px, "threads": args.threads}
    reference = None
    for name in BACKENDS:
        engine = WSIEngine(batch_size=args.batch_size, num_workers=args.num_workers, device="cpu", progress=False)
        runs = []
        for repeat in range(args.repeats + 1):  # the first run warms up
            out = folder / "runs" / f"{backbone}_{tile_px}_{name}_{repeat}"
            start = time.perf_counter()
            run = engine.predict(model=models[name], slides=[slide], output_dir=out, mpp=0.5, tile_size_px=tile_px)
            wall = time.perf_counter() - start
            if run.failures:
                raise SystemExit(f"{name}: {run.failures[0].error}")
            if repeat == 0:
                values = run[0].heatmap.values
                if reference is None:
                    reference = values
                figures[f"{name}_max_heatmap_diff"] = float(np.nanmax(np.abs(values - reference)))
                figures["n_tiles"] = run[0].n_tiles
                continue
            runs.append((run.tiles_per_second, run[0].n_tiles / wall))
        figures[f"{name}_tiles_s"] = max(r[0] for r in runs)
        figures[f"{name}_call_tiles_s"] = max(r[1] for r in runs)
    for name in EXPORTED:
        figures[f"{name}_vs_torch"] = figures[f"{name}_tiles_s"] / figures["torch_tiles_s"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="resnet18:64,wide_resnet50_2:256", help="backbone:tile_px,...")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch, OpenVINO and ONNX Runtime")
    parser.add_argument("--num-workers", type=int, default=1, help="tile-reading processes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tiles", type=int, default=300, help="about this many tissue tiles per slide")
    parser.add_argument("--calibration-tiles", type=int, default=64, help="tiles calibrating the INT8 model")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per backend (after one warm-up)")
    parser.add_argument("--work", default=None, help="folder for exports, slides and outputs (default: temporary)")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    quiet_logs()
    torch.set_num_threads(args.threads)
    folder, tmp = work_folder(args.work, "bench_deploy_")
    results = []
    try:
        for config in args.configs.split(","):
            backbone, tile_px = config.split(":")
            figures = _bench(args, backbone, int(tile_px), folder)
            results.append(figures)
            diff = max(figures["openvino_max_heatmap_diff"], figures["onnx_max_heatmap_diff"])
            print(
                f"{backbone} {tile_px} px, {figures['n_tiles']} tiles, {args.threads} threads: "
                + ", ".join(f"{name} {figures[f'{name}_tiles_s']:.1f} tiles/s" for name in BACKENDS)
                + "; "
                + ", ".join(f"{name} {figures[f'{name}_vs_torch']:.2f}x" for name in EXPORTED)
                + " torch"
                + f" (fp32 heatmaps within {diff:.1e}, INT8 within {figures['openvino-int8_max_heatmap_diff']:.3f})",
                flush=True,
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
