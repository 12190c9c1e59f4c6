"""The packaged YAML configs: the settings the demo and the Camelyon16 runner read, and ``anomalib train`` trains.

``rd_focal_demo.yaml`` (the synthetic demo: resnet18, 64 px tiles, CPU), ``rd_focal_wsi.yaml`` (He & Li's
Camelyon16 setting) and ``rd_focal_wsi_stain.yaml`` (the same plus stain normalisation and H&E augmentation) are
installed with the package, so ``pip install anomalib-wsi`` (not only a clone) has them.
These files are the source; the repository's top-level ``configs/`` holds byte-identical copies for
``anomalib train --config configs/<name>.yaml`` (a test keeps the two equal).

Example:
    >>> from anomalib_wsi.configs import load_config
    >>> load_config("rd_focal_demo")["model"]["init_args"]["backbone"]
    'resnet18'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from anomalib_wsi.errors import WSIError

__all__ = ["config_names", "config_text", "load_config"]


def config_names() -> list[str]:
    """The names of the packaged configs (file stems), sorted."""
    folder = resources.files(__name__)
    return sorted(Path(entry.name).stem for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def config_text(name: str) -> str:
    """The text of a packaged config, comments included.

    Args:
        name: the config's stem or file name (``"rd_focal_wsi"`` or ``"rd_focal_wsi.yaml"``).

    Raises:
        WSIError: no packaged config has that name.
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    entry = resources.files(__name__) / f"{stem}.yaml"
    if not entry.is_file():
        msg = f"no packaged config {name!r}; choose one of {', '.join(config_names())}"
        raise WSIError(msg)
    return entry.read_text(encoding="utf-8")


def load_config(name: str) -> dict[str, Any]:
    """A packaged config as a dictionary (``trainer``, ``model``, ``data``, ... as ``anomalib train`` reads them).

    Args:
        name: the config's stem or file name (``"rd_focal_demo"`` or ``"rd_focal_demo.yaml"``).

    Returns:
        A new dictionary on every call (callers may change it).

    Raises:
        WSIError: no packaged config has that name.
    """
    loaded = yaml.safe_load(config_text(name))
    return loaded if isinstance(loaded, dict) else {}
