"""Camelyon16 lesion-level FROC, as the challenge's ``Evaluation_FROC.py`` computes it, in small pure functions.

The protocol (Bejnordi et al., JAMA 2017; the official script by B. Ehteshami Bejnordi), shaped like MONAI's
``metrics/froc.py``:

1. :func:`compute_evaluation_mask`: the ground-truth tumour mask at level 5 (downsample 32, with the challenge's
   fixed level-0 spacing of 0.243 µm per pixel) is grown so that lesions closer than 75 µm (about five tumour cells)
   merge: pixels nearer than ``75 / (0.243 * 32 * 2)`` = 4.82 px to tumour join it (a 37.5 µm margin around each
   lesion), holes are filled and the result is labelled with 8-connectivity. Lesions whose major axis
   (``regionprops.axis_major_length`` times 0.243 * 32 µm) is below 275 µm after growth are isolated tumour cells
   (ITC): neither counted nor penalised.
2. :func:`compute_fp_tp_probs`: a detection ``(confidence, x, y)`` in level-0 pixels hits the lesion whose label is
   at ``(y // 32, x // 32)``. Each lesion keeps its best confidence; more hits in the same lesion are not false
   positives; a hit in an ITC is ignored; a detection on background (or outside the mask) is a false positive, and
   every detection on a normal slide is one.
3. :func:`compute_froc_curve_data`: one operating point per distinct confidence; false positives per slide divide
   by the number of evaluated slides, normal ones included; sensitivity divides by the number of non-ITC lesions.
4. :func:`compute_froc_score`: the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide, read
   off the curve with ``np.interp`` (MONAI's way). Where the curve never reaches a rate (a model with fewer than
   8 false positives per slide even at its lowest confidence), the sensitivity stays at the curve's final value,
   the sensitivity at the lowest confidence, as ``np.interp`` holds the last point.

:func:`evaluate_froc` runs the four steps over a cohort, building one slide's mask at a time.

Confidences are non-negative; an undetected lesion has confidence 0 in ``tp_probs`` (as in the official code and
MONAI), so a detection of confidence 0 counts for nothing. One deliberate difference: the official code drops its
lowest threshold unconditionally (``all_probs[1:]``), which is the 0 of the undetected lesions in every real
Camelyon16 run; when every lesion is detected that drop loses a real operating point, so here only the threshold 0
is dropped. The two agree whenever any lesion (or ITC) is missed.

Example:
    >>> import numpy as np
    >>> mask = np.zeros((100, 100), bool); mask[20:60, 20:60] = True
    >>> labels, itc = compute_evaluation_mask(mask)
    >>> fp, tp, n = compute_fp_tp_probs([(0.9, 40 * 32, 40 * 32), (0.4, 90 * 32, 90 * 32)], labels, itc)
    >>> fp.tolist(), tp.tolist(), n
    ([0.4], [0.9], 1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage import measure

__all__ = [
    "CAMELYON16_MPP",
    "EVALUATION_DOWNSAMPLE",
    "EVALUATION_LEVEL",
    "FROC_FP_RATES",
    "GROWTH_UM",
    "ITC_MAJOR_AXIS_UM",
    "FROCResult",
    "SlideFROC",
    "compute_evaluation_mask",
    "compute_fp_tp_probs",
    "compute_froc_curve_data",
    "compute_froc_score",
    "evaluate_froc",
    "evaluate_slide_froc",
    "froc_sensitivities",
    "growth_threshold_px",
    "itc_threshold_px",
]

logger = logging.getLogger(__name__)

#: Level-0 spacing (µm per pixel) the Camelyon16 evaluation assumes for every slide.
CAMELYON16_MPP = 0.243
#: Pyramid level of the evaluation masks, and its downsample.
EVALUATION_LEVEL = 5
EVALUATION_DOWNSAMPLE = 2**EVALUATION_LEVEL
#: Lesions closer than this merge (the official threshold is half of it around each lesion).
GROWTH_UM = 75.0
#: Lesions whose major axis after growth is below this are isolated tumour cells.
ITC_MAJOR_AXIS_UM = 275.0
#: False-positive rates (per slide) whose sensitivities the FROC score averages.
FROC_FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def growth_threshold_px(mpp: float = CAMELYON16_MPP, downsample: int = EVALUATION_DOWNSAMPLE) -> float:
    """Distance (mask pixels) below which background joins a lesion: ``75 / (mpp * downsample * 2)``, 4.82 px."""
    return GROWTH_UM / (mpp * downsample * 2)


def itc_threshold_px(mpp: float = CAMELYON16_MPP, downsample: int = EVALUATION_DOWNSAMPLE) -> float:
    """Major axis (mask pixels) below which a grown lesion is an ITC: ``275 / (mpp * downsample)``, 35.37 px."""
    return ITC_MAJOR_AXIS_UM / (mpp * downsample)


def compute_evaluation_mask(
    region_mask: np.ndarray,
    mpp: float = CAMELYON16_MPP,
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> tuple[np.ndarray, list[int]]:
    """Grow, fill and label the lesions of a ground-truth mask; find the isolated tumour cells.

    Args:
        region_mask: boolean (H, W) tumour mask at the evaluation level (non-tumour regions already removed).
        mpp: level-0 spacing in µm per pixel; Camelyon16 fixes 0.243 for every slide.
        downsample: downsample of ``region_mask`` relative to level 0 (32 for level 5).

    Returns:
        ``(labels, itc_labels)``: an int32 (H, W) label image (0 background, 1..N lesions, 8-connected, numbered in
        raster order as ``skimage.measure.label`` does) and the sorted label ids of the isolated tumour cells.
    """
    mask = np.asarray(region_mask).astype(bool, copy=False)
    if mask.ndim != 2:
        msg = f"region_mask must be a 2-D (H, W) array, got shape {mask.shape}"
        raise ValueError(msg)
    labels = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return labels, []
    threshold = growth_threshold_px(mpp, downsample)
    # Work on the lesions' bounding box plus the growth margin: the same result as the whole mask, far cheaper.
    pad = int(np.ceil(threshold)) + 1
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    r0, r1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, mask.shape[0])
    c0, c1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, mask.shape[1])
    crop = mask[r0:r1, c0:c1]
    distance = ndimage.distance_transform_edt(~crop)
    grown = ndimage.binary_fill_holes(distance < threshold)
    labels[r0:r1, c0:c1] = measure.label(grown, connectivity=2)
    itc_px = itc_threshold_px(mpp, downsample)
    itc = [int(p.label) for p in measure.regionprops(labels[r0:r1, c0:c1]) if p.axis_major_length < itc_px]
    return labels, sorted(itc)


def _as_detections(detections: ArrayLike) -> np.ndarray:
    """``(N, 3)`` float64 array ``confidence, x, y``; validates shape and confidences."""
    array = np.asarray(detections, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        msg = f"detections must be (N, 3) rows of confidence, x, y; got shape {array.shape}"
        raise ValueError(msg)
    if not np.isfinite(array).all():
        msg = "detections contain NaN or infinite values"
        raise ValueError(msg)
    if (array[:, 0] < 0).any():
        msg = "detection confidences must be non-negative (Camelyon16 expects 0-1)"
        raise ValueError(msg)
    return array


def _hit_labels(dets: np.ndarray, labels: np.ndarray, downsample: int) -> np.ndarray:
    """Label under each detection at ``(y // downsample, x // downsample)``; 0 outside the mask."""
    rows = np.floor(dets[:, 2] / downsample).astype(np.int64)
    cols = np.floor(dets[:, 1] / downsample).astype(np.int64)
    inside = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
    hit = np.zeros(len(dets), dtype=np.int64)
    hit[inside] = labels[rows[inside], cols[inside]]
    return hit


def compute_fp_tp_probs(
    detections: ArrayLike,
    labels: np.ndarray | None,
    itc_labels: Sequence[int] = (),
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Split one slide's detections into false positives and the best confidence per lesion.

    Args:
        detections: ``(N, 3)`` rows ``confidence, x, y`` with x, y in level-0 pixels.
        labels: the label image of :func:`compute_evaluation_mask`, or ``None`` for a normal slide.
        itc_labels: label ids of isolated tumour cells: hits there are neither true nor false positives.
        downsample: downsample of ``labels`` relative to level 0; a detection falls in pixel
            ``(y // downsample, x // downsample)``.

    Returns:
        ``(fp_probs, tp_probs, num_targets)``: confidences of the false positives; one entry per counted
        (non-ITC) lesion in label order, its best confidence or 0 when undetected; the number of counted lesions.
    """
    dets = _as_detections(detections)
    confidence = dets[:, 0]
    if labels is None:
        return confidence.copy(), np.zeros(0, dtype=np.float64), 0
    labels = np.asarray(labels)
    hit = _hit_labels(dets, labels, downsample)
    fp_probs = confidence[hit == 0]

    num_labels = int(labels.max()) if labels.size else 0
    itc = np.zeros(num_labels + 1, dtype=bool)
    itc[[i for i in itc_labels if 0 < i <= num_labels]] = True
    best = np.zeros(num_labels + 1, dtype=np.float64)
    counted_hits = (hit > 0) & ~itc[hit]
    np.maximum.at(best, hit[counted_hits], confidence[counted_hits])
    keep = ~itc
    keep[0] = False
    tp_probs = best[keep]
    return fp_probs, tp_probs, int(keep.sum())


def compute_froc_curve_data(
    fp_probs: ArrayLike,
    tp_probs: ArrayLike,
    num_targets: int,
    num_images: int,
) -> tuple[np.ndarray, np.ndarray]:
    """False positives per image and sensitivity at every distinct confidence, highest sensitivity first.

    Args:
        fp_probs: confidences of all false positives of the cohort.
        tp_probs: best confidence of every counted lesion of the cohort (0 when undetected).
        num_targets: number of counted lesions (the denominator of the sensitivity).
        num_images: number of evaluated slides, normal ones included (the denominator of the FP rate).

    Returns:
        ``(fps_per_image, total_sensitivity)``: one point per threshold in increasing order of confidence (the
        threshold 0 excluded), then the point ``(0, 0)`` above the highest confidence, as the official code orders
        them.
    """
    if num_images < 1:
        msg = f"num_images must be at least 1, got {num_images}"
        raise ValueError(msg)
    if num_targets < 1:
        msg = f"num_targets must be at least 1 (no lesion to detect), got {num_targets}"
        raise ValueError(msg)
    fp = np.sort(np.asarray(fp_probs, dtype=np.float64).ravel())
    tp = np.sort(np.asarray(tp_probs, dtype=np.float64).ravel())
    thresholds = np.unique(np.concatenate([fp, tp]))
    thresholds = thresholds[thresholds > 0]
    total_fps = np.append(fp.size - np.searchsorted(fp, thresholds, side="left"), 0)
    total_tps = np.append(tp.size - np.searchsorted(tp, thresholds, side="left"), 0)
    return total_fps / float(num_images), total_tps / float(num_targets)


def froc_sensitivities(
    fps_per_image: ArrayLike,
    total_sensitivity: ArrayLike,
    eval_thresholds: Sequence[float] = FROC_FP_RATES,
) -> np.ndarray:
    """Sensitivity at each false-positive rate, interpolated as MONAI does (``np.interp`` on the reversed curve).

    Beyond the curve's largest FP rate the sensitivity stays at its final value (the one at the lowest
    confidence); at an FP rate the curve visits at several thresholds, the highest sensitivity there is taken.
    """
    fps = np.asarray(fps_per_image, dtype=np.float64)[::-1]
    sens = np.asarray(total_sensitivity, dtype=np.float64)[::-1]
    return np.interp(np.asarray(eval_thresholds, dtype=np.float64), fps, sens)


def compute_froc_score(
    fps_per_image: ArrayLike,
    total_sensitivity: ArrayLike,
    eval_thresholds: Sequence[float] = FROC_FP_RATES,
) -> float:
    """The FROC score: mean sensitivity at ``eval_thresholds`` false positives per image (see
    :func:`froc_sensitivities` for the interpolation)."""
    return float(np.mean(froc_sensitivities(fps_per_image, total_sensitivity, eval_thresholds)))


@dataclass(frozen=True)
class SlideFROC:
    """One slide's share of the FROC.

    Attributes:
        slide_id: the slide.
        is_tumour: whether a ground-truth mask was used (``False``: every detection is a false positive).
        fp_probs: confidences of the false positives.
        tp_probs: best confidence per counted lesion (0 when undetected).
        num_lesions: counted (non-ITC) lesions after growth.
        num_itc: isolated tumour cells after growth.
        num_detections: detections read.
        num_itc_hits: detections that fell in an ITC (ignored).
    """

    slide_id: str
    is_tumour: bool
    fp_probs: np.ndarray
    tp_probs: np.ndarray
    num_lesions: int
    num_itc: int
    num_detections: int
    num_itc_hits: int

    @property
    def num_detected(self) -> int:
        """Lesions with at least one detection of positive confidence."""
        return int((self.tp_probs > 0).sum())

    @property
    def num_fp(self) -> int:
        """False positives at the lowest threshold (all of them)."""
        return len(self.fp_probs)


def evaluate_slide_froc(
    slide_id: str,
    detections: ArrayLike,
    region_mask: np.ndarray | None,
    mpp: float = CAMELYON16_MPP,
    downsample: int = EVALUATION_DOWNSAMPLE,
) -> SlideFROC:
    """Evaluation mask and FP/TP split of one slide.

    Args:
        slide_id: the slide.
        detections: ``(N, 3)`` rows ``confidence, x, y`` in level-0 pixels.
        region_mask: boolean tumour mask at ``downsample``, or ``None`` for a normal slide.
        mpp: level-0 spacing assumed by the protocol.
        downsample: downsample of ``region_mask``.

    Returns:
        The slide's :class:`SlideFROC`.
    """
    dets = _as_detections(detections)
    if region_mask is None:
        fp, tp, _ = compute_fp_tp_probs(dets, None)
        return SlideFROC(slide_id, False, fp, tp, 0, 0, len(dets), 0)
    labels, itc = compute_evaluation_mask(region_mask, mpp=mpp, downsample=downsample)
    fp, tp, num_targets = compute_fp_tp_probs(dets, labels, itc, downsample=downsample)
    num_itc_hits = int(np.isin(_hit_labels(dets, labels, downsample), itc).sum())
    return SlideFROC(slide_id, True, fp, tp, num_targets, len(itc), len(dets), num_itc_hits)


@dataclass(frozen=True)
class FROCResult:
    """The cohort's FROC.

    Attributes:
        score: mean sensitivity at ``fp_rates`` (NaN when the cohort has no counted lesion).
        fp_rates: the false-positive rates per slide averaged.
        sensitivities: sensitivity at each of ``fp_rates``.
        fps_per_slide: the curve's false positives per slide (official order: increasing threshold).
        sensitivity: the curve's sensitivity at the same points.
        num_slides: slides evaluated (the FP-rate denominator).
        num_lesions: counted lesions (the sensitivity denominator).
        num_itc: isolated tumour cells set aside.
        slides: per-slide results.
    """

    score: float
    fp_rates: tuple[float, ...]
    sensitivities: tuple[float, ...]
    fps_per_slide: np.ndarray
    sensitivity: np.ndarray
    num_slides: int
    num_lesions: int
    num_itc: int
    slides: list[SlideFROC] = field(default_factory=list)


def evaluate_froc(
    slides: Iterable[tuple[str, ArrayLike, np.ndarray | None] | SlideFROC],
    mpp: float = CAMELYON16_MPP,
    downsample: int = EVALUATION_DOWNSAMPLE,
    eval_thresholds: Sequence[float] = FROC_FP_RATES,
) -> FROCResult:
    """Camelyon16 FROC of a cohort.

    Args:
        slides: per slide, ``(slide_id, detections, region_mask)`` with ``region_mask`` the boolean tumour mask
            at ``downsample`` (``None`` for a normal slide), or an already computed :class:`SlideFROC`. A
            generator keeps only one slide's mask in memory.
        mpp: level-0 spacing assumed by the protocol (0.243 µm).
        downsample: downsample of the masks (32, level 5).
        eval_thresholds: false-positive rates per slide whose sensitivities are averaged.

    Returns:
        The :class:`FROCResult`; its score is NaN (with a warning) when no slide has a counted lesion.
    """
    results = [
        item if isinstance(item, SlideFROC) else evaluate_slide_froc(*item, mpp=mpp, downsample=downsample)
        for item in slides
    ]
    if not results:
        msg = "no slide to evaluate"
        raise ValueError(msg)
    fp = np.concatenate([r.fp_probs for r in results])
    tp = np.concatenate([r.tp_probs for r in results])
    num_lesions = sum(r.num_lesions for r in results)
    num_itc = sum(r.num_itc for r in results)
    rates = tuple(float(t) for t in eval_thresholds)
    if num_lesions == 0:
        logger.warning("FROC: no lesion to detect among %d slides (normal slides or ITCs only)", len(results))
        nan = float("nan")
        return FROCResult(nan, rates, (nan,) * len(rates), np.zeros(1), np.zeros(1), len(results), 0, num_itc, results)
    fps, sens = compute_froc_curve_data(fp, tp, num_lesions, len(results))
    sens_at = froc_sensitivities(fps, sens, rates)
    return FROCResult(
        score=float(np.mean(sens_at)),
        fp_rates=rates,
        sensitivities=tuple(float(s) for s in sens_at),
        fps_per_slide=fps,
        sensitivity=sens,
        num_slides=len(results),
        num_lesions=num_lesions,
        num_itc=num_itc,
        slides=results,
    )
