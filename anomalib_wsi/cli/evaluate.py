"""``anomalib-wsi evaluate``: slide AUC and the Camelyon16 lesion FROC of a prediction folder."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["parser", "run"]


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
    from anomalib_wsi.evaluation.report import evaluate_command

    return int(evaluate_command(**options) or 0)
