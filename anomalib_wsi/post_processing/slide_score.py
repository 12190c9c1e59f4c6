"""The slide score: one number per slide from its heatmap (or tile scores), higher = more likely tumour.

Example:
    >>> import numpy as np
    >>> slide_score(np.array([0.1, 0.9, 0.7, np.nan]), method="topk", top_k=2)
    0.8
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anomalib_wsi.post_processing.stitch import Heatmap

__all__ = ["SLIDE_SCORE_METHODS", "slide_score"]

#: Names accepted by :func:`slide_score`.
SLIDE_SCORE_METHODS = ("max", "topk", "mean_above")


def slide_score(
    heatmap_or_scores: Heatmap | np.ndarray | Sequence[float],
    method: str = "max",
    top_k: int = 10,
    threshold: float = 0.5,
) -> float:
    """One score per slide from its heatmap or tile scores (NaN ignored; 0.0 when nothing was scored).

    Args:
        heatmap_or_scores: a :class:`Heatmap` or an array of scores of any shape.
        method: ``"max"`` (highest value), ``"topk"`` (mean of the ``top_k`` highest values, or of all when
            fewer), or ``"mean_above"`` (He & Li 2023: mean of the values strictly above ``threshold``, 0 if none).
        top_k: number of values averaged by ``"topk"``.
        threshold: threshold of ``"mean_above"``.

    Returns:
        The slide score.
    """
    raw = heatmap_or_scores.values if isinstance(heatmap_or_scores, Heatmap) else heatmap_or_scores
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if method not in SLIDE_SCORE_METHODS:
        msg = f"unknown slide score method {method!r}; use one of {', '.join(SLIDE_SCORE_METHODS)}"
        raise ValueError(msg)
    if method == "topk" and top_k < 1:
        msg = f"top_k must be at least 1, got {top_k}"
        raise ValueError(msg)
    if values.size == 0:
        return 0.0
    if method == "max":
        return float(values.max())
    if method == "topk":
        k = min(top_k, values.size)
        return float(np.partition(values, values.size - k)[values.size - k :].mean())
    above = values[values > threshold]
    return float(above.mean()) if above.size else 0.0
