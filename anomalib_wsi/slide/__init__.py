"""Slides: reading with openslide (:mod:`reader`), tissue masks (:mod:`tissue`), tile tables (:mod:`tiling`) and
slide ids / per-slide output folders (:mod:`ids`)."""

from anomalib_wsi.slide.ids import check_slide_id, slide_id_from_path, slide_output_dir
from anomalib_wsi.slide.reader import (
    MAX_PLAUSIBLE_MPP,
    MAX_SLIDE_PIXELS,
    SLIDE_EXTENSIONS,
    ReadPlan,
    Slide,
    SlideSearch,
    SlideTooLargeError,
    find_slides,
    list_slides,
    max_slide_pixels,
)
from anomalib_wsi.slide.tiling import (
    TILE_COLUMNS,
    TilingConfig,
    load_or_tile,
    read_tile_table,
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
    "MAX_SLIDE_PIXELS",
    "SLIDE_EXTENSIONS",
    "TILE_COLUMNS",
    "ReadPlan",
    "Slide",
    "SlideSearch",
    "SlideTooLargeError",
    "TilingConfig",
    "TissueConfig",
    "TissueMask",
    "check_slide_id",
    "detect_tissue",
    "find_slides",
    "list_slides",
    "load_or_tile",
    "max_slide_pixels",
    "read_tile_table",
    "save_tissue_png",
    "slide_id_from_path",
    "slide_output_dir",
    "tile_slide",
    "tiles_from_mask",
    "tissue_mask_from_rgb",
]
