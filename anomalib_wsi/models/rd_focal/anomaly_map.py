"""RDFocal's anomaly map and tile score.

The anomaly map is anomalib's reverse-distillation map: one minus the teacher/student cosine similarity per layer,
up-sampled to the tile (bilinear, corners aligned) and combined (added or multiplied), then a Gaussian blur with
sigma 4 and a 33-tap kernel; here it is computed in float32 even under autocast. The tile score is the mean of
that map (He & Li's choice) or its maximum (anomalib's).

He & Li's code (FW-RD ``test.py``: ``cal_anomaly_map(..., amap_mode='a')`` then
``scipy.ndimage.gaussian_filter(anomaly_map, sigma=4)``, and the mean and max of the result as ``auroc_sp_mean``
and ``auroc_sp_max``) computes the same map with one difference at the tile border: scipy's default border mode
repeats the edge pixel (numpy's ``"symmetric"`` padding) where anomalib's blur does not (``"reflect"``). The two
maps agree more than 16 px (the kernel's radius) inside the tile. ``border="symmetric"`` gives FW-RD's map exactly.

Example:
    >>> import torch
    >>> tile_score(torch.ones(2, 1, 8, 8), "mean").shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import numpy as np
import torch
from anomalib.models.components import GaussianBlur2d
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode, AnomalyMapGenerator
from torch.nn import functional as F

__all__ = ["BLUR_BORDERS", "TILE_SCORES", "Float32AnomalyMapGenerator", "tile_score"]

#: How a tile's anomaly map becomes its score: ``"mean"`` (He & Li) or ``"max"`` (anomalib).
TILE_SCORES = ("mean", "max")

#: Border handling of the blur: ``"reflect"`` (anomalib: ``d c b | a b c``) or ``"symmetric"`` (scipy's default,
#: as in FW-RD: ``c b a | a b c``), named as in ``numpy.pad``.
BLUR_BORDERS = ("reflect", "symmetric")


class Float32AnomalyMapGenerator(AnomalyMapGenerator):
    """anomalib's anomaly map, always computed in float32 (outside autocast) from features of any precision.

    Args:
        image_size: ``(H, W)`` of the maps (the model's input size).
        sigma: standard deviation of the Gaussian blur in map pixels (anomalib and FW-RD: 4).
        mode: how the per-layer maps combine (``"add"`` in FW-RD).
        border: border handling of the blur, one of :data:`BLUR_BORDERS`.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        sigma: float = 4,
        mode: AnomalyMapGenerationMode = AnomalyMapGenerationMode.MULTIPLY,
        border: str = "reflect",
    ) -> None:
        super().__init__(image_size=image_size, sigma=sigma, mode=mode)  # type: ignore[arg-type]  # float works
        if border not in BLUR_BORDERS:
            msg = f"blur border must be one of {', '.join(BLUR_BORDERS)}, got {border!r}"
            raise ValueError(msg)
        self.border = border

    def forward(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Compute the anomaly maps.

        Args:
            student_features: encoder feature maps, one ``(B, C, H, W)`` tensor per layer.
            teacher_features: decoder feature maps with the same shapes.

        Returns:
            ``(B, 1, H, W)`` float32 anomaly maps at the model's input size.
        """
        with torch.autocast(device_type=student_features[0].device.type, enabled=False):
            students = [feature.float() for feature in student_features]
            teachers = [feature.float() for feature in teacher_features]
            if self.border == "reflect":
                return super().forward(students, teachers)
            return self._blur_symmetric(self._combine(students, teachers))

    def _combine(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """The per-layer distance maps at the map size, combined as anomalib combines them (before the blur)."""
        combined: torch.Tensor | None = None
        for student, teacher in zip(student_features, teacher_features, strict=True):
            distance = (1 - F.cosine_similarity(student, teacher)).unsqueeze(1)
            distance = F.interpolate(distance, size=self.image_size, mode="bilinear", align_corners=True)
            if combined is None:
                combined = distance
            elif self.mode == AnomalyMapGenerationMode.MULTIPLY:
                combined = combined * distance
            else:
                combined = combined + distance
        if combined is None:
            msg = "the anomaly map needs at least one layer of features"
            raise ValueError(msg)
        return combined

    def _blur_symmetric(self, maps: torch.Tensor) -> torch.Tensor:
        """The Gaussian blur with the edge pixel repeated at the border (scipy's ``gaussian_filter`` default)."""
        radius = self.kernel_size // 2
        height, width = maps.shape[-2:]
        rows = torch.from_numpy(np.pad(np.arange(height), radius, mode="symmetric")).to(maps.device)
        cols = torch.from_numpy(np.pad(np.arange(width), radius, mode="symmetric")).to(maps.device)
        padded = maps.index_select(-2, rows).index_select(-1, cols)
        blur = GaussianBlur2d(
            sigma=(self.sigma, self.sigma), kernel_size=(self.kernel_size, self.kernel_size), padding="valid"
        ).to(maps.device)
        return blur(padded)


def tile_score(anomaly_map: torch.Tensor, mode: str) -> torch.Tensor:
    """The score of each tile from its anomaly map.

    Args:
        anomaly_map: ``(B, 1, H, W)`` anomaly maps.
        mode: ``"mean"`` or ``"max"`` of each map.

    Returns:
        ``(B, 1)`` tile scores.

    Raises:
        ValueError: ``mode`` is not one of :data:`TILE_SCORES`.
    """
    if mode == "mean":
        return torch.mean(anomaly_map, dim=(-2, -1))
    if mode == "max":
        return torch.amax(anomaly_map, dim=(-2, -1))
    msg = f"tile score must be one of {', '.join(TILE_SCORES)}, got {mode!r}"
    raise ValueError(msg)
