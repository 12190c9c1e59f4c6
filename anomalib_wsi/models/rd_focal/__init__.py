"""RDFocal: reverse distillation with the focal cosine loss of He & Li (MIDL 2023, "FW-RD").

- :mod:`~anomalib_wsi.models.rd_focal.lightning_model`: :class:`RDFocal` (the anomalib module) and
  :class:`RDFocalModel` (anomalib's network with the paper's tile score);
- :mod:`~anomalib_wsi.models.rd_focal.loss`: :class:`FocalCosineLoss` and :func:`focal_cosine_loss`;
- :mod:`~anomalib_wsi.models.rd_focal.weights`: teacher weights from a local file.
"""

from anomalib_wsi.models.rd_focal.lightning_model import (
    SUPPORTED_BACKBONES,
    NoTumourTilesError,
    RDFocal,
    RDFocalConfigError,
    RDFocalModel,
)
from anomalib_wsi.models.rd_focal.loss import FocalCosineLoss, focal_cosine_loss, tile_cosine_similarity
from anomalib_wsi.models.rd_focal.weights import BackboneWeightsError, load_backbone_weights, read_state_dict

__all__ = [
    "SUPPORTED_BACKBONES",
    "BackboneWeightsError",
    "FocalCosineLoss",
    "NoTumourTilesError",
    "RDFocal",
    "RDFocalConfigError",
    "RDFocalModel",
    "focal_cosine_loss",
    "load_backbone_weights",
    "read_state_dict",
    "tile_cosine_similarity",
]
