"""Patch coordinate lists like He & Li's (FW-RD ``preprocess/coords/*.txt``): given patches instead of sampled ones.

A coordinate file has one patch per line, ``slide_id,x_center,y_center`` in level-0 pixels, the centre of a
``tile_size_px`` square read at level 0: FW-RD reads ``read_region((x_center - 128, y_center - 128), 0,
(256, 256))``, and so does :func:`patch_samples`. A fourth column may hold the label; a header line
(``slide_id,x_center,y_center[,label]``) is optional; Windows line ends are fine.

Where the labels come from (:func:`parse_coordinate_specs`), in any of these spellings:

- ``"train_good.txt:0"``, ``"train_bad.txt:1"`` (also ``:normal``/``:tumour``/``:tumor``, ``:good``/``:bad``): a
  label per file; a list of such entries (``--data.coordinates "[train_good.txt:0, train_bad.txt:1]"``), one
  string of entries separated by spaces, or a mapping ``{train_good.txt: 0, train_bad.txt: 1}`` in YAML;
- a file without a label: its fourth column;
- a folder: FW-RD's layout, ``train_good.txt`` (normal) and ``train_bad.txt`` (tumour) in it;
- a small CSV manifest with a header ``path,label`` (paths relative to the manifest).

Example:
    >>> coords = read_coordinates(["train_good.txt:0", "train_bad.txt:1"])  # doctest: +SKIP
    >>> coords.columns.tolist()                                               # doctest: +SKIP
    ['slide_id', 'x_center', 'y_center', 'label', 'source']
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anomalib_wsi.errors import WSIError

if TYPE_CHECKING:
    from anomalib_wsi.data.datamodule import SlideRecord

logger = logging.getLogger(__name__)

__all__ = [
    "COORDINATE_COLUMNS",
    "PATCH_LABELS",
    "CoordinateSource",
    "coordinate_spec_strings",
    "listed_patch_samples",
    "name_list",
    "parse_coordinate_specs",
    "patch_samples",
    "read_coordinate_file",
    "read_coordinates",
    "split_by_coordinates",
]

#: Columns of the table :func:`read_coordinates` returns.
COORDINATE_COLUMNS = ("slide_id", "x_center", "y_center", "label", "source")

#: Patch label spellings (lower case): 1 tumour, 0 normal (FW-RD's folders are ``good`` and ``bad``).
PATCH_LABELS: dict[str, int] = {
    "0": 0,
    "normal": 0,
    "good": 0,
    "1": 1,
    "tumour": 1,
    "tumor": 1,
    "bad": 1,
}

#: The files of FW-RD's coordinate folder that hold training patches, with their labels.
FWRD_TRAIN_FILES = (("train_good.txt", 0), ("train_bad.txt", 1))

CoordinateSpec = str | Path | Sequence[str | Path] | Mapping[str, Any]

_HINT = "give each file a label (train_good.txt:0 train_bad.txt:1) or a fourth column"


@dataclass(frozen=True)
class CoordinateSource:
    """One coordinate file and the label of all its patches (None: the file's fourth column)."""

    path: Path
    label: int | None = None


def _parse_patch_label(value: Any, where: str) -> int:
    text = str(int(value)) if isinstance(value, float | np.floating) and float(value).is_integer() else str(value)
    label = PATCH_LABELS.get(text.strip().lower())
    if label is None:
        msg = f"{where}: unknown patch label {value!r}; use 0/1, normal/tumour or good/bad"
        raise WSIError(msg)
    return label


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_label(entry: str) -> tuple[str, int | None]:
    """``"file.txt:1"`` -> ``("file.txt", 1)``; an entry without a known label suffix keeps its whole text."""
    head, sep, tail = entry.rpartition(":")
    if sep and head and tail.strip().lower() in PATCH_LABELS:
        return head, PATCH_LABELS[tail.strip().lower()]
    return entry, None


def _is_manifest(path: Path) -> bool:
    """Whether a file is a manifest (a header naming ``path``) rather than a coordinate list."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        first = next(csv.reader(handle), [])
    names = {cell.strip().lower() for cell in first}
    return "path" in names and "x_center" not in names


def _read_manifest(path: Path) -> list[CoordinateSource]:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip().lower() for c in table.columns]
    sources = []
    for number, row in enumerate(table.itertuples(index=False), start=2):
        listed = Path(str(row.path).strip())
        listed = listed if listed.is_absolute() else path.parent / listed
        label = getattr(row, "label", "")
        where = f"{path} line {number}"
        sources.append(CoordinateSource(listed, _parse_patch_label(label, where) if str(label).strip() else None))
    return sources


def _sources_of(entry: str | Path, label: int | None) -> list[CoordinateSource]:
    path = Path(entry)
    if path.is_dir():
        if label is not None:
            msg = f"{path}: a label belongs to a coordinate file, not a folder; drop ':{label}'"
            raise WSIError(msg)
        missing = [name for name, _ in FWRD_TRAIN_FILES if not (path / name).is_file()]
        if missing:
            msg = (
                f"{path}: coordinate folder lacks {', '.join(missing)} (FW-RD's preprocess/coords layout); "
                "or list the files with their labels"
            )
            raise WSIError(msg)
        return [CoordinateSource(path / name, value) for name, value in FWRD_TRAIN_FILES]
    if not path.is_file():
        msg = f"{path}: coordinate file not found; fix data.coordinates"
        raise WSIError(msg)
    if label is None and _is_manifest(path):
        return _read_manifest(path)
    return [CoordinateSource(path, label)]


def parse_coordinate_specs(spec: CoordinateSpec) -> list[CoordinateSource]:
    """The coordinate files named by ``spec`` and their labels (see the module's spellings).

    Args:
        spec: one entry, a sequence of entries or a ``{path: label}`` mapping; an entry is ``PATH[:LABEL]``.

    Raises:
        WSIError: a file or folder that does not exist, an unknown label, or an empty spec.
    """
    sources: list[CoordinateSource] = []
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            label = None if value is None or str(value).strip() == "" else _parse_patch_label(value, f"{key}")
            sources.extend(_sources_of(str(key), label))
    else:
        entries = [spec] if isinstance(spec, str | Path) else list(spec)
        # one string may hold several entries ("train_good.txt:0 train_bad.txt:1", as typed after one option)
        entries = [
            part
            for entry in entries
            for part in (
                [entry] if isinstance(entry, Path) or Path(_split_label(str(entry))[0]).exists() else str(entry).split()
            )
        ]
        for entry in entries:
            path, label = (entry, None) if isinstance(entry, Path) else _split_label(str(entry))
            sources.extend(_sources_of(path, label))
    if not sources:
        msg = f"data.coordinates is empty; {_HINT}"
        raise WSIError(msg)
    return sources


def coordinate_spec_strings(spec: CoordinateSpec | None) -> list[str] | dict[str, Any] | None:
    """``spec`` with plain types only (paths as strings), as checkpoints store hyper-parameters."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return {str(key): value for key, value in spec.items()}
    if isinstance(spec, str | Path):
        return [str(spec)]
    return [str(entry) for entry in spec]


def read_coordinate_file(path: str | Path, label: int | None = None) -> pd.DataFrame:
    """Read one coordinate file.

    Args:
        path: ``slide_id,x_center,y_center[,label]`` per line, with or without a header line.
        label: the label of every patch (None: the file's fourth column).

    Returns:
        A table with :data:`COORDINATE_COLUMNS` (integer centres, label 0 normal / 1 tumour).

    Raises:
        WSIError: a malformed line, a missing or contradicting label.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    first_line = 1
    if rows and len(rows[0]) > 2 and not _is_number(rows[0][1]) and not _is_number(rows[0][2]):  # a header line
        header = [cell.lower() for cell in rows[0]]
        if not {"slide_id", "x_center", "y_center"} <= set(header):
            msg = f"{path}: header {','.join(rows[0])} lacks slide_id,x_center,y_center (level-0 patch centres)"
            raise WSIError(msg)
        order = [header.index(name) if name in header else -1 for name in ("slide_id", "x_center", "y_center", "label")]
        rows = [[row[i] if 0 <= i < len(row) else "" for i in order] for row in rows[1:]]
        first_line = 2
    slide_ids, xs, ys, labels = [], [], [], []
    for number, row in enumerate(rows, start=first_line):
        where = f"{path} line {number}"
        if len(row) < 3:
            msg = f"{where}: expected slide_id,x_center,y_center[,label], got {','.join(row)!r}"
            raise WSIError(msg)
        try:
            x, y = round(float(row[1])), round(float(row[2]))
        except ValueError:
            msg = f"{where}: x_center and y_center must be numbers (level-0 pixels), got {row[1]!r}, {row[2]!r}"
            raise WSIError(msg) from None
        column = _parse_patch_label(row[3], where) if len(row) > 3 and row[3] != "" else None
        if label is not None and column is not None and column != label:
            msg = f"{where}: label column says {column} but the file is listed with label {label}; {_HINT}"
            raise WSIError(msg)
        value = label if label is not None else column
        if value is None:
            msg = f"{where}: no label for this patch; {_HINT}"
            raise WSIError(msg)
        slide_ids.append(row[0])
        xs.append(x)
        ys.append(y)
        labels.append(value)
    return pd.DataFrame(
        {
            "slide_id": pd.Series(slide_ids, dtype=object),
            "x_center": np.asarray(xs, dtype=np.int64),
            "y_center": np.asarray(ys, dtype=np.int64),
            "label": np.asarray(labels, dtype=np.int64),
            "source": str(path),
        },
        columns=list(COORDINATE_COLUMNS),
    )


def read_coordinates(spec: CoordinateSpec) -> pd.DataFrame:
    """All patches named by ``spec`` (see :func:`parse_coordinate_specs`), in file and line order.

    Raises:
        WSIError: as :func:`parse_coordinate_specs` and :func:`read_coordinate_file`, or no patch at all.
    """
    sources = parse_coordinate_specs(spec)
    table = pd.concat([read_coordinate_file(s.path, s.label) for s in sources], ignore_index=True)
    if table.empty:
        msg = f"{', '.join(str(s.path) for s in sources)}: the coordinate files list no patch"
        raise WSIError(msg)
    return table


def patch_samples(coordinates: pd.DataFrame, slide_paths: Mapping[str, Path], tile_size_px: int) -> pd.DataFrame:
    """Tile-table rows of the listed patches: level-0 squares of ``tile_size_px`` around each centre.

    Args:
        coordinates: a table from :func:`read_coordinates`.
        slide_paths: slide file of each ``slide_id`` of the table.
        tile_size_px: patch side in level-0 pixels (FW-RD: 256).

    Returns:
        One row per patch with the tile-table columns (``x = x_center - tile_size_px // 2``, level 0, no
        resize), ``label`` and ``label_index``.
    """
    half = int(tile_size_px) // 2
    table = coordinates.reset_index(drop=True)
    samples = pd.DataFrame(
        {
            "slide_id": table["slide_id"].to_numpy(),
            "slide_path": [str(slide_paths[s]) for s in table["slide_id"]],
            "x": table["x_center"].to_numpy() - half,
            "y": table["y_center"].to_numpy() - half,
            "x_center": table["x_center"].to_numpy(),
            "y_center": table["y_center"].to_numpy(),
            "level": 0,
            "read_size_px": int(tile_size_px),
            "tile_size_px": int(tile_size_px),
            "tile_size_lv0": float(tile_size_px),
            "label": table["label"].to_numpy(),
            "label_index": table["label"].to_numpy(),
            "source": table["source"].to_numpy(),
        }
    )
    return samples


def name_list(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` for a short list; the first ``limit`` names and ``and N more`` for a long one."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def split_by_coordinates(
    records: list[SlideRecord],
    coordinates: pd.DataFrame,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    where: str = "the cohort",
) -> list[SlideRecord]:
    """Give slides their split when training patches are listed.

    Slides with listed patches train; the others (without a split of their own) validate and test in the ratio of
    ``val_ratio`` to ``test_ratio``, stratified by slide label and seeded. Slide ids match case-insensitively.

    Raises:
        WSIError: a listed slide is not among ``records``, or a manifest puts one in another split.
    """
    listed = list(dict.fromkeys(coordinates["slide_id"]))
    known = {record.slide_id.lower() for record in records}
    missing = [slide_id for slide_id in listed if slide_id.lower() not in known]
    if missing:
        msg = (
            f"{where}: {len(missing)} slides named in data.coordinates are not in the cohort "
            f"({name_list(missing)}); add them to data.root or drop their patches"
        )
        raise WSIError(msg)
    train_ids = {slide_id.lower() for slide_id in listed}
    for record in records:
        if record.slide_id.lower() not in train_ids:
            if record.split == "train":
                logger.warning("%s: split train but no listed patch; not used for training", record.slide_path)
            continue
        if record.split not in (None, "train"):
            msg = (
                f"{record.slide_path}: split {record.split!r} in the manifest, but data.coordinates lists "
                "training patches on it; a slide belongs to one split"
            )
            raise WSIError(msg)
        record.split = "train"
    rest = [record for record in records if record.split is None]
    total = val_ratio + test_ratio
    test_share = test_ratio / total if total > 0 else 0.0
    rng = np.random.default_rng(seed)
    for label in (1, 0, None):
        group = [record for record in rest if record.label == label]
        n_test = round(len(group) * test_share)
        for rank, index in enumerate(rng.permutation(len(group))):
            group[index].split = "test" if rank < n_test else "val"
    return records


def listed_patch_samples(
    records: list[SlideRecord],
    coordinates: pd.DataFrame,
    tile_size_px: int,
    mpp: float,
    slide_mpp: float | None = None,
) -> pd.DataFrame:
    """The training rows of the listed patches on the training slides, in list order, checked against each slide.

    Args:
        records: the cohort (slides of split ``train`` take their listed patches).
        coordinates: a table from :func:`read_coordinates`.
        tile_size_px: patch side in level-0 pixels.
        mpp: the data module's resolution; it must match each slide's level-0 mpp (within the reader's tolerance).
        slide_mpp: level-0 mpp of slides that record none (a record's own ``mpp`` wins).

    Raises:
        WSIError: a slide's level-0 resolution is not ``mpp``, or a listed patch reaches outside its slide.
    """
    train = {record.slide_id.lower(): record for record in records if record.split == "train"}
    keys = coordinates["slide_id"].str.lower()
    rows = coordinates[keys.isin(train)].reset_index(drop=True)
    if rows.empty:
        return pd.DataFrame()
    owners = [train[key] for key in rows["slide_id"].str.lower()]
    level0_mpp: dict[str, float | None] = {}
    for key in dict.fromkeys(rows["slide_id"].str.lower()):
        record = train[key]
        level0_mpp[key] = record.mpp if record.mpp is not None else slide_mpp
        on_slide = rows[rows["slide_id"].str.lower() == key]
        _check_listed_slide(record.slide_path, on_slide, tile_size_px, mpp, level0_mpp[key])
    samples = patch_samples(rows, {s: train[s.lower()].slide_path for s in rows["slide_id"]}, tile_size_px)
    samples["slide_id"] = [record.slide_id for record in owners]
    samples["annotation_path"] = ""
    samples["slide_mpp"] = [level0_mpp[record.slide_id.lower()] for record in owners]
    samples["slide_mpp"] = samples["slide_mpp"].astype(float)
    return samples


def _check_listed_slide(
    slide_path: Path, rows: pd.DataFrame, tile_size_px: int, mpp: float, level0_mpp: float | None
) -> None:
    from anomalib_wsi.slide.reader import Slide

    slide = Slide(slide_path, mpp=level0_mpp)
    try:
        if slide.has_mpp and abs(slide.mpp / mpp - 1) > slide.mpp_tolerance:
            msg = (
                f"{slide_path}: listed patches are read at level 0 ({slide.mpp:g} µm/px) but data.mpp is {mpp:g}; "
                f"set data.mpp to {slide.mpp:g} (prediction reads tiles at data.mpp)"
            )
            raise WSIError(msg)
        width, height = slide.dimensions
    finally:
        slide.close()
    x0, y0 = rows["x_center"] - tile_size_px // 2, rows["y_center"] - tile_size_px // 2
    outside = (x0 < 0) | (y0 < 0) | (x0 + tile_size_px > width) | (y0 + tile_size_px > height)
    if bool(outside.any()):
        first = rows[outside].iloc[0]
        msg = (
            f"{slide_path}: {int(outside.sum())} listed patches reach outside the {width}x{height} slide (first: "
            f"centre {int(first.x_center)},{int(first.y_center)} in {first.source}); the coordinate list does not "
            "belong to this slide"
        )
        raise WSIError(msg)
