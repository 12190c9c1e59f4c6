"""``anomalib-wsi evaluate``: slide AUC and the Camelyon16 lesion FROC of a prediction folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from anomalib_wsi.evaluation.froc import CAMELYON16_MPP

__all__ = ["evaluate_command", "parser", "run"]

logger = logging.getLogger(__name__)


def parser() -> ArgumentParser:
    """The sub-command's options."""
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


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    return evaluate_command(**options)


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

    Raises:
        EvaluationError: an option is out of range, ``output`` is a file, or an input cannot be used (one line each).
    """
    from anomalib_wsi.evaluation.report import check_options, check_output_folder, evaluate, write_report

    check_options(n_boot=n_boot, mpp=mpp, seed=seed)
    check_output_folder(output)
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


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"
