"""``anomalib-wsi synth``: a synthetic cohort of pyramidal H&E-like TIFFs with Camelyon16-style ASAP XML."""

from __future__ import annotations

import logging
from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["parser", "run", "synth_command"]

logger = logging.getLogger(__name__)


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Write a synthetic cohort: pyramidal H&E-like TIFFs and Camelyon16-style ASAP XML.")
    p.add_argument("--output", required=True, help="folder to write slides/, annotations/ and labels.csv into")
    p.add_argument("--slides", type=int, default=6, help="number of slides (about half carry tumour)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same cohort")
    p.add_argument("--size", type=int, default=8192, help="side of each slide in level-0 pixels")
    p.add_argument("--mpp", type=float, default=0.5, help="level-0 resolution written into the TIFF (0.25 or 0.5)")
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    return synth_command(**options)


def synth_command(output: str, slides: int = 6, seed: int = 0, size: int = 8192, mpp: float = 0.5) -> int:
    """``anomalib-wsi synth``: write a synthetic cohort and log where it went.

    Args:
        output: cohort folder.
        slides: number of slides.
        seed: random seed.
        size: side of each slide in level-0 pixels.
        mpp: level-0 resolution in µm per pixel.

    Returns:
        0 on success.
    """
    from anomalib_wsi.data.synthetic import synthesize_cohort

    cohort = synthesize_cohort(output, n_slides=slides, seed=seed, size_px=size, mpp=mpp, progress=True)
    logger.info(
        "wrote %d slides (%d tumour, %d normal) to %s; labels in %s",
        len(cohort.slides),
        len(cohort.tumour_slide_ids),
        len(cohort.normal_slide_ids),
        cohort.root / "slides",
        cohort.labels_csv,
    )
    return 0
