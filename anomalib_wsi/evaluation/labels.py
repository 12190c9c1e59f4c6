"""Slide-level labels: a ``slide_id,label`` CSV or Camelyon16's own ``reference.csv``.

Accepted layouts:

- a CSV with a header row naming ``slide_id`` and ``label`` columns (other columns such as ``case_id`` are
  ignored), labels ``tumor``/``tumour``/``normal``, ``1``/``0`` or ``tumor_tissue``/``normal_tissue`` in any case;
- Camelyon16's ``reference.csv``: no header, ``Test_001,Tumor,Macro,...`` / ``Test_002,Normal`` (columns past the
  second are ignored).

Slide ids are kept as written; matching them to files elsewhere is case-insensitive (``Test_001`` in
``reference.csv`` is the slide ``test_001.tif``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from anomalib_wsi.errors import WSIError

__all__ = ["LABEL_VALUES", "EvaluationError", "parse_label", "read_slide_labels"]


class EvaluationError(WSIError):
    """An evaluation input (labels, predictions, ground truth) is missing or cannot be read."""


#: Accepted label spellings (lower case) and their value: 1 tumour, 0 normal.
LABEL_VALUES: dict[str, int] = {
    "tumor": 1,
    "tumour": 1,
    "tumor_tissue": 1,
    "tumour_tissue": 1,
    "1": 1,
    "normal": 0,
    "normal_tissue": 0,
    "0": 0,
}


def read_text_file(path: Path, what: str, expected: str) -> str:
    """The text of a small UTF-8 file; a binary file (NUL bytes, not UTF-8) is refused in one line.

    Args:
        path: the file.
        what: what the file is, for the message (``"labels file"``).
        expected: what should be passed instead, for the message.

    Raises:
        EvaluationError: the file cannot be read or is not UTF-8 text.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        msg = f"{path}: cannot read this {what} ({err.strerror or err}); pass {expected}"
        raise EvaluationError(msg) from None
    try:
        if b"\x00" in data:
            raise UnicodeError("NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeError:
        msg = f"{path}: this {what} is binary, not UTF-8 text; pass {expected}"
        raise EvaluationError(msg) from None


def parse_label(value: str) -> int | None:
    """1 for a tumour label, 0 for a normal one, ``None`` for anything else (see :data:`LABEL_VALUES`)."""
    return LABEL_VALUES.get(value.strip().lower())


def read_slide_labels(path: str | Path) -> dict[str, int]:
    """Read slide labels.

    Args:
        path: a CSV with a ``slide_id,label`` header, or Camelyon16's headerless ``reference.csv``.

    Returns:
        ``{slide_id: label}`` in file order, label 1 tumour and 0 normal.

    Raises:
        EvaluationError: the file is missing, binary, empty, in neither layout, has an unknown label or a repeated
            slide.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: labels file not found; pass a CSV with slide_id,label or Camelyon16's reference.csv"
        raise EvaluationError(msg)
    text = read_text_file(path, "labels file", "a CSV with slide_id,label or Camelyon16's reference.csv")
    rows = [
        (number, row)
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)
        if any(c.strip() for c in row)
    ]
    if not rows:
        msg = f"{path}: labels file is empty; write a header slide_id,label and one row per slide"
        raise EvaluationError(msg)
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "slide_id" in header and "label" in header:
        id_col, label_col = header.index("slide_id"), header.index("label")
        body = rows[1:]
    elif len(header) >= 2 and "slide_id" not in header and parse_label(rows[0][1][1]) is not None:
        id_col, label_col = 0, 1  # reference.csv: no header
        body = rows
    else:
        msg = (
            f"{path}: unrecognised labels file (first row {','.join(rows[0][1])!r}); expected a header with "
            "slide_id and label columns, or Camelyon16's reference.csv rows like Test_001,Tumor"
        )
        raise EvaluationError(msg)
    labels: dict[str, int] = {}
    seen_lower: set[str] = set()
    for number, row in body:
        if len(row) <= max(id_col, label_col):
            msg = f"{path}, line {number}: expected a slide id and a label, got {','.join(row)!r}"
            raise EvaluationError(msg)
        slide_id, raw = row[id_col].strip(), row[label_col]
        value = parse_label(raw)
        if not slide_id or value is None:
            msg = (
                f"{path}, line {number}: label {raw.strip()!r} of slide {slide_id!r} is not one of "
                "tumor/tumour/normal, 1/0, tumor_tissue/normal_tissue"
            )
            raise EvaluationError(msg)
        if slide_id.lower() in seen_lower:
            msg = f"{path}, line {number}: slide {slide_id!r} is listed twice; keep one row per slide"
            raise EvaluationError(msg)
        seen_lower.add(slide_id.lower())
        labels[slide_id] = value
    if not labels:
        msg = f"{path}: no slide rows under the header; add one row per slide"
        raise EvaluationError(msg)
    return labels
