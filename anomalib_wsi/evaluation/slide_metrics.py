"""Slide-level metrics: ROC AUC with a bootstrap confidence interval, and the ROC / FROC figures.

Example:
    >>> slide_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

__all__ = ["bootstrap_auc_ci", "plot_froc_curve", "plot_roc_curve", "slide_auc"]

#: Scores resampled at once by :func:`bootstrap_auc_ci` (about 100 MB of temporaries).
_BOOT_CHUNK_VALUES = 2**22


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        msg = f"labels and scores differ in length ({y.size} and {s.size})"
        raise ValueError(msg)
    if not np.isin(y, (0, 1)).all():
        msg = "labels must be 0 (normal) or 1 (tumour)"
        raise ValueError(msg)
    if not np.isfinite(s).all():
        msg = "scores contain NaN or infinite values"
        raise ValueError(msg)
    if y.min(initial=1) == y.max(initial=0) or y.size < 2:
        msg = f"the AUC needs both normal and tumour slides; got {int((y == 0).sum())} normal, {int(y.sum())} tumour"
        raise ValueError(msg)
    return y, s


def slide_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of slide scores (higher = tumour), ties counted half.

    Args:
        labels: 1 tumour, 0 normal, per slide.
        scores: slide scores.

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: lengths differ, a label is not 0/1, a score is not finite, or one class is absent.
    """
    y, s = _check(labels, scores)
    ranks = rankdata(s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the slide AUC.

    Tumour and normal slides are resampled with replacement separately (a stratified bootstrap), so every
    resample keeps the cohort's class counts and has an AUC.

    Args:
        labels: 1 tumour, 0 normal, per slide.
        scores: slide scores.
        n_boot: number of resamples (drawn in chunks: memory does not grow with it).
        seed: random seed; the same seed gives the same interval.
        alpha: 1 - confidence level (0.05 for a 95 % interval).

    Returns:
        ``(low, high)``: the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the resampled AUCs.
    """
    if n_boot < 1:
        msg = f"n_boot must be at least 1, got {n_boot}"
        raise ValueError(msg)
    if not 0 < alpha < 1:
        msg = f"alpha must be in (0, 1), got {alpha}"
        raise ValueError(msg)
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    # Resamples in chunks of about _BOOT_CHUNK_VALUES scores, so memory stays bounded for any n_boot.
    chunk = max(1, _BOOT_CHUNK_VALUES // y.size)
    aucs = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        boot_pos = pos[rng.integers(0, pos.size, size=(n, pos.size))]
        boot_neg = neg[rng.integers(0, neg.size, size=(n, neg.size))]
        ranks = rankdata(np.concatenate([boot_pos, boot_neg], axis=1), axis=1)
        aucs[start : start + n] = (ranks[:, : pos.size].sum(axis=1) - pos.size * (pos.size + 1) / 2) / (
            pos.size * neg.size
        )
    low, high = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def plot_roc_curve(
    labels: ArrayLike,
    scores: ArrayLike,
    path: str | Path,
    ci: tuple[float, float] | None = None,
) -> Path:
    """Write the slide ROC curve as a PNG.

    Args:
        labels: 1 tumour, 0 normal, per slide.
        scores: slide scores.
        path: PNG to write.
        ci: confidence interval of the AUC to show in the legend.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y, s = _check(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    label = f"AUC {slide_auc(y, s):.3f}"
    if ci is not None:
        label += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="Slide-level ROC")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_froc_curve(
    fps_per_slide: ArrayLike,
    sensitivity: ArrayLike,
    path: str | Path,
    score: float | None = None,
    fp_rates: Sequence[float] = (),
    sensitivities: Sequence[float] = (),
) -> Path:
    """Write the lesion FROC curve as a PNG (log FP axis, the averaged operating points marked).

    Args:
        fps_per_slide: the curve's false positives per slide.
        sensitivity: the curve's sensitivities.
        path: PNG to write.
        score: FROC score for the title.
        fp_rates: FP rates averaged by the score, marked on the curve with ``sensitivities``.
        sensitivities: sensitivity at each of ``fp_rates``.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fps = np.asarray(fps_per_slide, dtype=np.float64)[::-1]
    sens = np.asarray(sensitivity, dtype=np.float64)[::-1]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(fps, sens, lw=2, label="FROC curve")  # straight segments: the interpolation the score uses
    right = max(8.0, float(fps.max()) if fps.size else 8.0)
    if fps.size and fps.max() < right:
        ax.plot([fps[-1], right], [sens[-1], sens[-1]], ls="--", c="tab:blue", lw=1, label="held at the final value")
    if len(fp_rates):
        ax.plot(fp_rates, sensitivities, "o", c="tab:red", label="FROC operating points")
    ax.set_xscale("symlog", linthresh=0.25, linscale=0.5)
    ticks = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0] + ([right] if right > 8 else [])
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set(xlim=(0, right), ylim=(0, 1.02), xlabel="Average false positives per slide", ylabel="Sensitivity")
    ax.set_title("Lesion FROC" + (f" (score {score:.3f})" if score is not None and np.isfinite(score) else ""))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
