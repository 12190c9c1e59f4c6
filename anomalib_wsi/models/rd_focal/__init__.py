"""RDFocal: reverse distillation with the focal cosine loss of He & Li (MIDL 2023, "FW-RD").

- :mod:`~anomalib_wsi.models.rd_focal.lightning_model`: :class:`RDFocal`, the anomalib (Lightning) module;
- :mod:`~anomalib_wsi.models.rd_focal.torch_model`: :class:`RDFocalModel`, anomalib's network with the paper's
  tile score;
- :mod:`~anomalib_wsi.models.rd_focal.anomaly_map`: the float32 anomaly map and :func:`tile_score` (mean or max);
- :mod:`~anomalib_wsi.models.rd_focal.loss`: :class:`FocalCosineLoss` and :func:`focal_cosine_loss`;
- :mod:`~anomalib_wsi.models.rd_focal.weights`: teacher weights from a local file.
"""

from anomalib_wsi.models.rd_focal.anomaly_map import TILE_SCORES, tile_score
from anomalib_wsi.models.rd_focal.lightning_model import NoTumourTilesError, RDFocal, RDFocalConfigError
from anomalib_wsi.models.rd_focal.loss import FocalCosineLoss, focal_cosine_loss, tile_cosine_similarity
from anomalib_wsi.models.rd_focal.torch_model import SUPPORTED_BACKBONES, RDFocalModel
from anomalib_wsi.models.rd_focal.weights import BackboneWeightsError, load_backbone_weights, read_state_dict

__all__ = [
    "SUPPORTED_BACKBONES",
    "TILE_SCORES",
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
    "tile_score",
]
