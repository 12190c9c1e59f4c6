"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

An interrupted run never leaves a half-written file under the final name (what resume relies on). Files get the
permissions an ordinary ``open`` would give them (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "atomic_save_npy", "atomic_write_text"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it becomes ``path``, else it is removed.

    Args:
        path: the final file.
        suffix: suffix of the temporary file (some writers choose the format by it, e.g. ``.png``, ``.npy``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (``\\n`` line ends); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Save a ``.npy`` array atomically; returns the path."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)
