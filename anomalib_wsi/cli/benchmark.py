"""``anomalib-wsi benchmark camelyon16``: the paper's Camelyon16 protocol on a Camelyon16 download."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

__all__ = ["parser", "run"]


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Reproduce the paper's Camelyon16 protocol on a Camelyon16 download.")
    p.add_argument("dataset", choices=["camelyon16"], help="which benchmark")
    p.add_argument("--root", required=True, help="Camelyon16 folder (training/, testing/, lesion_annotations/ ...)")
    p.add_argument("--output", default="camelyon16_run")
    p.add_argument("--config", default=None, help="training config (default: the packaged rd_focal_wsi.yaml)")
    p.add_argument("--dry-run", action="store_true", help="check the layout and print the plan, train nothing")
    p.add_argument(
        "--paper-patches",
        default=None,
        help="FW-RD's coordinate folder (train_good.txt, train_bad.txt, test_good.txt, test_bad.txt): train on the "
        "paper's 6,001 patches and add its patch-level test",
    )
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    from anomalib_wsi.reproduction import benchmark_command

    return int(benchmark_command(**options) or 0)
