"""Cohort facts in one place: slide records, manifests, slide lists, the annotation-matching rule, slide labels.

- :class:`SlideRecord` and :func:`read_manifest`: a CSV ``slide_path[, annotation_path, split, label, mpp]``
  (relative paths from the CSV's folder);
- :func:`resolve_slides`: slide files, folders of slides and manifests as ``(path, mpp)`` pairs, inputs that
  name no slide reported, never skipped;
- :func:`find_annotation`: the one rule that matches an annotation file to a slide: ``<slide_id>.xml``,
  ``.geojson`` or ``.json`` (:data:`ANNOTATION_EXTENSIONS`, in that order), the exact name first, then ignoring
  case (``Test_001.xml`` annotates ``test_001.tif``);
- :func:`read_slide_labels` / :func:`parse_label`: slide labels as a ``slide_id,label`` CSV or Camelyon16's
  ``reference.csv`` (no header: ``Test_001,Tumor,Macro,...``), labels ``tumor``/``tumour``/``normal``, ``1``/``0``
  or ``tumor_tissue``/``normal_tissue`` in any case.

Training (the data module), prediction, ``tile`` and the evaluation all read cohorts through this module.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomalib_wsi.annotations.reader import ANNOTATION_EXTENSIONS
from anomalib_wsi.errors import CohortError, WSIError
from anomalib_wsi.slide.reader import find_slides

__all__ = [
    "ANNOTATION_EXTENSIONS",
    "LABEL_VALUES",
    "SPLITS",
    "SlideRecord",
    "find_annotation",
    "parse_label",
    "positive_number",
    "read_manifest",
    "read_slide_labels",
    "read_text_file",
    "resolve_slides",
]

#: The splits a manifest may give.
SPLITS = ("train", "val", "test")


@dataclass
class SlideRecord:
    """One slide of a cohort: where it is, its annotations, its label and split."""

    slide_path: Path
    annotation_path: Path | None = None
    split: str | None = None
    label: int | None = None
    mpp: float | None = None

    @property
    def slide_id(self) -> str:
        """The slide's file stem."""
        return self.slide_path.stem


def positive_number(value: Any) -> float | None:
    """``value`` as a finite number above 0 (an mpp, a size), or None when it is not one (``"abc"``, inf, -1)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _manifest_mpp(value: Any, source: Path, slide_path: Path) -> float | None:
    """A manifest's optional ``mpp`` cell: a positive finite number of µm per pixel, None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    mpp = positive_number(value)
    if mpp is None:
        msg = (
            f"{source}: mpp {value!r} of {slide_path.name} is not a positive number of µm per pixel; write the "
            "slide's level-0 resolution (e.g. 0.25 for 40x, 0.5 for 20x) or leave the cell empty"
        )
        raise CohortError(msg)
    return mpp


def _parse_label(value: Any, source: Path) -> int | None:
    """A manifest's optional ``label`` cell: the evaluation's spellings (tumor/normal, 1/0, ...), None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    label = parse_label(text)
    if label is None:
        msg = f"{source}: unknown slide label {value!r}; use tumor/normal, 1/0 or tumor_tissue/normal_tissue"
        raise WSIError(msg)
    return label


def find_annotation(annotation_dir: str | Path | None, slide_id: str) -> Path | None:
    """The annotation file of a slide in ``annotation_dir``, or None: the one matching rule of the package.

    ``<slide_id>.xml``, ``.geojson``, ``.json`` in that order (:data:`ANNOTATION_EXTENSIONS`), the exact file name
    first, then ignoring case (Camelyon16 names ``Test_001`` what is ``test_001.tif`` on disk).
    """
    if annotation_dir is None:
        return None
    folder = Path(annotation_dir)
    for ext in ANNOTATION_EXTENSIONS:
        candidate = folder / f"{slide_id}{ext}"
        if candidate.is_file():
            return candidate
    if not folder.is_dir():
        return None
    by_lower: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            by_lower.setdefault(entry.name.lower(), entry)
    for ext in ANNOTATION_EXTENSIONS:
        if f"{slide_id}{ext}".lower() in by_lower:
            return by_lower[f"{slide_id}{ext}".lower()]
    return None


def read_manifest(path: str | Path, annotation_dir: Path | None = None) -> list[SlideRecord]:
    """Read a CSV manifest ``slide_path[, annotation_path, split, label, mpp]`` (relative paths: from the CSV).

    Raises:
        WSIError: missing ``slide_path`` column, a listed file that does not exist, or an unknown split/label.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        msg = f"{path}: not a readable CSV manifest ({str(err).splitlines()[0]}); expected columns slide_path,..."
        raise WSIError(msg) from None
    if "slide_path" not in table.columns:
        msg = f"{path}: manifest needs a 'slide_path' column (optional: annotation_path, split, label, mpp)"
        raise WSIError(msg)
    records = []
    for row in table.itertuples(index=False):
        slide_path = Path(str(row.slide_path))
        slide_path = slide_path if slide_path.is_absolute() else path.parent / slide_path
        annotation = getattr(row, "annotation_path", None)
        if isinstance(annotation, str) and annotation.strip():
            annotation_path: Path | None = Path(annotation)
            if not annotation_path.is_absolute():  # type: ignore[union-attr]
                annotation_path = path.parent / annotation_path  # type: ignore[operator]
            if not annotation_path.exists():  # type: ignore[union-attr]
                msg = f"{path}: annotation file {annotation_path} listed for {slide_path.name} does not exist"
                raise WSIError(msg)
        else:
            annotation_path = find_annotation(annotation_dir, slide_path.stem)
        split = getattr(row, "split", None)
        split = str(split).strip().lower() if isinstance(split, str) and split.strip() else None
        if split is not None and split not in SPLITS:
            msg = f"{path}: split {split!r} for {slide_path.name} is not one of train/val/test"
            raise WSIError(msg)
        mpp = _manifest_mpp(getattr(row, "mpp", None), path, slide_path)
        records.append(
            SlideRecord(slide_path, annotation_path, split, _parse_label(getattr(row, "label", None), path), mpp)
        )
    return records


def resolve_slides(
    slides: str | Path | Sequence[str | Path],
) -> tuple[list[tuple[Path, float | None]], list[tuple[Path, str]]]:
    """Slide files, folders of slides and manifest CSVs as ``(slide path, manifest mpp or None)`` pairs.

    Returns:
        The pairs, and the inputs that gave no slide with the reason (a folder without slides, a broken link):
        each becomes that input's failure, never a silent skip nor the end of the run.
    """
    items = [slides] if isinstance(slides, str | Path) else list(slides)
    resolved: list[tuple[Path, float | None]] = []
    problems: list[tuple[Path, str]] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".csv" and path.is_file():
            resolved.extend((r.slide_path, r.mpp) for r in read_manifest(path))
            continue
        found = find_slides(path)
        resolved.extend((p, None) for p in found.slides)
        problems.extend(found.problems)
    return resolved, problems


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
        CohortError: the file cannot be read or is not UTF-8 text.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        msg = f"{path}: cannot read this {what} ({err.strerror or err}); pass {expected}"
        raise CohortError(msg) from None
    try:
        if b"\x00" in data:
            raise UnicodeError("NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeError:
        msg = f"{path}: this {what} is binary, not UTF-8 text; pass {expected}"
        raise CohortError(msg) from None


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
        CohortError: the file is missing, binary, empty, in neither layout, has an unknown label or a repeated
            slide.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: labels file not found; pass a CSV with slide_id,label or Camelyon16's reference.csv"
        raise CohortError(msg)
    text = read_text_file(path, "labels file", "a CSV with slide_id,label or Camelyon16's reference.csv")
    rows = [
        (number, row)
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)
        if any(c.strip() for c in row)
    ]
    if not rows:
        msg = f"{path}: labels file is empty; write a header slide_id,label and one row per slide"
        raise CohortError(msg)
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
        raise CohortError(msg)
    labels: dict[str, int] = {}
    seen_lower: set[str] = set()
    for number, row in body:
        if len(row) <= max(id_col, label_col):
            msg = f"{path}, line {number}: expected a slide id and a label, got {','.join(row)!r}"
            raise CohortError(msg)
        slide_id, raw = row[id_col].strip(), row[label_col]
        value = parse_label(raw)
        if not slide_id or value is None:
            msg = (
                f"{path}, line {number}: label {raw.strip()!r} of slide {slide_id!r} is not one of "
                "tumor/tumour/normal, 1/0, tumor_tissue/normal_tissue"
            )
            raise CohortError(msg)
        if slide_id.lower() in seen_lower:
            msg = f"{path}, line {number}: slide {slide_id!r} is listed twice; keep one row per slide"
            raise CohortError(msg)
        seen_lower.add(slide_id.lower())
        labels[slide_id] = value
    if not labels:
        msg = f"{path}: no slide rows under the header; add one row per slide"
        raise CohortError(msg)
    return labels
