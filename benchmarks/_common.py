"""Helpers the benchmark scripts share: option parsing, device choice, synchronisation."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch


def parse_bool(text: str) -> bool:
    """``--flag true|false`` values."""
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    msg = f"expected true or false, got {text!r}"
    raise argparse.ArgumentTypeError(msg)


def select_device(name: str) -> torch.device | None:
    """``auto``, ``cpu`` or ``cuda[:N]`` as a device, with cuDNN autotuning and TF32 on GPUs.

    Returns None (after saying why on stderr) when CUDA is asked for and torch sees none.
    """
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        sys.stderr.write("--device cuda asked for, but torch sees no CUDA device\n")
        return None
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quiet_logs() -> None:
    """Warnings only, and nothing below errors from Lightning and anomalib (the figures are the output)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "anomalib", "anomalib_wsi"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def work_folder(path: str | None, prefix: str) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """``path`` (created), or a temporary folder that the caller cleans up through the returned handle."""
    if path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder, None
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    return Path(tmp.name), tmp
