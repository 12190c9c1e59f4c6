"""RDFocal's network: anomalib's reverse distillation (Deng & Li, CVPR 2022) with a choice of tile score.

The teacher (encoder), the one-class bottleneck and the student (decoder) are anomalib's
:class:`~anomalib.models.image.reverse_distillation.torch_model.ReverseDistillationModel`, parameter for
parameter, so state dicts move freely between the two. :class:`RDFocalModel` adds the tile score of He & Li
(MIDL 2023), a float32 anomaly map under autocast, the channels-last memory format, and freezes what never
receives a gradient.

Example:
    >>> from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    >>> network = RDFocalModel("resnet18", (64, 64), ("layer1", "layer2", "layer3"),
    ...                        AnomalyMapGenerationMode.ADD, pre_trained=False)
    >>> network.tile_score
    'mean'
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

from anomalib_wsi.models.rd_focal.anomaly_map import Float32AnomalyMapGenerator
from anomalib_wsi.models.rd_focal.anomaly_map import tile_score as score_tiles

__all__ = ["SUPPORTED_BACKBONES", "RDFocalModel"]

#: Backbones for which anomalib has a reverse-distillation decoder.
SUPPORTED_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


class RDFocalModel(ReverseDistillationModel):
    """anomalib's reverse-distillation network with a choice of tile score and memory format.

    The parameters and their names are those of :class:`ReverseDistillationModel`, so state dicts move freely
    between the two. Differences: in eval mode ``pred_score`` is the mean (``tile_score="mean"``) or the maximum
    (``"max"``, anomalib's choice) of each tile's anomaly map; the anomaly map is computed in float32 even under
    autocast; the teacher and the bottleneck layer that the forward pass never uses are frozen.

    Args:
        backbone: timm name of the teacher, one of :data:`SUPPORTED_BACKBONES`.
        input_size: ``(H, W)`` of the tiles given to the network, also the size of the anomaly maps.
        layers: the three teacher layers that are distilled.
        anomaly_map_mode: how the per-layer maps combine (``"add"`` in the paper).
        pre_trained: fetch ImageNet weights for the teacher through timm.
        tile_score: ``"mean"`` or ``"max"`` of the anomaly map.
        channels_last: run convolutions in the channels-last memory format (faster on recent GPUs under autocast).
        blur_sigma: standard deviation of the anomaly map's Gaussian blur (anomalib and FW-RD: 4).
        blur_border: the blur's border handling, ``"reflect"`` (anomalib) or ``"symmetric"`` (FW-RD's scipy blur);
            see :mod:`~anomalib_wsi.models.rd_focal.anomaly_map`.
    """

    def __init__(
        self,
        backbone: str,
        input_size: tuple[int, int],
        layers: Sequence[str],
        anomaly_map_mode: AnomalyMapGenerationMode,
        pre_trained: bool = True,
        tile_score: str = "mean",
        channels_last: bool = False,
        blur_sigma: float = 4,
        blur_border: str = "reflect",
    ) -> None:
        super().__init__(
            backbone=backbone,
            input_size=input_size,
            layers=layers,
            anomaly_map_mode=anomaly_map_mode,
            pre_trained=pre_trained,
        )
        self.anomaly_map_generator = Float32AnomalyMapGenerator(
            image_size=input_size, sigma=blur_sigma, mode=anomaly_map_mode, border=blur_border
        )
        self.tile_score = tile_score
        self.channels_last = channels_last
        # The teacher runs under no_grad and OCBE's conv4/bn4 are never called: freezing them keeps them out of
        # the optimiser and lets plain DDP train (it otherwise stops on "parameters that were not used").
        self.encoder.requires_grad_(False)
        for name in ("conv4", "bn4"):
            unused = getattr(self.bottleneck, name, None)
            if unused is not None:
                unused.requires_grad_(False)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Run the network.

        Args:
            images: ``(B, 3, H, W)`` normalised tiles.

        Returns:
            In training mode the encoder and decoder feature maps; in eval mode an ``InferenceBatch`` with
            ``anomaly_map`` ``(B, 1, H, W)`` and ``pred_score`` ``(B, 1)``, the mean or max of the map.
        """
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        output = super().forward(images)
        if not isinstance(output, InferenceBatch) or self.tile_score == "max":
            return output
        anomaly_map = output.anomaly_map
        if anomaly_map is None:  # pragma: no cover - the parent always returns a map in eval mode
            return output
        return InferenceBatch(pred_score=score_tiles(anomaly_map, self.tile_score), anomaly_map=anomaly_map)
