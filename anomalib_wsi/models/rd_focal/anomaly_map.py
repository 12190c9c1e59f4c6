"""RDFocal's anomaly map and tile score.

The anomaly map is anomalib's reverse-distillation map (one minus the teacher/student cosine similarity per layer,
up-sampled to the tile and combined, then a Gaussian blur), computed in float32 even under autocast. The tile
score is the mean of that map (He & Li's choice) or its maximum (anomalib's).

Example:
    >>> import torch
    >>> tile_score(torch.ones(2, 1, 8, 8), "mean").shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import torch
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerator

__all__ = ["TILE_SCORES", "Float32AnomalyMapGenerator", "tile_score"]

#: How a tile's anomaly map becomes its score: ``"mean"`` (He & Li) or ``"max"`` (anomalib).
TILE_SCORES = ("mean", "max")


class Float32AnomalyMapGenerator(AnomalyMapGenerator):
    """anomalib's anomaly map, always computed in float32 (outside autocast) from features of any precision."""

    def forward(self, student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Compute the anomaly maps.

        Args:
            student_features: encoder feature maps, one ``(B, C, H, W)`` tensor per layer.
            teacher_features: decoder feature maps with the same shapes.

        Returns:
            ``(B, 1, H, W)`` float32 anomaly maps at the model's input size.
        """
        with torch.autocast(device_type=student_features[0].device.type, enabled=False):
            return super().forward(
                [feature.float() for feature in student_features],
                [feature.float() for feature in teacher_features],
            )


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
