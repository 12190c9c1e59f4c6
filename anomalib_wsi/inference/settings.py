"""What a prediction is asked to do (:class:`PredictionSettings`) and what it gives back (:class:`SlidePrediction`,
:class:`PredictionRun`).

The tiling settings are the slide layer's :class:`~anomalib_wsi.slide.tiling.TilingConfig`, composed rather than
re-declared; the only prediction-specific default is :data:`PREDICT_MIN_TISSUE`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalib_wsi.errors import WSIError
from anomalib_wsi.slide.tiling import TilingConfig

if TYPE_CHECKING:  # the stain module imports torch: not on the way of `anomalib-wsi --help`
    from anomalib_wsi.data.stain import StainReference

__all__ = [
    "PRECISIONS",
    "PREDICT_MIN_TISSUE",
    "PredictionRun",
    "PredictionSettings",
    "SlideFailure",
    "SlidePrediction",
]

#: Minimum tissue fraction of a scored tile when predicting (training and ``tile`` keep TilingConfig's 0.5): tiles
#: at the tissue border are scored too, so lesions reach the edge of the tissue.
PREDICT_MIN_TISSUE = 0.25

#: Accepted ``precision`` values (Lightning's spellings too).
PRECISIONS = ("32", "bf16", "16", "bf16-mixed", "16-mixed", "32-true")


@dataclass(frozen=True)
class PredictionSettings:
    """What decides a slide's outputs besides the checkpoint and the post-processor (part of the resume fingerprint).

    Attributes:
        tiling: tile resolution, size, stride and minimum tissue (default: the training data's mpp and tile size
            from the checkpoint, :data:`PREDICT_MIN_TISSUE`).
        slide_mpp: level-0 mpp for slides that record none.
        precision: "32", "bf16" or "16" (autocast).
        stain: the stain reference tiles are normalised to (the training data's, from the checkpoint), or None.
    """

    tiling: TilingConfig = field(default_factory=lambda: TilingConfig(min_tissue=PREDICT_MIN_TISSUE))
    slide_mpp: float | None = None
    precision: str = "32"
    stain: StainReference | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            msg = f"precision must be 32, bf16 or 16, got {self.precision!r}"
            raise WSIError(msg)
        if self.slide_mpp is not None and not (math.isfinite(self.slide_mpp) and self.slide_mpp > 0):
            msg = f"slide mpp must be a positive number of µm per pixel, got {self.slide_mpp}"
            raise WSIError(msg)

    @property
    def stride_px(self) -> int:
        """Step between tiles at the tile mpp (the tile size when no stride is set)."""
        return self.tiling.stride_px or self.tiling.tile_size_px

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``summary.json`` and the fingerprint: the tiling fields flat, then the others."""
        tiling = dataclasses.asdict(self.tiling)
        stain = {"stain_normalization": self.stain.as_dict()} if self.stain is not None else {}
        return {**tiling, "slide_mpp": self.slide_mpp, "precision": self.precision, **stain}


@dataclass
class SlidePrediction:
    """The prediction of one slide (what ``WSIEngine.predict`` returns, one per slide).

    Attributes:
        slide_id: the slide's id (its file stem, made safe as a folder name).
        slide_path: slide file.
        slide_score: slide-level score (normalised, 0.5 = the learnt threshold).
        heatmap: normalised heatmap (``values`` (H, W) float32, NaN off tissue) with its ``downsample``.
        lesions: lesion polygons in level-0 px with ``max_score``, ``mean_score``, ``area_um2``.
        detections: (N, 3) ``confidence, x, y`` points for the Camelyon16 FROC (level-0 px).
        paths: files written, by name (``heatmap_npy``, ``heatmap_png``, ``geojson``, ``detections``, ``summary``).
        n_tiles: tiles scored.
        mpp: level-0 mpp used.
        timings: seconds spent, by stage.
        skipped: True when the outputs already existed for the same checkpoint and settings.
    """

    slide_id: str
    slide_path: Path
    slide_score: float
    heatmap: Any
    lesions: list[Any]
    detections: np.ndarray
    paths: dict[str, Path] = field(default_factory=dict)
    n_tiles: int = 0
    mpp: float = math.nan
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False

    @property
    def geojson_path(self) -> Path:
        """The QuPath GeoJSON of the lesions."""
        return self.paths["geojson"]


@dataclass(frozen=True)
class SlideFailure:
    """A slide that could not be predicted: where it failed (``tiling``, ``reading``, ``writing``) and why."""

    slide_path: Path
    slide_id: str
    stage: str
    error: str

    def as_row(self) -> dict[str, str]:
        """The row of ``failures.csv``."""
        return {"slide_path": str(self.slide_path), "slide_id": self.slide_id, "stage": self.stage, "error": self.error}


class PredictionRun(list[SlidePrediction]):
    """What ``WSIEngine.predict`` returns: the slides predicted (a list, in the order given) and the run's figures.

    Attributes:
        failures: the slides that failed, with their stage and reason (also in ``failures.csv``).
        stage_seconds: where the main process spent the streaming time (``wait_tiles``, ``launch``,
            ``wait_device``, ``stitch``, ``outputs``).
        tiles_per_second: streaming rate over the tiles scored in this run (NaN when none was scored).
        tables_error: why ``summary.csv`` / ``failures.csv`` could not be written ("" when they were).
    """

    def __init__(
        self,
        results: list[SlidePrediction] | None = None,
        failures: list[SlideFailure] | None = None,
        stage_seconds: dict[str, float] | None = None,
        tiles_per_second: float = math.nan,
    ) -> None:
        super().__init__(results or [])
        self.failures: list[SlideFailure] = list(failures or [])
        self.stage_seconds: dict[str, float] = dict(stage_seconds or {})
        self.tiles_per_second = float(tiles_per_second)
        self.tables_error = ""
