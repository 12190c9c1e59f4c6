"""``WSIPostProcessor``: anomalib's post-processor plus the slide-level steps (heatmap, lesions, detections, score).

Per tile it behaves exactly as anomalib's :class:`~anomalib.post_processing.PostProcessor`: during validation it
learns the image threshold (F1-adaptive on ``pred_score``/``gt_label``), the pixel threshold (when masks exist)
and the min/max of scores and maps; at test/predict time it normalises them so that 0.5 is the learnt threshold.
Those statistics are buffers, so they live in the model's ``state_dict`` and hence in every checkpoint; the
slide-level knobs below are saved through anomalib's ``checkpoint_config`` hook.

Per slide it turns a stitched heatmap of raw scores into a :class:`SlideResult`: the normalised heatmap,
lesion polygons, Camelyon16 detection points and a slide score.

Example:
    >>> from anomalib.models import ReverseDistillation                       # doctest: +SKIP
    >>> model = ReverseDistillation(post_processor=WSIPostProcessor(lesion_threshold=0.6))  # doctest: +SKIP
    >>> # ... train and validate with anomalib's Engine, then for each slide:
    >>> acc = model.post_processor.new_accumulator((100_000, 200_000), 512.0, 512.0)  # doctest: +SKIP
    >>> acc.add(xs_lv0, ys_lv0, raw_tile_scores)                                # doctest: +SKIP
    >>> result = model.post_processor.process_slide(acc.result(), mpp=0.243)    # doctest: +SKIP
    >>> result.slide_score, len(result.lesions), result.detections.shape       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from anomalib.metrics.threshold import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor

from anomalib_wsi.post_processing.lesions import (
    Lesion,
    detection_points,
    extract_lesions,
)
from anomalib_wsi.post_processing.overlay import HEATMAP_TIFF_MODES
from anomalib_wsi.post_processing.slide_score import SLIDE_SCORE_METHODS
from anomalib_wsi.post_processing.slide_score import slide_score as compute_slide_score
from anomalib_wsi.post_processing.stitch import Heatmap, HeatmapAccumulator

__all__ = ["SlideResult", "WSIPostProcessor"]

logger = logging.getLogger(__name__)

_SLIDE_KEYS = (
    "lesion_threshold",
    "min_lesion_area_um2",
    "simplify_tolerance_px_lv0",
    "nms_radius_um",
    "detection_min_score",
    "max_detections",
    "slide_score",
    "top_k",
    "heatmap_cells_per_tile",
    "tile_objects",
    "heatmap_tiff",
    "heatmap_tiff_downsample",
)


@dataclass
class SlideResult:
    """What the post-processor makes of one slide.

    Attributes:
        heatmap: the normalised heatmap (0.5 = learnt threshold when normalisation statistics exist).
        lesions: lesion polygons in level-0 pixels, by decreasing ``max_score``.
        detections: float64 array (N, 3) ``confidence, x, y`` (integer level-0 x, y), Camelyon16 style.
        slide_score: the slide's score from the normalised heatmap.
    """

    heatmap: Heatmap
    lesions: list[Lesion]
    detections: np.ndarray
    slide_score: float


class GapF1AdaptiveThreshold(F1AdaptiveThreshold):
    """anomalib's F1-adaptive threshold, moved to the middle of the gap below it.

    The F1-optimal threshold is one of the validation scores (the lowest score called anomalous). Any value
    between it and the next lower score labels the validation set the same way; the midpoint leaves a margin on
    both sides, so that tumour tiles of new slides scoring a little below the lowest validation tumour tile are
    not lost (with perfectly separated validation scores, anomalib's choice sits right on the tumour edge).
    """

    def compute(self) -> torch.Tensor:  # type: ignore[override]  # as anomalib's F1AdaptiveThreshold
        """The F1-optimal threshold, then the midpoint between it and the next lower validation score."""
        threshold = super().compute()
        state = getattr(self, "preds", None)
        if self.thresholds is not None or state is None or len(state) == 0:  # binned statistics: no raw scores
            return threshold
        preds = (torch.cat([p.flatten() for p in state]) if isinstance(state, list) else state.flatten()).float()
        below = preds[preds < threshold]
        if below.numel() == 0:
            return threshold
        return (threshold + below.max().to(threshold.dtype)) / 2


class WSIPostProcessor(PostProcessor):
    """anomalib's PostProcessor with slide-level post-processing: heatmap normalisation, lesions, detections.

    Args:
        lesion_threshold: lesion threshold on normalised scores; 0.5 is the threshold learnt on validation.
            Also the threshold of ``slide_score="mean_above"``.
        min_lesion_area_um2: smaller lesions are dropped. The default, 2500 µm² (a 50 µm square, a few dozen
            cells), removes specks of fine heatmaps and keeps any region of one 128 µm tile or more.
        simplify_tolerance_px_lv0: Douglas-Peucker tolerance of the lesion outlines in level-0 pixels; None keeps
            the exact cell-edge outline.
        nms_radius_um: radius of the non-maximum suppression between detection points, in µm.
        detection_min_score: detection points must score strictly above this (normalised).
        max_detections: at most this many detection points per slide.
        slide_score: ``"max"``, ``"topk"`` (mean of the ``top_k`` highest cells) or ``"mean_above"`` (He & Li
            2023: mean of the cells above ``lesion_threshold``).
        top_k: number of cells averaged by ``slide_score="topk"``.
        heatmap_cells_per_tile: heatmap cells per tile side; 1 gives one cell per tile stride from tile scores,
            more asks the engine to paste per-tile anomaly maps at that finer resolution.
        tile_objects: also write ``tiles.geojson.gz``, the heatmap as QuPath tile objects (one per tile stride,
            ``anomaly_score`` and ``raw_score`` measurements) for QuPath's measurement maps.
        heatmap_tiff: also write ``heatmap.tif``, a pyramidal TIFF overlay aligned with the slide: "uint8"
            (0-255 = 0-1, opens in openslide, QuPath, ASAP), "float32" or "rgba" (colour-mapped); None: none.
        heatmap_tiff_downsample: level-0 pixels per ``heatmap.tif`` pixel (a whole number keeps ASAP's scale).
        enable_normalization: as in anomalib's PostProcessor.
        enable_thresholding: as in anomalib's PostProcessor.
        enable_threshold_matching: as in anomalib's PostProcessor.
        image_sensitivity: as in anomalib's PostProcessor.
        pixel_sensitivity: as in anomalib's PostProcessor.
        **kwargs: passed on to anomalib's PostProcessor.

    Example:
        >>> pp = WSIPostProcessor(lesion_threshold=0.5, slide_score="topk", top_k=5)
        >>> pp.normalize_scores(np.array([0.2, 0.7]))  # nothing learnt yet: identity
        array([0.2, 0.7], dtype=float32)
    """

    def __init__(
        self,
        lesion_threshold: float = 0.5,
        min_lesion_area_um2: float = 2500.0,
        simplify_tolerance_px_lv0: float | None = None,
        nms_radius_um: float = 100.0,
        detection_min_score: float = 0.0,
        max_detections: int = 1000,
        slide_score: str = "max",
        top_k: int = 10,
        heatmap_cells_per_tile: int = 1,
        tile_objects: bool = False,
        heatmap_tiff: str | None = None,
        heatmap_tiff_downsample: float = 16.0,
        enable_normalization: bool = True,
        enable_thresholding: bool = True,
        enable_threshold_matching: bool = True,
        image_sensitivity: float = 0.5,
        pixel_sensitivity: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            enable_normalization=enable_normalization,
            enable_thresholding=enable_thresholding,
            enable_threshold_matching=enable_threshold_matching,
            image_sensitivity=image_sensitivity,
            pixel_sensitivity=pixel_sensitivity,
            **kwargs,
        )
        # thresholds in the middle of the gap between scores (see GapF1AdaptiveThreshold)
        self._image_threshold_metric = GapF1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False)
        self._pixel_threshold_metric = GapF1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False)
        self.lesion_threshold = float(lesion_threshold)
        self.min_lesion_area_um2 = float(min_lesion_area_um2)
        self.simplify_tolerance_px_lv0 = None if simplify_tolerance_px_lv0 is None else float(simplify_tolerance_px_lv0)
        self.nms_radius_um = float(nms_radius_um)
        self.detection_min_score = float(detection_min_score)
        self.max_detections = int(max_detections)
        self.slide_score = str(slide_score)
        self.top_k = int(top_k)
        self.heatmap_cells_per_tile = int(heatmap_cells_per_tile)
        self.tile_objects = bool(tile_objects)
        self.heatmap_tiff = None if heatmap_tiff in (None, "", "none") else str(heatmap_tiff)
        self.heatmap_tiff_downsample = float(heatmap_tiff_downsample)
        self._validate()
        self._warned_identity = False

    def _validate(self) -> None:
        problems = []
        if self.slide_score not in SLIDE_SCORE_METHODS:
            problems.append(f"slide_score={self.slide_score!r} (use one of {', '.join(SLIDE_SCORE_METHODS)})")
        if self.top_k < 1:
            problems.append(f"top_k={self.top_k} (use 1 or more)")
        if self.heatmap_cells_per_tile < 1:
            problems.append(f"heatmap_cells_per_tile={self.heatmap_cells_per_tile} (use 1 or more)")
        if self.nms_radius_um < 0 or self.min_lesion_area_um2 < 0:
            problems.append("nms_radius_um and min_lesion_area_um2 must not be negative")
        if self.heatmap_tiff is not None and self.heatmap_tiff not in HEATMAP_TIFF_MODES:
            problems.append(f"heatmap_tiff={self.heatmap_tiff!r} (use None or one of {', '.join(HEATMAP_TIFF_MODES)})")
        if not self.heatmap_tiff_downsample >= 1:
            problems.append(f"heatmap_tiff_downsample={self.heatmap_tiff_downsample} (use 1 or more)")
        if self.simplify_tolerance_px_lv0 is not None and self.simplify_tolerance_px_lv0 < 0:
            problems.append(f"simplify_tolerance_px_lv0={self.simplify_tolerance_px_lv0} (use None or >= 0)")
        if problems:
            msg = "WSIPostProcessor: invalid setting " + "; ".join(problems)
            raise ValueError(msg)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        """anomalib's keys plus the slide-level settings, so checkpoints restore them."""
        return (*super()._checkpoint_config_keys, *_SLIDE_KEYS)

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the settings saved by :meth:`checkpoint_config` (then check them).

        Args:
            config: plain-data settings from a checkpoint.
        """
        super().load_checkpoint_config(config)
        self._validate()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Record the model's class in the checkpoint (``anomalib_wsi_model``), so prediction needs no ``--model``.

        Args:
            trainer: the Lightning trainer.
            pl_module: the model this post-processor belongs to.
            checkpoint: the checkpoint being written.
        """
        del trainer
        cls = type(pl_module)
        checkpoint["anomalib_wsi_model"] = {"class_path": f"{cls.__module__}.{cls.__qualname__}"}

    @classmethod
    def from_post_processor(cls, post_processor: PostProcessor, **kwargs: Any) -> WSIPostProcessor:
        """A WSIPostProcessor with the learnt statistics and settings of an existing anomalib PostProcessor.

        For checkpoints of models trained with anomalib's plain PostProcessor.

        Args:
            post_processor: the post-processor whose thresholds and min/max are copied.
            **kwargs: slide-level settings of the new post-processor.

        Returns:
            A new :class:`WSIPostProcessor`.
        """
        base_keys = PostProcessor._checkpoint_config_keys.fget(post_processor)  # type: ignore[attr-defined]
        base = {key: getattr(post_processor, key) for key in base_keys}
        new = cls(**{**base, **kwargs})
        for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
            getattr(new, name).copy_(getattr(post_processor, name).detach().cpu())
        return new

    @property
    def has_normalization_stats(self) -> bool:
        """Whether image-level min/max were learnt (on validation, or loaded from a checkpoint)."""
        return bool(torch.isfinite(self.image_min).item() and torch.isfinite(self.image_max).item())

    def normalize_scores(self, raw: np.ndarray | torch.Tensor, kind: str = "image") -> np.ndarray:
        """Normalise raw scores exactly as anomalib normalises ``pred_score`` (or ``anomaly_map``).

        ``(raw - threshold) / (max - min) + 0.5`` clipped to [0, 1], so the learnt threshold maps to 0.5. NaN stays
        NaN. When nothing was learnt (no validation run, or ``enable_normalization=False``) the scores come back
        unchanged (identity, with one warning), so ``lesion_threshold`` then applies to raw scores.

        Args:
            raw: raw scores of any shape.
            kind: ``"image"`` uses the tile-score statistics; ``"pixel"`` the anomaly-map statistics (falling back
                to the image ones when no map statistics were learnt).

        Returns:
            float32 array of the same shape.
        """
        if kind not in ("image", "pixel"):
            msg = f"kind must be 'image' or 'pixel', got {kind!r}"
            raise ValueError(msg)
        values = raw.detach().to("cpu", torch.float32) if isinstance(raw, torch.Tensor) else None
        if values is None:
            values = torch.from_numpy(np.asarray(raw, dtype=np.float32))
        if not self.enable_normalization or not self.has_normalization_stats:
            if not self._warned_identity:
                reason = "normalisation is disabled" if not self.enable_normalization else "the model was not validated"
                logger.warning(
                    "WSIPostProcessor: no score normalisation (%s); slide heatmaps keep raw scores and "
                    "lesion_threshold=%g applies to them",
                    reason,
                    self.lesion_threshold,
                )
                self._warned_identity = True
            return values.numpy().copy()
        norm_min, norm_max, threshold = self.image_min, self.image_max, self.image_threshold
        if kind == "pixel" and torch.isfinite(self.pixel_min).item() and torch.isfinite(self.pixel_max).item():
            norm_min, norm_max, threshold = self.pixel_min, self.pixel_max, self.pixel_threshold
        normalized = self._normalize(values, norm_min.cpu(), norm_max.cpu(), threshold.cpu())
        assert normalized is not None  # values is not None
        return normalized.numpy().astype(np.float32, copy=False)

    def new_accumulator(
        self,
        slide_size_lv0: tuple[int, int],
        tile_size_lv0: float,
        stride_lv0: float,
        slide_id: str = "",
    ) -> HeatmapAccumulator:
        """A heatmap accumulator at this post-processor's resolution (``heatmap_cells_per_tile``).

        Args:
            slide_size_lv0: slide ``(width, height)`` in level-0 pixels.
            tile_size_lv0: tile side in level-0 pixels.
            stride_lv0: step between tiles in level-0 pixels.
            slide_id: the slide's identifier.

        Returns:
            An empty :class:`HeatmapAccumulator`.
        """
        return HeatmapAccumulator(slide_size_lv0, tile_size_lv0, stride_lv0, self.heatmap_cells_per_tile, slide_id)

    def process_slide(self, heatmap_raw: Heatmap, mpp: float, normalized: bool = False) -> SlideResult:
        """Normalise a slide heatmap and derive lesions, detection points and the slide score from it.

        Args:
            heatmap_raw: heatmap stitched from raw tile scores (``source="score"``, image statistics) or raw
                anomaly maps (``source="map"``, pixel statistics).
            mpp: level-0 µm per pixel of the slide.
            normalized: True when the heatmap was stitched from scores this post-processor already normalised
                (Lightning's ``on_predict_batch_end`` does so); it is then used as is.

        Returns:
            The :class:`SlideResult`.
        """
        if normalized:
            heatmap = heatmap_raw
        else:
            kind = "pixel" if heatmap_raw.source == "map" else "image"
            heatmap = heatmap_raw.with_values(self.normalize_scores(heatmap_raw.values, kind=kind))
        lesions = extract_lesions(
            heatmap,
            threshold=self.lesion_threshold,
            mpp=mpp,
            min_area_um2=self.min_lesion_area_um2,
            simplify_tolerance_px_lv0=self.simplify_tolerance_px_lv0,
        )
        detections = detection_points(
            heatmap,
            mpp=mpp,
            nms_radius_um=self.nms_radius_um,
            min_score=self.detection_min_score,
            max_points=self.max_detections,
        )
        score = compute_slide_score(heatmap, method=self.slide_score, top_k=self.top_k, threshold=self.lesion_threshold)
        return SlideResult(heatmap=heatmap, lesions=lesions, detections=detections, slide_score=score)

    def slide_settings(self) -> dict[str, Any]:
        """The slide-level settings and the learnt statistics, as plain data for a run's ``summary.json``.

        Returns:
            ``{setting: value, ..., "image_threshold", "image_min", "image_max", "pixel_threshold", ...}`` (None
            where not learnt).
        """
        settings: dict[str, Any] = {key: getattr(self, key) for key in _SLIDE_KEYS}
        for name in ("image_threshold", "image_min", "image_max", "pixel_threshold", "pixel_min", "pixel_max"):
            value = float(getattr(self, name).item())
            settings[name] = value if np.isfinite(value) else None
        return settings
