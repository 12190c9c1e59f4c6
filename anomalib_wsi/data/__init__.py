"""Data: slide tiles for anomalib and the built-in synthetic cohorts.

- :class:`WSIDataModule`: slides -> tissue tiles -> labelled tiles -> train/val/test (``anomalib train``).
- :class:`PatchFolder`: pre-extracted tiles in ``train/good``, ``train/bad``, ``test/good``, ``test/bad``.
- :func:`synthesize_cohort` / :func:`synthesize_slide`: pyramidal H&E-like TIFFs with Camelyon16-style ASAP XML.
- :class:`StainReference` / :class:`StainNormalizer`: stain normalisation (Macenko, Reinhard) of tiles;
  :class:`HEDJitter` and :class:`RandomRot90`: H&E colour and orientation augmentation.

The data modules import anomalib (slow); they load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_wsi.data.synthetic import SyntheticCohort, SyntheticSlide, synthesize_cohort, synthesize_slide
from anomalib_wsi.lazy import lazy_attributes

__all__ = [
    "HEDJitter",
    "PatchFolder",
    "RandomRot90",
    "StainNormalizer",
    "StainReference",
    "SyntheticCohort",
    "SyntheticSlide",
    "WSIDataModule",
    "WSITileDataset",
    "synthesize_cohort",
    "synthesize_slide",
]

_LAZY = {
    "WSIDataModule": "anomalib_wsi.data.datamodule",
    "PatchFolder": "anomalib_wsi.data.patch_folder",
    "WSITileDataset": "anomalib_wsi.data.dataset",
    "HEDJitter": "anomalib_wsi.data.stain",
    "RandomRot90": "anomalib_wsi.data.stain",
    "StainNormalizer": "anomalib_wsi.data.stain",
    "StainReference": "anomalib_wsi.data.stain",
}

if TYPE_CHECKING:
    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.data.dataset import WSITileDataset
    from anomalib_wsi.data.patch_folder import PatchFolder
    from anomalib_wsi.data.stain import HEDJitter, RandomRot90, StainNormalizer, StainReference


__getattr__ = lazy_attributes(__name__, _LAZY)
