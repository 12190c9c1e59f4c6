"""The prediction folder: the one place that knows its file names, writes a slide's files and reads them back.

Per slide, ``<output>/<slide_id>/`` holds

- ``heatmap.npy``: the normalised heatmap (float32, NaN off tissue); its downsample is in ``summary.json``;
- ``heatmap.png``: the heatmap over the slide thumbnail, lesions outlined, with a colour bar;
- ``lesions.geojson``: the lesions as QuPath annotations (level-0 px, class ``Tumor``, score and area measurements);
- ``detections.csv``: Camelyon16 detections, no header, ``confidence,x,y`` (integer level-0 x, y), written even
  when empty;
- ``summary.json``: slide score, counts, mpp, settings, timings and the resume fingerprint; written last, so its
  presence marks the slide done;

and, when the post-processor asks for them (``tile_objects``, ``heatmap_tiff``):

- ``tiles.geojson.gz``: the heatmap as QuPath tile objects with ``anomaly_score`` / ``raw_score`` measurements
  (QuPath: Measure > Show measurement maps);
- ``heatmap.tif``: a tiled pyramidal TIFF of the heatmap aligned with the slide (its mpp scaled in the TIFF).

The engine writes through :func:`write_slide_outputs`; resume reads back with :func:`read_slide_outputs`; the
evaluation reads :func:`read_detections` and :func:`read_slide_score`. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_wsi.cohort import read_text_file
from anomalib_wsi.errors import WSIError
from anomalib_wsi.files import atomic_save_npy, atomic_write_text
from anomalib_wsi.post_processing.lesions import Lesion, write_detections_csv, write_lesions_geojson
from anomalib_wsi.post_processing.stitch import Heatmap

__all__ = [
    "OPTIONAL_FILES",
    "OUTPUT_FILES",
    "PredictionFileError",
    "SlideOutputs",
    "clear_slide_outputs",
    "output_paths",
    "read_detections",
    "read_lesions",
    "read_slide_outputs",
    "read_slide_score",
    "read_summary",
    "write_slide_outputs",
]

#: The files of one predicted slide, by key (``SlidePrediction.paths`` uses the same keys).
OUTPUT_FILES = {
    "heatmap_npy": "heatmap.npy",
    "heatmap_png": "heatmap.png",
    "geojson": "lesions.geojson",
    "detections": "detections.csv",
    "summary": "summary.json",
}


#: Files written only when the post-processor asks for them; ``summary.json`` lists those written (``extra_files``).
OPTIONAL_FILES = {"tile_objects": "tiles.geojson.gz", "heatmap_tiff": "heatmap.tif"}


#: What to do about a damaged file of a prediction folder.
_PREDICT_AGAIN = "the file anomalib-wsi predict writes (predict this slide again)"


class PredictionFileError(WSIError):
    """A file of a prediction folder is missing or unreadable."""


@dataclass
class SlideOutputs:
    """A slide's prediction as read back from its folder.

    Attributes:
        summary: the parsed ``summary.json``.
        heatmap: the normalised heatmap with its downsample.
        lesions: lesion polygons (level-0 px) with their measurements.
        detections: (N, 3) ``confidence, x, y``.
        paths: the files, by key of :data:`OUTPUT_FILES`.
    """

    summary: dict[str, Any]
    heatmap: Heatmap
    lesions: list[Lesion]
    detections: np.ndarray
    paths: dict[str, Path] = field(default_factory=dict)


def output_paths(slide_dir: str | Path) -> dict[str, Path]:
    """The files of a slide folder, by key of :data:`OUTPUT_FILES`."""
    return {key: Path(slide_dir) / name for key, name in OUTPUT_FILES.items()}


def clear_slide_outputs(slide_dir: str | Path) -> None:
    """Remove the files of an earlier prediction from ``slide_dir`` (``summary.json`` first), nothing else."""
    paths = output_paths(slide_dir)
    for key in ("summary", *(k for k in paths if k != "summary")):
        paths[key].unlink(missing_ok=True)
    for name in OPTIONAL_FILES.values():
        (Path(slide_dir) / name).unlink(missing_ok=True)


def write_slide_outputs(
    slide_dir: str | Path,
    heatmap: Heatmap,
    lesions: Sequence[Lesion],
    detections: np.ndarray,
    summary: dict[str, Any],
    thumbnail: np.ndarray,
    thumbnail_downsample: float,
    post_processor: Any = None,
    raw_heatmap: Heatmap | None = None,
) -> dict[str, Path]:
    """Write a slide's prediction files; ``summary.json`` last, so that it marks the slide done.

    Args:
        slide_dir: the slide's folder (created).
        heatmap: the normalised heatmap.
        lesions: lesions in level-0 px.
        detections: (N, 3) ``confidence, x, y``.
        summary: the content of ``summary.json`` (``slide_id`` and ``slide_score`` are used for the PNG title).
        thumbnail: RGB thumbnail of the slide for ``heatmap.png``.
        thumbnail_downsample: level-0 px per thumbnail pixel.
        post_processor: the model's post-processor; its ``tile_objects`` / ``heatmap_tiff`` settings ask for the
            optional files.
        raw_heatmap: the heatmap of raw scores (``raw_score`` of the tile objects).

    Returns:
        The files written, by key of :data:`OUTPUT_FILES` and :data:`OPTIONAL_FILES`.
    """
    from anomalib_wsi.post_processing.render import render_heatmap_png

    paths = output_paths(slide_dir)
    paths["summary"].parent.mkdir(parents=True, exist_ok=True)
    paths["summary"].unlink(missing_ok=True)
    atomic_save_npy(paths["heatmap_npy"], heatmap.values.astype(np.float32))
    write_lesions_geojson(paths["geojson"], lesions)
    write_detections_csv(paths["detections"], detections)
    render_heatmap_png(
        paths["heatmap_png"],
        heatmap,
        thumbnail,
        thumbnail_downsample,
        lesions=lesions,
        title=f"{summary['slide_id']}  slide score {float(summary['slide_score']):.3f}",
    )
    paths.update(_write_optional(Path(slide_dir), heatmap, raw_heatmap, summary, post_processor))
    summary = {**summary, "extra_files": sorted(p.name for k, p in paths.items() if k in OPTIONAL_FILES)}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2, default=float))
    return paths


def _write_optional(
    slide_dir: Path, heatmap: Heatmap, raw_heatmap: Heatmap | None, summary: dict[str, Any], post: Any
) -> dict[str, Path]:
    written: dict[str, Path] = {}
    if getattr(post, "tile_objects", False):
        from anomalib_wsi.post_processing.tile_objects import write_tile_objects

        written["tile_objects"] = write_tile_objects(
            slide_dir / OPTIONAL_FILES["tile_objects"],
            heatmap,
            raw_heatmap,
            cells_per_object=max(1, int(getattr(post, "heatmap_cells_per_tile", 1) or 1)),
            threshold=float(post.lesion_threshold),
        )
    mode = getattr(post, "heatmap_tiff", None)
    if mode:
        from anomalib_wsi.post_processing.overlay import write_heatmap_tiff

        written["heatmap_tiff"] = write_heatmap_tiff(
            slide_dir / OPTIONAL_FILES["heatmap_tiff"],
            heatmap,
            slide_mpp=float(summary["mpp"]),
            slide_size_lv0=tuple(summary["slide_size_lv0"]),
            level_downsample=float(post.heatmap_tiff_downsample),
            mode=mode,
        )
    return written


def read_summary(path: str | Path) -> dict[str, Any]:
    """A prediction's ``summary.json`` as a dict.

    Raises:
        PredictionFileError: the file is missing or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: summary.json not found; run anomalib-wsi predict, which writes it for every slide"
        raise PredictionFileError(msg)
    try:
        data = json.loads(read_text_file(path, "summary.json", _PREDICT_AGAIN))
    except json.JSONDecodeError:
        msg = f"{path}: not a readable JSON file; re-run anomalib-wsi predict for this slide"
        raise PredictionFileError(msg) from None
    if not isinstance(data, dict):
        msg = f"{path}: expected a JSON object; re-run anomalib-wsi predict for this slide"
        raise PredictionFileError(msg)
    return data


def read_slide_score(path: str | Path) -> float:
    """The ``slide_score`` of a prediction ``summary.json``.

    Raises:
        PredictionFileError: the file is missing, not JSON, or has no finite ``slide_score``.
    """
    data = read_summary(path)
    try:
        score = float(data["slide_score"])
    except (KeyError, TypeError, ValueError):
        msg = f"{path}: no numeric 'slide_score' in this JSON; re-run anomalib-wsi predict for this slide"
        raise PredictionFileError(msg) from None
    if not math.isfinite(score):
        msg = f"{path}: slide_score is {score}; re-run anomalib-wsi predict for this slide"
        raise PredictionFileError(msg)
    return score


def read_detections(path: str | Path) -> np.ndarray:
    """Read a Camelyon16 detections CSV (no header, ``confidence,x,y`` in level-0 pixels; may be empty).

    Returns:
        ``(N, 3)`` float64 array ``confidence, x, y``.

    Raises:
        PredictionFileError: the file is missing or a row is not three numbers with a non-negative confidence.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: detections file not found; run anomalib-wsi predict, which writes it for every slide"
        raise PredictionFileError(msg)
    rows: list[tuple[float, float, float]] = []
    text = read_text_file(path, "detections file", _PREDICT_AGAIN)
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        try:
            confidence, x, y = (float(c) for c in cells)
        except ValueError:
            msg = f"{path}, line {number}: expected 'confidence,x,y' numbers, got {','.join(row)!r}"
            raise PredictionFileError(msg) from None
        if not (math.isfinite(confidence) and math.isfinite(x) and math.isfinite(y)) or confidence < 0:
            msg = f"{path}, line {number}: confidence must be a non-negative number and x, y finite"
            raise PredictionFileError(msg)
        rows.append((confidence, x, y))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def read_lesions(path: str | Path) -> list[Lesion]:
    """The lesions of a ``lesions.geojson`` written by :func:`write_slide_outputs`, with their measurements."""
    from shapely.geometry import shape

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    lesions = []
    for feature in data.get("features", []):
        measurements = feature.get("properties", {}).get("measurements", {})
        lesions.append(
            Lesion(
                polygon=shape(feature["geometry"]),
                max_score=float(measurements.get("max_score", math.nan)),
                mean_score=float(measurements.get("mean_score", math.nan)),
                area_um2=float(measurements.get("area_um2", math.nan)),
            )
        )
    return lesions


def read_slide_outputs(slide_dir: str | Path) -> SlideOutputs:
    """Read a finished slide folder back (heatmap, lesions, detections, summary).

    Raises:
        PredictionFileError: a file is missing or unreadable.
    """
    paths = output_paths(slide_dir)
    summary = read_summary(paths["summary"])
    for key, name in OPTIONAL_FILES.items():
        if name in summary.get("extra_files", []):
            paths[key] = Path(slide_dir) / name
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        msg = f"{slide_dir}: {', '.join(missing)} missing; re-run anomalib-wsi predict for this slide"
        raise PredictionFileError(msg)
    try:
        heatmap = Heatmap(
            values=np.load(paths["heatmap_npy"]),
            downsample=float(summary["heatmap_downsample"]),
            slide_id=str(summary["slide_id"]),
            slide_size_lv0=tuple(int(v) for v in summary["slide_size_lv0"]),  # type: ignore[arg-type]
        )
        lesions = read_lesions(paths["geojson"])
    except Exception as err:  # any damage to these files means the same to the caller
        msg = f"{slide_dir}: unreadable prediction files ({type(err).__name__}: {err}); re-run anomalib-wsi predict"
        raise PredictionFileError(msg) from None
    detections = read_detections(paths["detections"])
    return SlideOutputs(summary=summary, heatmap=heatmap, lesions=lesions, detections=detections, paths=paths)
