"""``anomalib-wsi tile``: tissue detection and tiling; ``DIR/<slide_id>/tiles.csv`` and ``tissue.png`` per slide."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["parser", "run"]


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Detect tissue and tile slides; writes DIR/<slide_id>/tiles.csv and tissue.png.")
    p.add_argument("slides", nargs="+", help="slide files or folders of slides")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=0.5, help="target resolution of the tiles in µm per pixel")
    p.add_argument("--tile-size", type=int, default=256, help="tile side in pixels at the target resolution")
    p.add_argument("--stride", type=int, default=None, help="step between tiles at the target mpp (default: tile size)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile")
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 mpp for slides that record none")
    p.add_argument("--annotations", default=None, help="folder of ASAP .xml / QuPath .geojson, matched by slide stem")
    p.add_argument("--tumour-threshold", type=float, default=0.5, help="tumour fraction from which a tile is tumour")
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    from anomalib_wsi.slide.tiling import tile_command

    return int(tile_command(**options) or 0)
