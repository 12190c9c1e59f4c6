"""``anomalib-wsi evaluate``: slide AUC and Camelyon16 lesion FROC of a prediction folder.

Inputs:

- predictions in the layout ``anomalib-wsi predict`` writes: ``<predictions>/<slide_id>/detections.csv`` (no
  header, ``confidence,x,y`` in level-0 pixels, may be empty) and ``<predictions>/<slide_id>/summary.json``
  (key ``slide_score``);
- slide labels (:func:`~anomalib_wsi.cohort.read_slide_labels`);
- ground truth of tumour slides in ``<annotations>``: ``<slide_id>.xml`` (ASAP), ``.geojson`` / ``.json``
  (QuPath), or a mask TIFF ``<slide_id>.tif`` / ``<slide_id>_mask.tif`` (tumour 255, as the official scorer
  reads it), looked up in that order. Vector annotations become level-5 masks (downsample 32) exactly as ASAP
  wrote the organisers' masks (:mod:`anomalib_wsi.evaluation.masks`); the slide size comes from the slide file
  with the same stem beside the annotation file or in ``slides``, else from the ``slide_size_lv0`` of the
  prediction's ``summary.json``, else from the annotation extent. ``report.json`` and ``per_slide.csv`` say
  which (``mask_size_source``). Masks are bounded (:data:`~anomalib_wsi.evaluation.masks.MAX_MASK_PIXELS`): a
  size beyond any scanner's (a vertex far off the slide, say) is refused with one line.

Slide ids match folders and files case-insensitively (``Test_001`` in ``reference.csv`` is ``test_001``).

Excluded by default, as the Camelyon16 organisers did: ``test_049`` (a duplicate slide) from everything, and
``test_114`` (not exhaustively annotated) from the lesion FROC (it stays in the slide AUC);
``keep_excluded=True`` keeps both. A tumour slide without a ground-truth file cannot have its lesions counted:
it is left out of the FROC with a warning (it stays in the AUC).

Outputs in ``<output>``: ``report.json``, ``report.md``, ``per_slide.csv``, ``roc.png``, ``froc.png``.

Over 500 lines on purpose: it is the one place that joins predictions, labels and ground truth per slide and writes the
report; the pure parts live in froc.py, masks.py and slide_metrics.py.
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

from anomalib_wsi.cohort import ANNOTATION_EXTENSIONS, read_slide_labels
from anomalib_wsi.errors import EvaluationError, SlideOpenError
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
from anomalib_wsi.evaluation.masks import (
    MAX_MASK_PIXELS,
    GroundTruth,
    MaskSizeSource,
    load_ground_truth,
    read_mask_tiff,
)
from anomalib_wsi.evaluation.slide_metrics import bootstrap_auc_ci, plot_froc_curve, plot_roc_curve, slide_auc
from anomalib_wsi.post_processing.outputs import read_detections, read_slide_score

__all__ = [
    "EXCLUDED_FROM_FROC",
    "EXCLUDED_SLIDES",
    "MAX_N_BOOT",
    "EvaluationReport",
    "check_options",
    "check_output_folder",
    "evaluate",
    "find_ground_truth",
    "ground_truth",
    "ground_truth_mask",
    "read_detections",
    "read_mask_tiff",
    "read_slide_score",
    "read_slide_size",
    "slide_size_for",
    "write_report",
]

logger = logging.getLogger(__name__)

#: Left out of every metric unless ``keep_excluded``: Camelyon16's test_049 is a duplicate slide.
EXCLUDED_SLIDES = frozenset({"test_049"})
#: Left out of the lesion FROC unless ``keep_excluded``: test_114 is not exhaustively annotated.
EXCLUDED_FROM_FROC = frozenset({"test_049", "test_114"})

#: Most bootstrap resamples of the slide-AUC interval (memory stays bounded: resamples are drawn in chunks).
MAX_N_BOOT = 100_000

_MASK_SUFFIXES = (".tif", ".tiff")
_MASK_NAME_ENDINGS = ("", "_mask", "_evaluation_mask")


# -- reading predictions (the prediction folder's own readers) ---------------------------------------------------


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
    return _lookup(index, slide_id, ANNOTATION_EXTENSIONS) or _lookup(
        index, slide_id, _MASK_SUFFIXES, _MASK_NAME_ENDINGS
    )


def _find_slide(slide_id: str, folders: list[Path], exclude: Path | None = None) -> Path | None:
    from anomalib_wsi.slide.reader import SLIDE_EXTENSIONS

    for folder in folders:
        index = _index_folder(folder)
        for suffix in SLIDE_EXTENSIONS:
            found = _lookup(index, slide_id, (suffix,))
            if found is not None and found != exclude:
                return found
    return None


def read_slide_size(path: str | Path) -> tuple[int, int] | None:
    """The slide's level-0 ``(width, height)`` recorded in a prediction ``summary.json`` (``slide_size_lv0``).

    Returns:
        The size, or ``None`` when the file or the key is missing (predictions of older versions) or the value
        is not two positive integers.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("slide_size_lv0")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def slide_size_for(
    path: str | Path,
    slides: str | Path | None = None,
    summary: str | Path | None = None,
    warnings: list[str] | None = None,
) -> tuple[tuple[int, int] | None, MaskSizeSource]:
    """Level-0 ``(width, height)`` for the mask of a ground-truth file, and where it came from.

    In that order: the slide with the file's stem in ``slides``, else beside the file (a slide there that
    openslide cannot open is skipped with a warning); the ``slide_size_lv0`` of the prediction's ``summary``;
    else ``(None, "annotation extent")``.
    """
    from anomalib_wsi.slide.reader import Slide

    path = Path(path)
    explicit = _find_slide(path.stem, [Path(slides)]) if slides is not None else None
    if explicit is not None:
        with Slide(explicit) as slide:
            return (int(slide.dimensions[0]), int(slide.dimensions[1])), "slide"
    beside = _find_slide(path.stem, [path.parent], exclude=path)
    if beside is not None:
        try:
            with Slide(beside) as slide:
                return (int(slide.dimensions[0]), int(slide.dimensions[1])), "slide"
        except SlideOpenError as err:
            text = f"{err}; the mask size comes from elsewhere"
            if warnings is not None:
                warnings.append(text)
            logger.warning(text)
    if summary is not None:
        size = read_slide_size(summary)
        if size is not None:
            return size, "summary.json"
    return None, "annotation extent"


def ground_truth(
    path: str | Path,
    slides: str | Path | None = None,
    downsample: int = EVALUATION_DOWNSAMPLE,
    mpp: float = CAMELYON16_MPP,
    summary: str | Path | None = None,
    max_pixels: int = MAX_MASK_PIXELS,
) -> GroundTruth:
    """The evaluation mask of a ground-truth file, sized as :func:`slide_size_for` finds the slide.

    Args:
        path: ASAP XML, QuPath GeoJSON or a mask TIFF.
        slides: folder of slides; the slide with the file's stem there (else beside the file) gives the mask size.
        downsample: downsample of the mask relative to level 0 (32: Camelyon16 level 5).
        mpp: level-0 spacing of the protocol, used for the margin when the size comes from the annotation extent.
        summary: the slide's prediction ``summary.json``, whose ``slide_size_lv0`` is the next choice.
        max_pixels: largest mask built; a larger one is refused with one line.

    Returns:
        The :class:`~anomalib_wsi.evaluation.masks.GroundTruth` (mask, size, where the size came from, warnings),
        made as ASAP made the Camelyon16 masks (see :mod:`anomalib_wsi.evaluation.masks`).
    """
    path = Path(path)
    if path.suffix.lower() in _MASK_SUFFIXES:
        return load_ground_truth(path, downsample=downsample, max_pixels=max_pixels)
    warnings: list[str] = []
    size, source = slide_size_for(path, slides, summary, warnings)
    result = load_ground_truth(path, size, source, downsample, mpp, max_pixels)
    result.warnings[:0] = warnings
    if source == "annotation extent":
        logger.debug("%s: no slide file found; mask size %s from the annotation extent", path, result.size_lv0)
    return result


def ground_truth_mask(
    path: str | Path,
    slides: str | Path | None = None,
    downsample: int = EVALUATION_DOWNSAMPLE,
    mpp: float = CAMELYON16_MPP,
    summary: str | Path | None = None,
) -> np.ndarray:
    """The boolean tumour mask of a ground-truth file at ``downsample`` (see :func:`ground_truth`).

    Returns:
        Boolean (H, W) mask, ``(floor(height / downsample), floor(width / downsample))`` of the slide; without a
        slide or a recorded slide size, the annotation extent from the origin plus a margin wider than the lesion
        growth.
    """
    return ground_truth(path, slides, downsample, mpp, summary).mask


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


def check_options(n_boot: int = 1000, mpp: float = CAMELYON16_MPP, seed: int = 0) -> None:
    """Refuse, in one line naming the option, an evaluation setting out of range.

    Raises:
        EvaluationError: ``n_boot`` is not an integer from 1 to :data:`MAX_N_BOOT`, ``mpp`` is not a positive
            finite number, or ``seed`` is negative.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or not 1 <= n_boot <= MAX_N_BOOT:
        msg = (
            f"--n-boot {n_boot}: the bootstrap needs 1 to {MAX_N_BOOT:,} resamples (1,000 give a stable 95% "
            "interval); pass e.g. --n-boot 1000"
        )
        raise EvaluationError(msg)
    if isinstance(mpp, bool) or not isinstance(mpp, int | float | np.number) or not (math.isfinite(mpp) and mpp > 0):
        msg = (
            f"--mpp {mpp}: the level-0 spacing must be a positive number of µm per pixel; pass 0.243 for "
            "Camelyon16 or the slides' own spacing (e.g. 0.5)"
        )
        raise EvaluationError(msg)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        msg = f"seed {seed}: the bootstrap seed must be a non-negative integer; pass e.g. seed=0"
        raise EvaluationError(msg)


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
        n_boot: bootstrap resamples for the AUC interval, 1 to :data:`MAX_N_BOOT`.
        seed: bootstrap seed (a non-negative integer).
        mpp: level-0 spacing assumed by the FROC protocol (Camelyon16: 0.243 µm for every slide); positive.

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        EvaluationError: an option is out of range, a labelled slide has no predictions, an input file cannot be
            read, or a ground-truth mask would exceed :data:`~anomalib_wsi.evaluation.masks.MAX_MASK_PIXELS`.
    """
    check_options(n_boot=n_boot, mpp=mpp, seed=seed)
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
    froc_inputs: list[tuple[dict[str, Any], np.ndarray, Path | None, Path]] = []
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
            "mask_size_source": None,
            "mask_size_lv0": None,
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
        froc_inputs.append((row, detections, gt_path, folder / "summary.json"))

    froc: FROCResult | None = None
    if froc_inputs:

        def _slides() -> Iterator[SlideFROC]:
            for row, detections, gt_path, summary in tqdm(froc_inputs, desc="FROC", unit="slide"):
                mask = None
                if gt_path is not None:
                    truth = ground_truth(gt_path, slides, EVALUATION_DOWNSAMPLE, mpp, summary)
                    mask = truth.mask
                    row["mask_size_source"] = truth.size_source
                    row["mask_size_lv0"] = list(truth.size_lv0)
                    warnings.extend(f"{row['slide_id']}: {w}" for w in truth.warnings)
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
        "mask_rule": "ASAP AnnotationToMask, nearest-neighbour pyramid: level-5 pixel (r, c) is the winding-number "
        "test of level-0 point (32c, 32r); floor size; tumour groups first, then non-tumour groups clear",
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

    Raises:
        EvaluationError: ``output`` is a file, or the report cannot be written there.
    """
    output = check_output_folder(output)
    try:
        return _write_report(report, output)
    except OSError as err:
        msg = f"--output {output}: cannot write the report ({err.strerror or err}); pass a writable folder"
        raise EvaluationError(msg) from None


def check_output_folder(output: str | Path) -> Path:
    """``output`` as a path, refused in one line when it (or a folder above it) is an existing file.

    Raises:
        EvaluationError: ``output`` or one of its parents exists and is not a folder.
    """
    output = Path(output)
    for candidate in (output, *output.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "is a file" if candidate == output else f"lies under the file {candidate}"
            msg = f"--output {output}: {where}, not a folder; pass a folder for the report (created when missing)"
            raise EvaluationError(msg)
    return output


def _write_report(report: EvaluationReport, output: Path) -> dict[str, Path]:
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
