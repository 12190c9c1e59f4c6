"""Export a trained model to OpenVINO IR or ONNX, and load such an export back for slide prediction.

:func:`export_model` writes the network of a checkpoint as ``model.xml`` + ``model.bin`` (OpenVINO) or
``model.onnx`` (ONNX), plus ``metadata.json`` beside it. The exported network is exactly the torch prediction
path's forward: its input is a batch of tiles as read from the slide, ``uint8`` ``(N, H, W, 3)`` (N free, H and
W the tile size); inside it come the conversion to float, the pre-processor (resize and ImageNet normalisation,
anomalib's exportable transform) and the network; its outputs are the raw tile scores ``pred_score`` ``(N,)`` and
anomaly maps ``anomaly_map`` ``(N, 1, H', W')``. Score normalisation and everything slide-level stay outside,
on the host, in a :class:`~anomalib_wsi.post_processing.WSIPostProcessor` rebuilt from the metadata: tile size
and mpp of the training data, the pre-processor's statistics, the learnt thresholds and min/max, and the
post-processor's settings.

:func:`load_exported` reads an export back as an :class:`ExportedModel`, which the prediction engine uses in
place of a torch module (:mod:`~anomalib_wsi.inference.backends` runs its forward). The runtimes are optional
extras: ``pip install anomalib-wsi[openvino]`` or ``anomalib-wsi[onnx]``.
"""

from __future__ import annotations

import importlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anomalib_wsi.errors import WSIError

__all__ = [
    "EXPORT_FORMATS",
    "METADATA_NAME",
    "ExportError",
    "ExportedModel",
    "TileNetwork",
    "export_model",
    "export_module",
    "export_tile_size",
    "is_exported_model",
    "load_exported",
    "require_runtime",
]

#: Export formats and the file each writes.
EXPORT_FORMATS = {"openvino": "model.xml", "onnx": "model.onnx"}
#: The metadata file written beside the model.
METADATA_NAME = "metadata.json"
#: Version of the metadata layout.
METADATA_VERSION = 1
#: Model file suffixes that :func:`is_exported_model` recognises.
EXPORT_SUFFIXES = {".xml": "openvino", ".onnx": "onnx"}

#: The Python module each format needs, and the extra that installs it.
_RUNTIMES = {"openvino": ("openvino", "openvino"), "onnx": ("onnxruntime", "onnx")}
#: The post-processor's learnt statistics: metadata name -> buffer (the thresholds' buffers are private in anomalib).
_STATISTICS = {
    "image_threshold": "_image_threshold",
    "pixel_threshold": "_pixel_threshold",
    "image_min": "image_min",
    "image_max": "image_max",
    "pixel_min": "pixel_min",
    "pixel_max": "pixel_max",
}


class ExportError(WSIError):
    """An export that cannot be written or read back."""


def require_runtime(fmt: str, module: str | None = None) -> Any:
    """Import the runtime of an export format, or raise a one-line error naming the extra that installs it."""
    name, extra = _RUNTIMES[fmt]
    name = module or name
    try:
        return importlib.import_module(name)
    except ImportError:
        msg = f"the {fmt} format needs the {name!r} package: pip install 'anomalib-wsi[{extra}]'"
        raise ExportError(msg) from None


class TileNetwork(torch.nn.Module):
    """uint8 tiles ``(N, H, W, 3)`` -> raw ``pred_score`` ``(N,)`` and ``anomaly_map`` ``(N, 1, H', W')``.

    The same steps as the torch prediction forward (:class:`~anomalib_wsi.inference.forward.TileForward`): permute
    to NCHW, float and divide by 255, the pre-processor's (exportable) transform, the network in eval mode.
    """

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.pre_processor = module.pre_processor
        self.model = module.model

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = tiles.permute(0, 3, 1, 2).float() / 255.0
        if self.pre_processor is not None:
            images = self.pre_processor(images)
        output = self.model(images)
        return output.pred_score.float().reshape(-1), output.anomaly_map.float()


def _transform_statistics(module: Any) -> dict[str, Any]:
    """The pre-processor's resize and normalisation, as plain data (what is folded into the exported network)."""
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    found: dict[str, Any] = {}
    transform = getattr(module.pre_processor, "transform", None)
    parts = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    for part in parts:
        if isinstance(part, Resize):
            found["resize"] = list(part.size) if part.size is not None else None
        elif isinstance(part, Normalize):
            found["mean"] = [float(v) for v in part.mean]
            found["std"] = [float(v) for v in part.std]
    return found


def _float_or_none(value: torch.Tensor) -> float | None:
    number = float(value.detach().cpu().item())
    return number if math.isfinite(number) else None


def export_metadata(module: Any, data_settings: dict[str, Any], tile_size_px: int, ckpt: Path | None) -> dict:
    """Everything slide prediction needs besides the network: tiling, normalisation, thresholds, post-processing."""
    from anomalib_wsi.post_processing import WSIPostProcessor

    post = module.post_processor
    if not isinstance(post, WSIPostProcessor):
        post = WSIPostProcessor.from_post_processor(post)
    network = getattr(module, "model", None)
    return {
        "format_version": METADATA_VERSION,
        "model_class": type(module).__name__,
        "backbone": getattr(module, "backbone", None),
        "tile_score": getattr(network, "tile_score", None),
        "input": {"name": "tiles", "dtype": "uint8", "layout": "NHWC", "tile_size_px": int(tile_size_px)},
        "outputs": ["pred_score", "anomaly_map"],
        "mpp": data_settings.get("mpp"),
        "tile_size_px": int(tile_size_px),
        "pre_processor": _transform_statistics(module),
        "post_processor": {
            "config": post.checkpoint_config(),
            "statistics": {name: _float_or_none(getattr(post, buffer)) for name, buffer in _STATISTICS.items()},
            "slide_settings": post.slide_settings(),
        },
        "checkpoint": str(ckpt) if ckpt is not None else None,
        "stain_reference": data_settings["stain"].as_dict() if data_settings.get("stain") is not None else None,
    }


def export_model(
    ckpt_path: str | Path,
    fmt: str,
    output_dir: str | Path,
    model: Any = None,
    tile_size_px: int | None = None,
    int8: bool = False,
    calibration: list[str | Path] | None = None,
    calibration_tiles: int | None = None,
) -> Path:
    """Export the network of a checkpoint for prediction without torch; returns the model file written.

    Args:
        ckpt_path: the ``.ckpt`` written by training.
        fmt: ``"openvino"`` (``model.xml`` + ``model.bin``) or ``"onnx"`` (``model.onnx``).
        output_dir: folder of the export (created); ``metadata.json`` is written beside the model.
        model: the model class of the checkpoint (default ``RDFocal``).
        tile_size_px: tile side of the exported input (default: the training data's, from the checkpoint, else the
            pre-processor's size).
        int8: quantise the OpenVINO export to INT8 with NNCF (:mod:`~anomalib_wsi.inference.quantize`).
        calibration: with ``int8``, slides (files, folders, manifests) whose tissue tiles calibrate it.
        calibration_tiles: tiles read for the calibration (default 300; a quarter held out for the check).

    Raises:
        ExportError: unknown format, its runtime (or ``nncf``) not installed, INT8 asked for ONNX or without
            calibration slides; these, and calibration slides that give no tissue tile, before anything is written.
        CheckpointError: the checkpoint cannot be loaded.
    """
    from anomalib_wsi.inference.checkpoint import load_model

    if fmt not in EXPORT_FORMATS:
        msg = f"--format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}"
        raise ExportError(msg)
    if fmt == "openvino":  # before loading: a missing extra is said first
        require_runtime("openvino")
    require_runtime(fmt, "onnx")  # torch's ONNX exporter needs onnx and onnxscript
    require_runtime(fmt, "onnxscript")
    pairs: list[tuple[Path, float | None]] = []
    if int8 or calibration or calibration_tiles is not None:
        from anomalib_wsi.inference import quantize

        if fmt != "openvino":
            msg = "--int8 quantises OpenVINO exports only; use --format openvino"
            raise ExportError(msg)
        if not int8 or not calibration:
            msg = "INT8 needs both --int8 and --calibration SLIDES (tissue like the slides you will predict)"
            raise ExportError(msg)
        quantize.require_nncf()
        count = quantize.CALIBRATION_TILES if calibration_tiles is None else calibration_tiles
        pairs = quantize.calibration_slides(calibration, count)
    module, data_settings = load_model(model, ckpt_path)
    calibration_set = None
    if int8:  # the calibration tiles are read before anything is written: a slide that fails costs no export
        mpp = data_settings.get("mpp")
        if mpp is None:
            msg = f"{ckpt_path}: the checkpoint records no training mpp, so calibration tiles cannot be read"
            raise ExportError(msg)
        side = export_tile_size(module, data_settings, tile_size_px)
        calibration_set = quantize.calibration_tiles(pairs, float(mpp), side, count)
    path = export_module(module, fmt, output_dir, data_settings, tile_size_px, Path(ckpt_path))
    if calibration_set is not None:
        quantize.quantize_export(path, *calibration_set)
    return path


def export_tile_size(module: Any, data_settings: dict[str, Any] | None, tile_size_px: int | None = None) -> int:
    """The tile side an export takes: ``tile_size_px``, else the training data's, else the pre-processor's.

    Raises:
        ExportError: a side outside 1-4096 px.
    """
    if tile_size_px is None:
        tile_size_px = (data_settings or {}).get("tile_size_px")
    if tile_size_px is None:
        size = getattr(module, "input_size", None) or (256, 256)
        tile_size_px = int(size[0])
    if not 1 <= int(tile_size_px) <= 4096:
        msg = f"tile size {tile_size_px}: use a whole number of pixels in 1-4096"
        raise ExportError(msg)
    return int(tile_size_px)


def export_module(
    module: Any,
    fmt: str,
    output_dir: str | Path,
    data_settings: dict[str, Any] | None = None,
    tile_size_px: int | None = None,
    ckpt_path: Path | None = None,
) -> Path:
    """Export an anomalib module in memory (``pre_processor``, ``model``, ``post_processor``); see :func:`export_model`.

    ``data_settings`` holds the training data's ``mpp`` and ``tile_size_px`` where known.
    """
    if fmt not in EXPORT_FORMATS:
        msg = f"--format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}"
        raise ExportError(msg)
    ov: Any = require_runtime("openvino") if fmt == "openvino" else None
    require_runtime(fmt, "onnx")  # torch's ONNX exporter needs onnx and onnxscript
    require_runtime(fmt, "onnxscript")
    data_settings = dict(data_settings or {})
    module = module.cpu().eval()
    tile_size_px = export_tile_size(module, data_settings, tile_size_px)
    network = TileNetwork(module).eval()
    example = torch.zeros((2, tile_size_px, tile_size_px, 3), dtype=torch.uint8)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / EXPORT_FORMATS[fmt]
    with torch.no_grad():
        if fmt == "onnx":
            _to_onnx(network, example, path)
        else:  # through ONNX, as anomalib exports (OpenVINO's torch front end lacks aten::cosine_similarity)
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = Path(tmp) / "model.onnx"
                _to_onnx(network, example, onnx_path)
                ov.save_model(ov.convert_model(onnx_path), path, compress_to_fp16=False)
    metadata = export_metadata(module, data_settings, tile_size_px, ckpt_path)
    (out / METADATA_NAME).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    return path


def _to_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch's dynamo ONNX exporter, batch size free, weights inside the file."""
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        network,
        (example,),
        str(path),
        input_names=["tiles"],
        output_names=["pred_score", "anomaly_map"],
        dynamic_shapes={"tiles": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def is_exported_model(model: Any) -> bool:
    """Whether ``model`` names an exported model file (``.xml`` OpenVINO IR or ``.onnx``)."""
    return isinstance(model, str | Path) and Path(model).suffix.lower() in EXPORT_SUFFIXES


@dataclass
class ExportedModel:
    """An exported network with its metadata: what the prediction engine uses in place of a torch module.

    Attributes:
        path: the model file (``model.xml`` or ``model.onnx``).
        format: ``"openvino"`` or ``"onnx"``.
        metadata: the content of ``metadata.json``.
        post_processor: the slide-level post-processor rebuilt from the metadata.
        export_files: every file the export consists of (model, weights, metadata), for the resume fingerprint.
    """

    path: Path
    format: str
    metadata: dict[str, Any]
    post_processor: Any
    export_files: list[Path] = field(default_factory=list)
    pre_processor: Any = None  # folded into the exported network

    @property
    def tile_size_px(self) -> int:
        return int(self.metadata["tile_size_px"])


def _post_processor(metadata: dict[str, Any], source: Path) -> Any:
    from anomalib_wsi.post_processing import WSIPostProcessor

    section = metadata.get("post_processor") or {}
    post = WSIPostProcessor()
    try:
        post.load_checkpoint_config(dict(section.get("config") or {}))
        for name, value in dict(section.get("statistics") or {}).items():
            if name in _STATISTICS:
                getattr(post, _STATISTICS[name]).fill_(math.nan if value is None else float(value))
    except (TypeError, ValueError) as err:
        msg = f"{source}: the post-processor settings are invalid ({err}); export the model again"
        raise ExportError(msg) from None
    return post


def load_exported(model_path: str | Path) -> tuple[ExportedModel, dict[str, Any]]:
    """An exported model and its data settings (``mpp``, ``tile_size_px``), as :func:`load_model` returns them.

    Raises:
        ExportError: the file or its ``metadata.json`` is missing or unreadable, or the runtime is not installed.
    """
    path = Path(model_path)
    fmt = EXPORT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        msg = f"{path}: not an exported model; pass a model.xml (OpenVINO) or model.onnx written by anomalib-wsi export"
        raise ExportError(msg)
    require_runtime(fmt)
    if not path.is_file():
        msg = f"{path}: exported model not found; write it with anomalib-wsi export --ckpt MODEL.ckpt --format {fmt}"
        raise ExportError(msg)
    files = [path]
    if fmt == "openvino":
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            msg = f"{path}: its weights {weights.name} are missing beside it; copy the whole export folder"
            raise ExportError(msg)
        files.append(weights)
    meta_path = path.parent / METADATA_NAME
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        msg = (
            f"{meta_path}: the export's metadata is missing or unreadable ({type(err).__name__}); "
            "copy the whole export folder, or export the model again"
        )
        raise ExportError(msg) from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != METADATA_VERSION:
        msg = f"{meta_path}: not metadata of anomalib-wsi export (format_version {METADATA_VERSION}); export again"
        raise ExportError(msg)
    files.append(meta_path)
    exported = ExportedModel(path, fmt, metadata, _post_processor(metadata, meta_path), files)
    data_settings: dict[str, Any] = {"tile_size_px": exported.tile_size_px}
    if metadata.get("mpp") is not None:
        data_settings["mpp"] = float(metadata["mpp"])
    if metadata.get("stain_reference") is not None:  # the training data's stain normalisation
        from anomalib_wsi.data.stain import StainReference

        data_settings["stain"] = StainReference.from_dict(
            metadata["stain_reference"], where=f"{meta_path}: the export's stain reference"
        )
    return exported, data_settings
