"""``anomalib-wsi synth``: a synthetic cohort of pyramidal H&E-like TIFFs with Camelyon16-style ASAP XML."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["parser", "run"]


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
    from anomalib_wsi.data.synthetic import synth_command

    return int(synth_command(**options) or 0)
