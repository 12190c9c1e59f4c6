"""``anomalib-wsi demo``: synthetic cohort -> train RDFocal -> predict -> evaluate, on CPU in minutes."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["parser", "run"]


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Synthetic cohort -> train RDFocal -> predict -> evaluate, on CPU in minutes.")
    p.add_argument("--output", default="demo_output", help="folder for the cohort, the model and the results")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    from anomalib_wsi.demo import demo_command

    return int(demo_command(**options) or 0)
