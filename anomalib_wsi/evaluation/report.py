"""``anomalib-wsi evaluate``: slide AUC and Camelyon16 lesion FROC of a prediction folder.

Inputs:

- predictions in the layout ``anomalib-wsi predict`` writes: ``<predictions>/<slide_id>/detections.csv`` (no
  header, ``confidence,x,y`` in level-0 pixels, may be empty) and ``<predictions>/<slide_id>/summary.json``
  (key ``slide_score``);
- slide labels (:func:`~anomalib_wsi.evaluation.labels.read_slide_labels`);
- ground truth of tumour slides in ``<annotations>``: ``<slide_id>.xml`` (ASAP), ``.geojson`` / ``.json``
  (QuPath), or a mask TIFF ``<slide_id>.tif`` / ``<slide_id>_mask.tif`` (tumour 1 or 255), looked up in that
  order. Vector annotations are rasterised at level 5 (downsample 32); the slide size comes from the slide file
  with the same stem beside the annotation file or in ``slides``, else from the annotation extent.

Slide ids match folders and files case-insensitively (``Test_001`` in ``reference.csv`` is ``test_001``).

Excluded by default, as the Camelyon16 organisers did: ``test_049`` (a duplicate slide) from everything, and
``test_114`` (not exhaustively annotated) from the lesion FROC (it stays in the slide AUC);
``keep_excluded=True`` keeps both. A tumour slide without a ground-truth file cannot have its lesions counted:
it is left out of the FROC with a warning (it stays in the AUC).

Outputs in ``<output>``: ``report.json``, ``report.md``, ``per_slide.csv``, ``roc.png``, ``froc.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from anomalib_wsi.errors import SlideOpenError
from anomalib_wsi.evaluation.froc import (
    CAMELYON16_MPP,
    EVALUATION_DOWNSAMPLE,
    EVALUATION_LEVEL,
    FROC_FP_RATES,
    GROWTH_UM,
    ITC_MAJOR_AXIS_UM,
    FROCResult,
    SlideFROC,
    evaluate_froc,
    evaluate_slide_froc,
    growth_threshold_px,
)
from anomalib_wsi.evaluation.labels import EvaluationError, read_slide_labels
from anomalib_wsi.evaluation.slide_metrics import bootstrap_auc_ci, plot_froc_curve, plot_roc_curve, slide_auc

__all__ = [
    "EXCLUDED_FROM_FROC",
    "EXCLUDED_SLIDES",
    "EvaluationReport",
    "evaluate",
    "evaluate_command",
    "find_ground_truth",
    "ground_truth_mask",
    "read_detections",
    "read_mask_tiff",
    "read_slide_score",
    "write_report",
]

logger = logging.getLogger(__name__)

#: Left out of every metric unless ``keep_excluded``: Camelyon16's test_049 is a duplicate slide.
EXCLUDED_SLIDES = frozenset({"test_049"})
#: Left out of the lesion FROC unless ``keep_excluded``: test_114 is not exhaustively annotated.
EXCLUDED_FROM_FROC = frozenset({"test_049", "test_114"})

_VECTOR_SUFFIXES = (".xml", ".geojson", ".json")
_MASK_SUFFIXES = (".tif", ".tiff")
_MASK_NAME_ENDINGS = ("", "_mask", "_evaluation_mask")


# -- reading predictions ----------------------------------------------------------------------------------------


def read_detections(path: str | Path) -> np.ndarray:
    """Read a Camelyon16 detections CSV (no header, ``confidence,x,y`` in level-0 pixels; may be empty).

    Returns:
        ``(N, 3)`` float64 array ``confidence, x, y``.

    Raises:
        EvaluationError: the file is missing or a row is not three numbers with a non-negative confidence.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: detections file not found; run anomalib-wsi predict, which writes it for every slide"
        raise EvaluationError(msg)
    rows: list[tuple[float, float, float]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            try:
                confidence, x, y = (float(c) for c in cells)
            except ValueError:
                msg = f"{path}, line {number}: expected 'confidence,x,y' numbers, got {','.join(row)!r}"
                raise EvaluationError(msg) from None
            if not (math.isfinite(confidence) and math.isfinite(x) and math.isfinite(y)) or confidence < 0:
                msg = f"{path}, line {number}: confidence must be a non-negative number and x, y finite"
                raise EvaluationError(msg)
            rows.append((confidence, x, y))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def read_slide_score(path: str | Path) -> float:
    """The ``slide_score`` of a prediction ``summary.json``.

    Raises:
        EvaluationError: the file is missing, not JSON, or has no finite ``slide_score``.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: summary.json not found; run anomalib-wsi predict, which writes it for every slide"
        raise EvaluationError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        score = float(data["slide_score"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        msg = f"{path}: no numeric 'slide_score' in this JSON; re-run anomalib-wsi predict for this slide"
        raise EvaluationError(msg) from None
    if not math.isfinite(score):
        msg = f"{path}: slide_score is {score}; re-run anomalib-wsi predict for this slide"
        raise EvaluationError(msg)
    return score


def _prediction_folders(predictions: Path) -> dict[str, Path]:
    if not predictions.is_dir():
        msg = f"{predictions}: predictions folder not found; pass the --output folder of anomalib-wsi predict"
        raise EvaluationError(msg)
    folders: dict[str, Path] = {}
    for sub in sorted(predictions.iterdir()):
        if sub.is_dir() and ((sub / "summary.json").exists() or (sub / "detections.csv").exists()):
            folders.setdefault(sub.name, sub)
            folders.setdefault(sub.name.lower(), sub)
    return folders


# -- ground truth -----------------------------------------------------------------------------------------------


def _index_folder(folder: Path | None) -> dict[str, list[Path]]:
    """Files of a folder by lower-case name (not recursive); empty when the folder is absent."""
    index: dict[str, list[Path]] = {}
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                index.setdefault(path.name.lower(), []).append(path)
    return index


def _lookup(
    index: Mapping[str, list[Path]], slide_id: str, suffixes: tuple[str, ...], endings: tuple[str, ...] = ("",)
) -> Path | None:
    for ending in endings:
        for suffix in suffixes:
            found = index.get(f"{slide_id}{ending}{suffix}".lower())
            if found:
                exact = [p for p in found if p.name == f"{slide_id}{ending}{suffix}"]
                return (exact or found)[0]
    return None


def find_ground_truth(annotations: str | Path, slide_id: str) -> Path | None:
    """The ground-truth file of a slide: ``<slide_id>.xml``, ``.geojson``, ``.json``, then a mask TIFF
    ``<slide_id>.tif(f)`` or ``<slide_id>_mask.tif(f)``; case-insensitive; ``None`` when there is none."""
    return _ground_truth_in(_index_folder(Path(annotations)), slide_id)


def _ground_truth_in(index: Mapping[str, list[Path]], slide_id: str) -> Path | None:
    return _lookup(index, slide_id, _VECTOR_SUFFIXES) or _lookup(index, slide_id, _MASK_SUFFIXES, _MASK_NAME_ENDINGS)


def _find_slide(slide_id: str, folders: list[Path], exclude: Path | None = None) -> Path | None:
    from anomalib_wsi.slide.reader import SLIDE_EXTENSIONS

    for folder in folders:
        index = _index_folder(folder)
        for suffix in SLIDE_EXTENSIONS:
            found = _lookup(index, slide_id, (suffix,))
            if found is not None and found != exclude:
                return found
    return None


def _mask_shape(size_lv0: tuple[int, int], downsample: int) -> tuple[int, int]:
    width, height = size_lv0
    return math.ceil(height / downsample), math.ceil(width / downsample)


def read_mask_tiff(path: str | Path, downsample: int = EVALUATION_DOWNSAMPLE) -> np.ndarray:
    """A ground-truth mask TIFF as a boolean mask at ``downsample`` (tumour = value 1 or 255).

    The pyramid level whose size matches ``downsample`` is read as is (Camelyon16 masks have one at level 5);
    otherwise the nearest finer level is resized with nearest-neighbour sampling (a mask without a pyramid is
    read whole: keep such files small). Colour masks use channel 0.

    Returns:
        Boolean (ceil(H / downsample), ceil(W / downsample)) mask, H x W the mask's level-0 size.

    Raises:
        EvaluationError: the file cannot be read as a TIFF.
    """
    import cv2
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            base = tif.series[0].levels[0]
            width0, height0 = base.shape[base.axes.index("X")], base.shape[base.axes.index("Y")]
            # Pyramid levels (SubIFDs or reduced-resolution pages) and any other page of the same aspect ratio.
            candidates = []
            for series in tif.series:
                for level in series.levels:
                    width, height = level.shape[level.axes.index("X")], level.shape[level.axes.index("Y")]
                    if abs(width / height - width0 / height0) <= 0.02 * width0 / height0:
                        candidates.append((width0 / width, level))
            # The coarsest level no coarser than the target.
            chosen = max((c for c in candidates if c[0] <= downsample * 1.01), key=lambda c: c[0])[1]
            array = chosen.asarray()
            axes = chosen.axes
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as err:
        msg = f"{path}: cannot read this mask TIFF ({type(err).__name__}: {err}); pass a tumour mask TIFF or ASAP XML"
        raise EvaluationError(msg) from None
    if array.ndim > 2:  # channels (or other axes): keep Y, X and the first of the rest, as the official code does
        array = np.moveaxis(array, (axes.index("Y"), axes.index("X")), (0, 1))
        array = array.reshape(array.shape[0], array.shape[1], -1)[..., 0]
    unexpected = [int(v) for v in np.unique(array) if v not in (0, 1, 255)]
    if unexpected:
        logger.warning("%s: mask values %s are not 0, 1 or 255; only 1 and 255 are tumour", path, unexpected[:5])
    mask = ((array == 1) | (array == 255)).astype(np.uint8)
    target = _mask_shape((width0, height0), downsample)
    if mask.shape != target:
        mask = cv2.resize(mask, (target[1], target[0]), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


def ground_truth_mask(
    path: str | Path,
    slides: str | Path | None = None,
    downsample: int = EVALUATION_DOWNSAMPLE,
    mpp: float = CAMELYON16_MPP,
) -> np.ndarray:
    """The boolean tumour mask (tumour minus non-tumour regions) of a ground-truth file at ``downsample``.

    Args:
        path: ASAP XML, QuPath GeoJSON or a mask TIFF.
        slides: folder of slides; the slide with the file's stem there (else beside the file) gives the mask size.
        downsample: downsample of the mask relative to level 0 (32: Camelyon16 level 5).
        mpp: level-0 spacing of the protocol, used for the margin when the size comes from the annotation extent.

    Returns:
        Boolean (H, W) mask, (ceil(height / downsample), ceil(width / downsample)) of the slide; without a slide,
        the annotation extent from the origin plus a margin wider than the lesion growth.
    """
    path = Path(path)
    if path.suffix.lower() in _MASK_SUFFIXES:
        return read_mask_tiff(path, downsample)
    from anomalib_wsi.annotations import read_annotations
    from anomalib_wsi.annotations.labels import region_mask
    from anomalib_wsi.slide.reader import Slide

    size_lv0: tuple[int, int] | None = None
    explicit = _find_slide(path.stem, [Path(slides)]) if slides is not None else None
    if explicit is not None:
        with Slide(explicit) as slide:
            size_lv0 = slide.dimensions
    else:
        beside = _find_slide(path.stem, [path.parent], exclude=path)
        if beside is not None:
            try:
                with Slide(beside) as slide:
                    size_lv0 = slide.dimensions
            except SlideOpenError as err:
                logger.warning("%s; using the annotation extent for the mask size", err)
    if size_lv0 is not None:
        annotations = read_annotations(path, slide_size=size_lv0)
    else:
        annotations = read_annotations(path)
        region = annotations.region
        margin = 2 * downsample * (math.ceil(growth_threshold_px(mpp, downsample)) + 1)
        if region.is_empty:
            size_lv0 = (downsample, downsample)
        else:
            _, _, max_x, max_y = region.bounds
            size_lv0 = (math.ceil(max_x) + margin, math.ceil(max_y) + margin)
        logger.debug("%s: no slide file found; mask size %s from the annotation extent", path, size_lv0)
    return np.asarray(region_mask(annotations, size_lv0, downsample), dtype=bool)


# -- the evaluation ---------------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate`.

    Attributes:
        slides: one row per labelled slide (id, label, score, inclusion, FROC counts, notes).
        auc: slide AUC (``None`` when the evaluated slides lack one class).
        auc_ci: bootstrap confidence interval of the AUC (``None`` with the AUC).
        froc: the lesion FROC (``None`` when no slide is in the FROC).
        settings: the protocol constants and options used.
        warnings: what was left out and why, one sentence each.
    """

    slides: list[dict[str, Any]]
    auc: float | None
    auc_ci: tuple[float, float] | None
    froc: FROCResult | None
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready content of ``report.json``."""
        froc = self.froc
        in_auc = [s for s in self.slides if s["in_auc"]]
        in_froc = [s for s in self.slides if s["in_froc"]]

        def _num(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else float(value)

        return {
            "slide_auc": _num(self.auc),
            "slide_auc_ci": list(self.auc_ci) if self.auc_ci is not None else None,
            "froc_score": _num(froc.score) if froc is not None else None,
            "froc_sensitivities": (
                {f"{rate:g}": _num(sens) for rate, sens in zip(froc.fp_rates, froc.sensitivities, strict=True)}
                if froc is not None
                else None
            ),
            "counts": {
                "labelled_slides": len(self.slides),
                "auc_slides": len(in_auc),
                "auc_tumour": sum(s["label"] for s in in_auc),
                "auc_normal": sum(1 - s["label"] for s in in_auc),
                "froc_slides": len(in_froc),
                "froc_tumour": sum(s["label"] for s in in_froc),
                "lesions": froc.num_lesions if froc is not None else 0,
                "itc": froc.num_itc if froc is not None else 0,
                "lesions_detected": sum(s["lesions_detected"] or 0 for s in in_froc),
                "false_positives": sum(s["false_positives"] or 0 for s in in_froc),
                "excluded": [s["slide_id"] for s in self.slides if not s["in_auc"]],
                "excluded_from_froc": [s["slide_id"] for s in self.slides if s["in_auc"] and not s["in_froc"]],
            },
            "froc_curve": (
                {"fps_per_slide": froc.fps_per_slide.tolist(), "sensitivity": froc.sensitivity.tolist()}
                if froc is not None
                else None
            ),
            "settings": self.settings,
            "warnings": self.warnings,
            "slides": self.slides,
        }


def evaluate(
    predictions: str | Path,
    annotations: str | Path,
    labels: str | Path,
    slides: str | Path | None = None,
    keep_excluded: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    mpp: float = CAMELYON16_MPP,
) -> EvaluationReport:
    """Slide AUC (with a bootstrap CI) and Camelyon16 lesion FROC of a prediction folder.

    Args:
        predictions: output folder of ``anomalib-wsi predict`` (``<slide_id>/detections.csv``, ``summary.json``).
        annotations: folder of ground truth (ASAP XML, GeoJSON or mask TIFFs named after the slides).
        labels: slide labels (``slide_id,label`` CSV or Camelyon16's ``reference.csv``).
        slides: folder of slides, for the size of the masks rasterised from vector ground truth.
        keep_excluded: keep test_049 and test_114, which Camelyon16 excludes (see the module docstring).
        n_boot: bootstrap resamples for the AUC interval.
        seed: bootstrap seed.
        mpp: level-0 spacing assumed by the FROC protocol (Camelyon16: 0.243 µm for every slide).

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        EvaluationError: a labelled slide has no predictions, or an input file cannot be read.
    """
    predictions, annotations = Path(predictions), Path(annotations)
    slide_labels = read_slide_labels(labels)
    if not annotations.is_dir():
        msg = f"{annotations}: annotations folder not found; pass the folder of ground-truth XML / GeoJSON / masks"
        raise EvaluationError(msg)
    folders = _prediction_folders(predictions)
    annotation_index = _index_folder(annotations)
    excluded_all = set() if keep_excluded else EXCLUDED_SLIDES
    excluded_froc = set() if keep_excluded else EXCLUDED_FROM_FROC
    evaluated = [sid for sid in slide_labels if sid.lower() not in excluded_all]
    missing = [sid for sid in evaluated if sid not in folders and sid.lower() not in folders]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        msg = (
            f"{predictions}: no predictions for {len(missing)} labelled slide(s): {shown}; "
            f"run anomalib-wsi predict on them or remove them from {labels}"
        )
        raise EvaluationError(msg)
    used = {(folders.get(sid) or folders[sid.lower()]).name for sid in evaluated}
    unlabelled = sorted({p.name for p in folders.values()} - used)
    if unlabelled:
        logger.info("%d prediction folder(s) without a label ignored: %s", len(unlabelled), ", ".join(unlabelled[:5]))

    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    froc_inputs: list[tuple[dict[str, Any], np.ndarray, Path | None]] = []
    for slide_id, label in slide_labels.items():
        row: dict[str, Any] = {
            "slide_id": slide_id,
            "label": label,
            "slide_score": None,
            "in_auc": slide_id.lower() not in excluded_all,
            "in_froc": False,
            "ground_truth": None,
            "detections": None,
            "lesions": None,
            "itc": None,
            "lesions_detected": None,
            "false_positives": None,
            "itc_hits": None,
            "note": "",
        }
        rows.append(row)
        if not row["in_auc"]:
            row["note"] = "excluded by the Camelyon16 protocol (duplicate slide)"
            continue
        folder = folders.get(slide_id) or folders[slide_id.lower()]
        row["slide_score"] = read_slide_score(folder / "summary.json")
        detections = read_detections(folder / "detections.csv")
        row["detections"] = len(detections)
        if slide_id.lower() in excluded_froc:
            row["note"] = "excluded from the FROC by the Camelyon16 protocol (annotations not exhaustive)"
            continue
        gt_path = _ground_truth_in(annotation_index, slide_id)
        if label == 0 and gt_path is not None:
            logger.info("%s: labelled normal; its ground truth %s is not used", slide_id, gt_path.name)
            gt_path = None
        if label == 1 and gt_path is None:
            text = f"{slide_id}: tumour slide without a ground-truth file in {annotations}; left out of the FROC"
            warnings.append(text)
            logger.warning(text)
            row["note"] = "no ground truth: not in the FROC"
            continue
        row["in_froc"] = True
        row["ground_truth"] = gt_path.name if gt_path is not None else None
        froc_inputs.append((row, detections, gt_path))

    froc: FROCResult | None = None
    if froc_inputs:

        def _slides() -> Iterator[SlideFROC]:
            for row, detections, gt_path in tqdm(froc_inputs, desc="FROC", unit="slide"):
                mask = None if gt_path is None else ground_truth_mask(gt_path, slides, EVALUATION_DOWNSAMPLE, mpp)
                result = evaluate_slide_froc(row["slide_id"], detections, mask, mpp, EVALUATION_DOWNSAMPLE)
                row.update(
                    lesions=result.num_lesions,
                    itc=result.num_itc,
                    lesions_detected=result.num_detected,
                    false_positives=result.num_fp,
                    itc_hits=result.num_itc_hits,
                )
                if gt_path is not None and result.num_lesions + result.num_itc == 0:
                    text = f"{row['slide_id']}: the ground truth {gt_path.name} holds no tumour region"
                    warnings.append(text)
                    logger.warning(text)
                yield result

        froc = evaluate_froc(_slides(), mpp=mpp, downsample=EVALUATION_DOWNSAMPLE)
        if froc.num_lesions == 0:
            warnings.append("no lesion to detect in the FROC slides: the FROC score is undefined")

    auc_rows = [r for r in rows if r["in_auc"]]
    y = [r["label"] for r in auc_rows]
    scores = [r["slide_score"] for r in auc_rows]
    auc: float | None = None
    auc_ci: tuple[float, float] | None = None
    if 0 < sum(y) < len(y):
        auc = slide_auc(y, scores)
        auc_ci = bootstrap_auc_ci(y, scores, n_boot=n_boot, seed=seed)
    else:
        text = f"the slide AUC needs tumour and normal slides; got {sum(y)} tumour of {len(y)}"
        warnings.append(text)
        logger.warning(text)
    settings = {
        "mpp_lv0": mpp,
        "evaluation_level": EVALUATION_LEVEL,
        "evaluation_downsample": EVALUATION_DOWNSAMPLE,
        "lesion_merge_distance_um": GROWTH_UM,
        "growth_threshold_px": growth_threshold_px(mpp),
        "itc_major_axis_um": ITC_MAJOR_AXIS_UM,
        "fp_rates": list(FROC_FP_RATES),
        "keep_excluded": keep_excluded,
        "n_boot": n_boot,
        "seed": seed,
        "ci_level": 0.95,
        "predictions": str(predictions),
        "annotations": str(annotations),
        "labels": str(labels),
        "slides": str(slides) if slides is not None else None,
    }
    return EvaluationReport(rows, auc, auc_ci, froc, settings, warnings)


# -- writing ----------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _markdown(report: EvaluationReport) -> str:
    data = report.to_dict()
    counts = data["counts"]
    ci = data["slide_auc_ci"]
    lines = [
        "# Evaluation report",
        "",
        "| metric | value |",
        "|---|---|",
        f"| slide AUC | {_fmt(data['slide_auc'])} |",
        f"| slide AUC 95% CI (bootstrap, {report.settings['n_boot']} resamples) | "
        + (f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "-")
        + " |",
        f"| FROC score (Camelyon16) | {_fmt(data['froc_score'])} |",
    ]
    for rate, sens in (data["froc_sensitivities"] or {}).items():
        lines.append(f"| sensitivity at {rate} FP per slide | {_fmt(sens)} |")
    lines += [
        f"| slides in the AUC (tumour / normal) | {counts['auc_slides']} ({counts['auc_tumour']} / "
        f"{counts['auc_normal']}) |",
        f"| slides in the FROC (tumour) | {counts['froc_slides']} ({counts['froc_tumour']}) |",
        f"| lesions counted / detected (any confidence) | {counts['lesions']} / {counts['lesions_detected']} |",
        f"| isolated tumour cells set aside | {counts['itc']} |",
        f"| false positives (all confidences) | {counts['false_positives']} |",
        "",
        f"Protocol: Camelyon16 (level-5 masks at {report.settings['mpp_lv0']:g} µm level-0 spacing"
        f"{' as the challenge fixed it' if report.settings['mpp_lv0'] == CAMELYON16_MPP else ''}, lesions within "
        "75 µm merged, ITC below 275 µm major axis ignored, FROC = mean sensitivity at 1/4, 1/2, 1, 2, 4, 8 FP "
        "per slide).",
    ]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    lines += [
        "",
        "## Slides",
        "",
        "| slide | label | score | lesions | ITC | detected | FP | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report.slides:
        lines.append(
            f"| {s['slide_id']} | {'tumour' if s['label'] else 'normal'} | {_fmt(s['slide_score'], 4)} | "
            f"{_fmt(s['lesions'])} | {_fmt(s['itc'])} | {_fmt(s['lesions_detected'])} | "
            f"{_fmt(s['false_positives'])} | {s['note']} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: EvaluationReport, output: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``per_slide.csv``, ``roc.png`` and ``froc.png`` into ``output``.

    The ROC figure needs both classes and the FROC figure a counted lesion; each is skipped (with a log line)
    otherwise.

    Returns:
        The paths written, by name.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["report.json"] = output / "report.json"
    written["report.json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    written["report.md"] = output / "report.md"
    written["report.md"].write_text(_markdown(report), encoding="utf-8")
    written["per_slide.csv"] = output / "per_slide.csv"
    columns = list(report.slides[0]) if report.slides else ["slide_id"]
    with written["per_slide.csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in s.items()} for s in report.slides)
    auc_rows = [s for s in report.slides if s["in_auc"]]
    if report.auc is not None:
        written["roc.png"] = plot_roc_curve(
            [s["label"] for s in auc_rows], [s["slide_score"] for s in auc_rows], output / "roc.png", report.auc_ci
        )
    else:
        logger.info("roc.png not written: the slide AUC is undefined")
    froc = report.froc
    if froc is not None and froc.num_lesions > 0:
        written["froc.png"] = plot_froc_curve(
            froc.fps_per_slide, froc.sensitivity, output / "froc.png", froc.score, froc.fp_rates, froc.sensitivities
        )
    else:
        logger.info("froc.png not written: no lesion to detect")
    return written


def evaluate_command(
    predictions: str | Path,
    annotations: str | Path,
    labels: str | Path,
    output: str | Path,
    slides: str | Path | None = None,
    keep_excluded: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    mpp: float = CAMELYON16_MPP,
) -> int:
    """``anomalib-wsi evaluate``: evaluate a prediction folder and write the report (see the module docstring).

    Args:
        predictions: output folder of ``anomalib-wsi predict``.
        annotations: folder of ground-truth ASAP XML / GeoJSON / mask TIFFs named after the slides.
        labels: ``slide_id,label`` CSV or Camelyon16's ``reference.csv``.
        output: folder for ``report.json``, ``report.md``, ``per_slide.csv``, ``roc.png``, ``froc.png``.
        slides: folder of slides, for the size of the ground-truth masks.
        keep_excluded: keep test_049 (duplicate, excluded from everything) and test_114 (not exhaustively
            annotated, excluded from the FROC), which the Camelyon16 protocol leaves out.
        n_boot: bootstrap resamples for the AUC interval.
        seed: bootstrap seed.
        mpp: level-0 spacing the FROC protocol assumes (Camelyon16: 0.243 µm/px for every slide); set the
            slides' own spacing for other data (the synthetic demo: 0.5), so that 75 µm and 275 µm stay true.

    Returns:
        0.
    """
    report = evaluate(predictions, annotations, labels, slides, keep_excluded, n_boot=n_boot, seed=seed, mpp=mpp)
    written = write_report(report, output)
    data = report.to_dict()
    ci = data["slide_auc_ci"]
    logger.info(
        "slide AUC %s (95%% CI %s), FROC score %s over %d slides / %d lesions; report in %s",
        _fmt(data["slide_auc"]),
        f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
        _fmt(data["froc_score"]),
        data["counts"]["froc_slides"],
        data["counts"]["lesions"],
        written["report.json"],
    )
    return 0
