"""Slide prediction: :class:`WSIEngine` and the parts it is made of.

- :mod:`~anomalib_wsi.inference.engine`: :class:`WSIEngine` (resolve -> plan -> stream -> finish).
- :mod:`~anomalib_wsi.inference.settings`: :class:`PredictionSettings`, :class:`SlidePrediction`,
  :class:`PredictionRun` (what ``predict`` returns), :class:`SlideFailure`.
- :mod:`~anomalib_wsi.inference.loader`: slide jobs, reading order, the shared-memory tile ring and its DataLoader.
- :mod:`~anomalib_wsi.inference.forward`: the device forward (autocast, channels-last, compile, async copies).
- :mod:`~anomalib_wsi.inference.resume`: fingerprints and reading finished slides back.
- :mod:`~anomalib_wsi.inference.distributed`: ranks, default reader workers, the run tables.
- :mod:`~anomalib_wsi.inference.checkpoint`: :func:`load_model`, :func:`trained_checkpoint`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_wsi.lazy import lazy_attributes

if TYPE_CHECKING:
    from anomalib_wsi.inference.checkpoint import load_model, trained_checkpoint
    from anomalib_wsi.inference.distributed import default_num_workers, distributed_rank
    from anomalib_wsi.inference.engine import WSIEngine
    from anomalib_wsi.inference.settings import PredictionRun, PredictionSettings, SlideFailure, SlidePrediction

__all__ = [
    "PredictionRun",
    "PredictionSettings",
    "SlideFailure",
    "SlidePrediction",
    "WSIEngine",
    "default_num_workers",
    "distributed_rank",
    "load_model",
    "trained_checkpoint",
]

# imported on first use, so that the command line's --help does not load anomalib and torch
_LAZY = {
    "load_model": "anomalib_wsi.inference.checkpoint",
    "trained_checkpoint": "anomalib_wsi.inference.checkpoint",
    "default_num_workers": "anomalib_wsi.inference.distributed",
    "distributed_rank": "anomalib_wsi.inference.distributed",
    "WSIEngine": "anomalib_wsi.inference.engine",
    "PredictionRun": "anomalib_wsi.inference.settings",
    "PredictionSettings": "anomalib_wsi.inference.settings",
    "SlideFailure": "anomalib_wsi.inference.settings",
    "SlidePrediction": "anomalib_wsi.inference.settings",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
