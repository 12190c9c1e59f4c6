"""Slides: reading with openslide (:mod:`reader`), tissue masks (:mod:`tissue`) and tile tables (:mod:`tiling`)."""

from anomalib_wsi.slide.reader import SLIDE_EXTENSIONS, ReadPlan, Slide, list_slides

__all__ = ["SLIDE_EXTENSIONS", "ReadPlan", "Slide", "list_slides"]
