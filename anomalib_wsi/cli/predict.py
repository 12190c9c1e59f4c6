"""``anomalib-wsi predict``: heatmaps, QuPath GeoJSON lesions, Camelyon16 detections and a score per slide."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from anomalib_wsi.inference.settings import PREDICT_MIN_TISSUE

__all__ = ["parser", "predict_command", "run"]

logger = logging.getLogger(__name__)


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Predict slides: heatmaps, QuPath GeoJSON lesions, Camelyon16 detections, scores.")
    p.add_argument("slides", nargs="+", help="slide files, folders of slides, or a manifest CSV")
    p.add_argument("--ckpt", default=None, help="checkpoint (.ckpt) of RDFocal or any anomalib model, from training")
    p.add_argument(
        "--model",
        default=None,
        help="with --ckpt: the model class (Padim, ...) when the checkpoint does not name it; instead of --ckpt: "
        "a model.xml (OpenVINO) or model.onnx written by anomalib-wsi export",
    )
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
    p.add_argument(
        "--min-tissue", type=float, default=PREDICT_MIN_TISSUE, help="minimum tissue fraction of a scored tile"
    )
    p.add_argument(
        "--tile-objects", action="store_true", help="also write tiles.geojson.gz: tile scores as QuPath tile objects"
    )
    p.add_argument(
        "--heatmap-tiff",
        default=None,
        choices=["uint8", "float32", "rgba"],
        help="also write heatmap.tif, a pyramidal overlay aligned with the slide (QuPath, ASAP, openslide)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last network (faster on GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU; slow first batches)")
    p.add_argument(
        "--stain-on",
        default="auto",
        help="where a Macenko-normalising model maps tiles: workers, device, or auto (the device when a GPU)",
    )
    return p


def predict_command(
    slides: list[str],
    ckpt: str,
    output: str,
    batch_size: int = 32,
    num_workers: int | None = None,
    precision: str = "32",
    stride: int | None = None,
    slide_mpp: float | None = None,
    device: str = "auto",
    threshold: float | None = None,
    min_tissue: float = PREDICT_MIN_TISSUE,
    channels_last: bool = False,
    compile: bool = False,
    tile_objects: bool = False,
    heatmap_tiff: str | None = None,
    model: str | None = None,
    stain_on: str = "auto",
) -> int:
    """``anomalib-wsi predict``: returns 0 when every slide succeeded, 1 when any failed (on any rank) or the run
    tables could not be written.

    ``model`` is an exported model (``.xml`` / ``.onnx``) instead of ``ckpt``, or, with ``ckpt``, the model class
    for a checkpoint that does not record it.
    """
    import torch
    import torch.distributed as dist

    from anomalib_wsi.errors import WSIError
    from anomalib_wsi.inference import WSIEngine, distributed_rank
    from anomalib_wsi.inference.export import is_exported_model

    exported = model is not None and is_exported_model(model)
    if exported == (ckpt is not None) or (ckpt is None and model is None):
        msg = "pass either --ckpt MODEL.ckpt or --model EXPORT/model.xml (or model.onnx of anomalib-wsi export)"
        if ckpt is None and model is not None:
            msg = f"--model {model}: not an exported model; pass a model.xml or model.onnx (a .ckpt goes to --ckpt)"
        raise WSIError(msg)

    _, world, _ = distributed_rank()
    if world > 1 and "MASTER_ADDR" in os.environ and not dist.is_initialized():
        # torchrun: a CPU process group only to wait for each other at the end (so no rank is stopped early
        # by a rank that exits with failures) and to agree on the exit status
        dist.init_process_group("gloo")
    engine = WSIEngine(
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
        compile_model=compile,
        channels_last=True if channels_last else None,
        stain_on=stain_on,
    )
    run = engine.predict(
        model=model,
        ckpt_path=ckpt,
        slides=slides,
        output_dir=output,
        stride_px=stride,
        slide_mpp=slide_mpp,
        lesion_threshold=threshold,
        min_tissue=min_tissue,
        tile_objects=tile_objects or None,
        heatmap_tiff=heatmap_tiff,
    )
    logger.info(
        "%d slides predicted (%d skipped as done), %d failed; summary in %s",
        len(run),
        sum(r.skipped for r in run),
        len(run.failures),
        Path(output) / "summary.csv",
    )
    failed = len(run.failures) + bool(run.tables_error)
    if dist.is_available() and dist.is_initialized():
        total = torch.tensor([failed])
        dist.all_reduce(total)
        failed = int(total.item())
    return 1 if failed else 0


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    return predict_command(**options)
