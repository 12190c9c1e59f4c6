"""Evaluation: Camelyon16 lesion-level FROC, ground-truth masks as ASAP made them, slide AUC with a bootstrap CI,
and ``anomalib-wsi evaluate``."""

from anomalib_wsi.cohort import read_slide_labels
from anomalib_wsi.errors import EvaluationError
from anomalib_wsi.evaluation.froc import (
    CAMELYON16_MPP,
    FROC_FP_RATES,
    FROCResult,
    SlideFROC,
    compute_evaluation_mask,
    compute_fp_tp_probs,
    compute_froc_curve_data,
    compute_froc_score,
    evaluate_froc,
)
from anomalib_wsi.evaluation.masks import GroundTruth, asap_region_mask, load_ground_truth
from anomalib_wsi.evaluation.report import EvaluationReport, evaluate, write_report
from anomalib_wsi.evaluation.slide_metrics import bootstrap_auc_ci, slide_auc

__all__ = [
    "CAMELYON16_MPP",
    "FROC_FP_RATES",
    "EvaluationError",
    "EvaluationReport",
    "FROCResult",
    "GroundTruth",
    "SlideFROC",
    "asap_region_mask",
    "bootstrap_auc_ci",
    "compute_evaluation_mask",
    "compute_fp_tp_probs",
    "compute_froc_curve_data",
    "compute_froc_score",
    "evaluate",
    "evaluate_froc",
    "load_ground_truth",
    "read_slide_labels",
    "slide_auc",
    "write_report",
]
