"""Models: RDFocal (reverse distillation with the focal cosine loss of He & Li, MIDL 2023) and any anomalib model.

- :class:`RDFocal`: the paper's model.
- :func:`wsi_model`: any anomalib image model (Padim, PatchCore, STFPM, ...) with the slide post-processor, its tile
  size and an offline backbone (:mod:`~anomalib_wsi.models.anomalib_models`).

The heavy modules (torch, anomalib) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_wsi.lazy import lazy_attributes

__all__ = ["RDFocal", "model_class", "wsi_model"]

_LAZY = {
    "RDFocal": "anomalib_wsi.models.rd_focal",
    "model_class": "anomalib_wsi.models.anomalib_models",
    "wsi_model": "anomalib_wsi.models.anomalib_models",
}

if TYPE_CHECKING:
    from anomalib_wsi.models.anomalib_models import model_class, wsi_model
    from anomalib_wsi.models.rd_focal import RDFocal


__getattr__ = lazy_attributes(__name__, _LAZY)
