"""Kept for code written against earlier versions: ``anomalib_wsi.engine`` re-exports :mod:`anomalib_wsi.inference`.

New code imports from :mod:`anomalib_wsi.inference` (or ``anomalib_wsi.WSIEngine``).
"""

from __future__ import annotations

from anomalib_wsi.inference import *  # noqa: F403
from anomalib_wsi.inference import __all__ as __all__
