"""anomalib-wsi: whole-slide metastasis detection with reverse distillation and a focal loss, for anomalib.

Public API (the names users import; kept stable):

- :class:`WSIEngine`: predicts slides into heatmaps, QuPath GeoJSON lesions, detections and slide scores.
- :class:`WSIDataModule`: tiles slides and labels tiles from annotations, for ``anomalib train``.
- :class:`RDFocal`: anomalib's ReverseDistillation with the focal cosine loss of He & Li (MIDL 2023).
- :class:`WSIPostProcessor`: turns tile scores into slide heatmaps, lesions and a slide score.

The heavy modules (torch, anomalib) are imported on first use, so ``import anomalib_wsi`` is quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_wsi.lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = ["RDFocal", "WSIDataModule", "WSIEngine", "WSIPostProcessor", "__version__"]

_LAZY = {
    "WSIEngine": "anomalib_wsi.inference.engine",
    "WSIDataModule": "anomalib_wsi.data.datamodule",
    "RDFocal": "anomalib_wsi.models.rd_focal.lightning_model",
    "WSIPostProcessor": "anomalib_wsi.post_processing.post_processor",
}

if TYPE_CHECKING:
    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.inference.engine import WSIEngine
    from anomalib_wsi.models.rd_focal.lightning_model import RDFocal
    from anomalib_wsi.post_processing.post_processor import WSIPostProcessor


__getattr__ = lazy_attributes(__name__, _LAZY)
