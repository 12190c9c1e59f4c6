"""Writing files safely: atomic writes, spreadsheet-safe CSV tables, and clearing what a killed run left.

An interrupted run never leaves a half-written file under the final name (what resume relies on): every file is
written to a temporary ``.<name>.<random><suffix>`` beside it, then renamed. Files get the permissions an ordinary
``open`` would give them (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``. A run killed with
``kill -9`` can leave such temporaries; :func:`remove_stale_temporaries` clears them on the next run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "atomic_path",
    "atomic_save_npy",
    "atomic_write_csv",
    "atomic_write_text",
    "remove_stale_temporaries",
    "spreadsheet_safe",
]


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


def spreadsheet_safe(text: str) -> str:
    """A text cell that spreadsheets show as text: a leading ``=``, ``+``, ``-``, ``@``, tab or CR gets a ``'``.

    Slide names and error messages reach the run tables; a name like ``=HYPERLINK(...)`` would otherwise run as a
    formula when the table is opened in Excel or LibreOffice (OWASP "CSV injection"). Python readers see the
    ``'``; numbers are never changed (only text columns are passed here).
    """
    return f"'{text}" if text[:1] in {"=", "+", "-", "@", "\t", "\r"} else text


def atomic_write_csv(path: str | Path, table: pd.DataFrame, text_columns: tuple[str, ...] = ()) -> Path:
    """Write a table as CSV atomically, its ``text_columns`` made :func:`spreadsheet_safe`; returns the path."""
    table = table.copy()
    for column in text_columns:
        if column in table:
            table[column] = table[column].astype(str).map(spreadsheet_safe)
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def remove_stale_temporaries(folder: str | Path, names: list[str] | tuple[str, ...]) -> int:
    """Remove the temporaries that an interrupted write of ``folder/<name>`` left (``.<name>.*``); returns how many.

    Only this module's own temporary names for the given files are touched, so a user's files are never removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for name in names:
        for leftover in folder.glob(f".{name}.*"):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed
