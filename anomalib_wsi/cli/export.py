"""``anomalib-wsi export``: a checkpoint's network as OpenVINO IR or ONNX, with the metadata prediction needs.

anomalib's own ``anomalib export`` exports a whole anomalib module with its tile-level post-processing
(normalised scores, labels); slide prediction needs the raw scores and maps and the slide-level settings, so this
command exports the network only and writes ``metadata.json`` beside it (see
:mod:`anomalib_wsi.inference.export`). Predict with the export: ``anomalib-wsi predict --model DIR/model.xml``.
"""

from __future__ import annotations

import logging
from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["export_command", "parser", "run"]

logger = logging.getLogger(__name__)


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Export a checkpoint to OpenVINO or ONNX for prediction on CPU servers.")
    p.add_argument("--ckpt", required=True, help="RDFocal checkpoint (.ckpt) from anomalib train or the demo")
    p.add_argument("--format", required=True, help="openvino (model.xml + model.bin) or onnx (model.onnx)")
    p.add_argument("--output", required=True, help="export folder (model file and metadata.json)")
    p.add_argument(
        "--tile-size", type=int, default=None, help="tile side of the exported input (default: the training tiles')"
    )
    p.add_argument("--int8", action="store_true", help="quantise the OpenVINO model to INT8 (NNCF, with --calibration)")
    p.add_argument(
        "--calibration", nargs="+", default=None, help="slides or folders whose tissue tiles calibrate the INT8 model"
    )
    p.add_argument("--calibration-tiles", type=int, default=None, help="tiles read for calibration (default 300)")
    return p


def export_command(
    ckpt: str,
    format: str,
    output: str,
    tile_size: int | None = None,
    int8: bool = False,
    calibration: list[str] | None = None,
    calibration_tiles: int | None = None,
) -> int:
    """``anomalib-wsi export``: returns 0 once the model and its metadata are written."""
    from anomalib_wsi.inference.export import export_model

    path = export_model(
        ckpt,
        format.lower(),
        output,
        tile_size_px=tile_size,
        int8=int8,
        calibration=list(calibration) if calibration else None,
        calibration_tiles=calibration_tiles,
    )
    logger.info("exported %s (metadata in %s); predict with: anomalib-wsi predict --model %s SLIDES --output DIR",
                path, path.parent / "metadata.json", path)  # fmt: skip
    return 0


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    return export_command(**options)
