"""Names a package exports but imports only on first use, so that ``import anomalib_wsi`` and ``--help`` stay quick.

Example:
    >>> __getattr__ = lazy_attributes("anomalib_wsi.data", {"WSIDataModule": "anomalib_wsi.data.datamodule"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that imports ``name`` from the module ``where[name]``."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__
