"""INT8 post-training quantisation of an OpenVINO export with NNCF, calibrated on tissue tiles of given slides.

:func:`quantize_export` replaces the fp32 ``model.xml`` / ``model.bin`` of an export folder by an INT8 model
(``nncf.quantize``, mixed preset), calibrated on tiles read as prediction reads them (:func:`calibration_tiles`:
the export's mpp and tile size, tissue tiles spread evenly over the slides). The convolutions of the encoder,
bottleneck and decoder run in INT8; the comparison of teacher and student features (cosine similarity, the
anomaly map, its blur and the tile score) stays in fp32, where int8 rounding would swamp the small feature
differences the scores are made of (with those quantised the scores came out a million times too small).

Every fourth tile read is held out of the calibration, and the INT8 scores of those are compared with the fp32
ones: the largest difference relative to the fp32 scores' range and the Spearman rank correlation go into
``metadata.json`` (``int8``) and the export's log line, so each export states how close it stays. Needs the
``nncf`` package: ``pip install 'anomalib-wsi[int8]'``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_wsi.errors import WSIError

__all__ = [
    "CALIBRATION_TILES",
    "calibration_slides",
    "calibration_tiles",
    "quantize_export",
    "require_nncf",
    "score_agreement",
]

logger = logging.getLogger(__name__)

#: Tiles read for calibration by default (a quarter of them held out for the check).
CALIBRATION_TILES = 300
#: Operation types kept in fp32: the feature comparison and everything after it.
FP32_OPERATIONS = (
    *("Multiply", "Divide", "ReduceL2", "ReduceSum", "Subtract"),
    *("Maximum", "Interpolate", "Clamp", "ReduceMean", "ReduceMax"),
)
#: The blur of the anomaly map (a convolution named after the output it feeds).
FP32_NAMES = ("anomaly_map",)


def calibration_slides(slides: list[str | Path], count: int = CALIBRATION_TILES) -> list[tuple[Path, float | None]]:
    """The ``(slide, manifest mpp)`` pairs of ``slides`` (files, folders, manifests), checked with ``count``.

    Called before anything is exported, so that a wrong value costs one line and no work.

    Raises:
        WSIError: ``count`` under 8, no slide found, or an input that gives no slide.
    """
    from anomalib_wsi.cohort import resolve_slides

    if count < 8:
        msg = f"--calibration-tiles {count}: calibrate on at least 8 tiles (default {CALIBRATION_TILES})"
        raise WSIError(msg)
    pairs, problems = resolve_slides([str(s) for s in slides])
    if problems:
        msg = f"{problems[0][1]} (--calibration)"
        raise WSIError(msg)
    if not pairs:
        msg = "--calibration: no slides given; pass slide files or folders of tissue like the slides you predict"
        raise WSIError(msg)
    return pairs


def calibration_tiles(
    pairs: list[tuple[Path, float | None]], mpp: float, tile_size_px: int, count: int = CALIBRATION_TILES
) -> tuple[np.ndarray, list[str]]:
    """``count`` uint8 tissue tiles (N, H, W, 3) spread evenly over the slides of :func:`calibration_slides`.

    Returns:
        The tiles and the names of the slides they came from.

    Raises:
        WSIError: a slide that cannot be read, or no tissue tile in any of them.
    """
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    tiles: list[np.ndarray] = []
    names: list[str] = []  # the slide of each tile
    per_slide = -(-count // len(pairs))
    for path, manifest_mpp in pairs:
        slide = Slide(path, mpp=manifest_mpp)
        try:
            plan = slide.plan_read(mpp, tile_size_px)
            table = tile_slide(slide, TilingConfig(mpp=mpp, tile_size_px=tile_size_px))
            rows = np.unique(np.linspace(0, len(table) - 1, min(per_slide, len(table))).round().astype(int))
            tiles += [slide.read_tile(int(table.x.iloc[r]), int(table.y.iloc[r]), plan) for r in rows]
            names += [slide.slide_id] * len(rows)
        finally:
            slide.close()
    if not tiles:
        msg = f"--calibration: no tissue tiles in {', '.join(str(p) for p, _ in pairs)}; give slides with tissue"
        raise WSIError(msg)
    return np.stack(tiles[:count]), list(dict.fromkeys(names[:count]))


def require_nncf() -> Any:
    """The ``nncf`` module, or a one-line error naming the extra that installs it."""
    from anomalib_wsi.inference.export import ExportError

    try:
        import nncf
    except ImportError:
        msg = "INT8 quantisation needs the 'nncf' package: pip install 'anomalib-wsi[int8]'"
        raise ExportError(msg) from None
    return nncf


def score_agreement(fp32: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    """How close INT8 tile scores stay to fp32's: largest difference, relative to the fp32 range, and ranks."""
    from scipy.stats import spearmanr

    spread = float(np.ptp(fp32))
    diff = float(np.max(np.abs(fp32 - int8))) if len(fp32) else 0.0
    rank = float(spearmanr(fp32, int8).statistic) if len(fp32) > 2 and spread > 0 else float("nan")
    return {
        "tiles": len(fp32),
        "max_abs_diff": diff,
        "max_diff_of_range": diff / spread if spread > 0 else float("nan"),
        "spearman": rank,
    }


def _scores(compiled: Any, tiles: np.ndarray, batch_size: int = 16) -> np.ndarray:
    out = [np.array(compiled(tiles[i : i + batch_size])[0]).reshape(-1) for i in range(0, len(tiles), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _ranges(nncf: Any) -> Any:
    """Activation ranges: the lower bound averaged over the tiles, the upper one the largest value seen.

    NNCF's default averages both, which clips exactly the outliers an anomaly detector is for: with it the scores
    of tumour tiles came out at 0.4 of fp32's (2.3 → 0.9) while normal tiles stayed within 1%. With the largest
    value kept, tumour tiles move by 0.02 and normal ones by 0.02 (resnet18 64 px).
    """
    from nncf.quantization.range_estimator import AggregatorType, StatisticsCollectorParameters, StatisticsType

    return nncf.quantization.range_estimator.RangeEstimatorParameters(
        min=StatisticsCollectorParameters(statistics_type=StatisticsType.MIN, aggregator_type=AggregatorType.MEAN),
        max=StatisticsCollectorParameters(statistics_type=StatisticsType.MAX, aggregator_type=AggregatorType.MAX),
    )


def quantize_export(
    model_xml: str | Path, tiles: np.ndarray, slide_names: list[str] | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Quantise the OpenVINO export at ``model_xml`` to INT8 in place; returns the ``int8`` metadata entry.

    ``tiles``: uint8 (N, H, W, 3) calibration tiles (every fourth is held out for the check).

    Raises:
        ExportError: ``nncf`` is not installed, or the tiles do not fit the export.
    """
    import json

    from anomalib_wsi.inference.export import METADATA_NAME, ExportError, require_runtime

    ov = require_runtime("openvino")
    nncf = require_nncf()
    path = Path(model_xml)
    meta_path = path.parent / METADATA_NAME
    metadata = json.loads(meta_path.read_text())
    side = int(metadata["tile_size_px"])
    if tiles.ndim != 4 or tiles.shape[1:] != (side, side, 3) or tiles.dtype != np.uint8:
        msg = f"{path}: calibration tiles must be uint8 ({side}, {side}, 3), got {tiles.dtype} {tiles.shape[1:]}"
        raise ExportError(msg)
    held_out = np.arange(len(tiles)) % 4 == 3
    calibrate, check = tiles[~held_out], tiles[held_out]
    core = ov.Core()
    model = core.read_model(path)
    items = [calibrate[i : i + 1] for i in range(len(calibrate))]
    nncf.set_log_level(logging.WARNING)  # not a line per operation it leaves in fp32
    scope = nncf.IgnoredScope(names=list(FP32_NAMES), types=list(FP32_OPERATIONS), validate=False)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(items),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
        ignored_scope=scope,
        advanced_parameters=nncf.AdvancedQuantizationParameters(activations_range_estimator_params=_ranges(nncf)),
    )
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
    fp32_scores = _scores(core.compile_model(model, "CPU", config), check)
    int8_scores = _scores(core.compile_model(quantized, "CPU", config), check)
    agreement = score_agreement(fp32_scores, int8_scores)
    staged = path.with_name(f".{path.stem}.int8.xml")  # the fp32 weights may be mapped while they are replaced
    ov.save_model(quantized, staged, compress_to_fp16=False)
    staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
    staged.replace(path)
    entry = {
        "calibration_slides": list(slide_names or []),
        "calibration_tiles": len(calibrate),
        "nncf": str(nncf.__version__),
        "preset": "mixed",
        "fp32_operations": list(FP32_OPERATIONS) + list(FP32_NAMES),
        "held_out_check": agreement,
    }
    metadata["precision"] = "int8"
    metadata["int8"] = entry
    meta_path.write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    logger.info(
        "INT8: on %d held-out tiles the scores stay within %.3g of fp32 (%.1f%% of their range), rank correlation %.3f",
        agreement["tiles"], agreement["max_abs_diff"], 100 * agreement["max_diff_of_range"], agreement["spearman"],
    )  # fmt: skip
    return entry
