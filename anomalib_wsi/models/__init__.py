"""Models: anomalib's reverse distillation with the focal cosine loss of He & Li (MIDL 2023).

The heavy modules (torch, anomalib) load on first use of :class:`RDFocal`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["RDFocal"]

if TYPE_CHECKING:
    from anomalib_wsi.models.rd_focal import RDFocal


def __getattr__(name: str) -> Any:
    if name == "RDFocal":
        return importlib.import_module("anomalib_wsi.models.rd_focal").RDFocal
    msg = f"module 'anomalib_wsi.models' has no attribute {name!r}"
    raise AttributeError(msg)
