"""Slides: reading with openslide (:mod:`reader`), tissue masks (:mod:`tissue`) and tile tables (:mod:`tiling`)."""

from anomalib_wsi.slide.reader import MAX_PLAUSIBLE_MPP, SLIDE_EXTENSIONS, ReadPlan, Slide, list_slides
from anomalib_wsi.slide.tiling import (
    TILE_COLUMNS,
    TilingConfig,
    load_or_tile,
    read_tile_table,
    tile_command,
    tile_slide,
    tiles_from_mask,
)
from anomalib_wsi.slide.tissue import (
    TissueConfig,
    TissueMask,
    detect_tissue,
    save_tissue_png,
    tissue_mask_from_rgb,
)

__all__ = [
    "MAX_PLAUSIBLE_MPP",
    "SLIDE_EXTENSIONS",
    "TILE_COLUMNS",
    "ReadPlan",
    "Slide",
    "TilingConfig",
    "TissueConfig",
    "TissueMask",
    "detect_tissue",
    "list_slides",
    "load_or_tile",
    "read_tile_table",
    "save_tissue_png",
    "tile_command",
    "tile_slide",
    "tiles_from_mask",
    "tissue_mask_from_rgb",
]
