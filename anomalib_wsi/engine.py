"""Kept for code written against earlier versions: ``anomalib_wsi.engine`` re-exports :mod:`anomalib_wsi.inference`.

New code imports from :mod:`anomalib_wsi.inference` (or ``anomalib_wsi.WSIEngine``).
"""

from __future__ import annotations

from anomalib_wsi.inference import (
    PredictionRun,
    PredictionSettings,
    SlidePrediction,
    WSIEngine,
    default_num_workers,
    distributed_rank,
    load_model,
    trained_checkpoint,
)

__all__ = [
    "PredictionRun",
    "PredictionSettings",
    "SlidePrediction",
    "WSIEngine",
    "default_num_workers",
    "distributed_rank",
    "load_model",
    "trained_checkpoint",
]
