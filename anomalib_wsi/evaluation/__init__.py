"""Evaluation: Camelyon16 lesion-level FROC, ground-truth masks as ASAP made them, slide AUC with a bootstrap CI,
and ``anomalib-wsi evaluate``."""

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
from anomalib_wsi.evaluation.labels import EvaluationError, read_slide_labels
from anomalib_wsi.evaluation.masks import GroundTruth, asap_region_mask, load_ground_truth
from anomalib_wsi.evaluation.report import EvaluationReport, evaluate, evaluate_command
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
    "evaluate_command",
    "evaluate_froc",
    "load_ground_truth",
    "read_slide_labels",
    "slide_auc",
]
