"""QuPath tile objects: one square per scored heatmap cell (or tile), its scores as measurements.

QuPath colours objects by a measurement with Measure > Show measurement maps, but only detection objects (its
``MeasurementMapper`` skips annotations); a tile object is a detection. :func:`write_tile_objects` writes one tile
object per scored cell of a slide heatmap, :func:`write_tile_score_objects` one per scored tile, as a GeoJSON
FeatureCollection that File > Import objects (or drag and drop) reads as it is.

What each feature holds, and the rule of QuPath's GeoJSON reader (qupath-core ``PathObjectTypeAdapters`` /
``QuPathTypeAdapters``, ``GsonTools.PathClassTypeAdapter``, ``MeasurementList``; v0.4 to v0.6) it follows:

- ``"id"``: a UUID string (uuid5 of the slide id and the square, so a rerun writes the same ids). QuPath keeps it
  as the object's id when ``UUID.fromString`` accepts it, and ignores it otherwise.
- ``"geometry"``: a ``Polygon``, the square in level-0 pixels (origin top-left), clipped to the slide.
- ``"properties"."objectType": "tile"``: read only from ``properties`` (at the feature root it is ignored and the
  object becomes an annotation); ``"tile"`` makes a ``PathTileObject``.
- ``"properties"."measurements"``: an object ``{name: number}``, read as ``Map<String, Double>``:
  ``anomaly_score`` (the normalised score, 0.5 = the threshold learnt on validation) and ``raw_score`` (the
  model's score). **A non-finite value is left out**, not written as ``NaN`` or ``"NaN"``: QuPath's own writer
  emits a bare ``NaN``, which its reader then fails on (Gson reads ``NaN`` and ``"NaN"`` alike as a string, and
  ``MeasurementList.putAll`` casts it to a number: ``ClassCastException``, QuPath issue #1293, the whole import
  lost). A missing measurement reads as NaN in QuPath, so leaving it out means the same and imports everywhere;
  the file is strict JSON.
- ``"properties"."classification"``: only on tiles at or above ``threshold`` when one is given, and then with both
  ``name`` and ``color`` (QuPath's class reader rejects an object with a name and no colour, failing the import).

Files ending in ``.gz`` are gzip-compressed (QuPath 0.5 and later read ``.geojson.gz``; QuPath 0.4 reads only
plain ``.geojson``). One feature per line, written in chunks straight to the file (no dictionary per feature).

Measured by ``benchmarks/bench_overlay.py`` (a 100k x 200k px slide, 512 px level-0 tiles; a 2-core CPU that
other work shared, best of 5): 40,000 tiles give an 11.6 MB ``tiles.geojson`` (2.1 MB as ``.geojson.gz``) written
in 0.9 s (1.3 s with gzip), which ``json.load`` parses in 1.4-1.5 s; 30,000 tiles 8.7 MB (1.5 MB), 0.8 s (1.0 s),
parsed in 1.0 s. Building the features as dictionaries for one ``json.dumps`` takes twice as long (1.7-1.8 s).

Example:
    >>> import numpy as np
    >>> from anomalib_wsi.post_processing.stitch import Heatmap
    >>> heatmap = Heatmap(np.array([[0.2, np.nan], [0.9, 0.4]], np.float32), 512.0, "s1", (1000, 1024))
    >>> path = write_tile_objects("tiles.geojson.gz", heatmap, threshold=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from anomalib_wsi.files import atomic_path
from anomalib_wsi.post_processing.stitch import Heatmap

__all__ = ["TILE_MEASUREMENTS", "write_tile_objects", "write_tile_score_objects"]

#: Measurement names written on every tile object: the normalised and the raw score.
TILE_MEASUREMENTS = ("anomaly_score", "raw_score")

#: QuPath's colour for the ``Tumor`` class (as in ``lesions.geojson``).
_TUMOUR_COLOR = (200, 0, 0)
_CHUNK = 8192
_NAMESPACE = uuid.NAMESPACE_URL


def write_tile_objects(
    path: str | Path,
    heatmap: Heatmap,
    raw_heatmap: Heatmap | None = None,
    *,
    cells_per_object: int = 1,
    threshold: float | None = None,
    class_name: str = "Tumor",
    color: tuple[int, int, int] = _TUMOUR_COLOR,
) -> Path:
    """Write one QuPath tile object per scored heatmap cell (or block of cells), scores as measurements.

    With ``heatmap_cells_per_tile=1`` (the default) a heatmap cell is one tile stride, so the objects are the
    tiles (without overlap when the stride is below the tile size). A finer heatmap gives finer objects; pass
    ``cells_per_object`` (e.g. the post-processor's ``heatmap_cells_per_tile``) to write one object per block of
    that many cells per side, with the mean of the block's scored cells. Cells without a score (NaN) get no object.

    Args:
        path: output file, ``.geojson`` or ``.geojson.gz`` (gzip); written atomically.
        heatmap: the normalised slide heatmap: ``anomaly_score``.
        raw_heatmap: the heatmap of raw scores with the same geometry: ``raw_score`` (left out when None).
        cells_per_object: heatmap cells per object side.
        threshold: objects whose ``anomaly_score`` is at least this get the class ``class_name`` (e.g. the
            post-processor's ``lesion_threshold``); None: no classification on any object.
        class_name: QuPath class of the objects at or above ``threshold``.
        color: that class's colour, RGB 0-255.

    Returns:
        The path written.

    Raises:
        ValueError: ``raw_heatmap`` has another shape or downsample, ``cells_per_object < 1``, or a bad
            ``threshold`` / ``color`` / file name.
    """
    if isinstance(cells_per_object, bool) or not isinstance(cells_per_object, int | np.integer) or cells_per_object < 1:
        msg = f"write_tile_objects: cells_per_object must be a whole number >= 1, got {cells_per_object!r}"
        raise ValueError(msg)
    raw_values: np.ndarray | None = None
    if raw_heatmap is not None:
        if raw_heatmap.shape != heatmap.shape or not math.isclose(raw_heatmap.downsample, heatmap.downsample):
            msg = (
                f"write_tile_objects: raw heatmap {raw_heatmap.shape} at downsample {raw_heatmap.downsample:g} does "
                f"not match the heatmap {heatmap.shape} at downsample {heatmap.downsample:g}; pass the raw heatmap "
                "the normalised one was made from"
            )
            raise ValueError(msg)
        raw_values = _blocks(np.asarray(raw_heatmap.values, dtype=np.float32), int(cells_per_object))
    values = _blocks(np.asarray(heatmap.values, dtype=np.float32), int(cells_per_object))
    rows, cols = np.nonzero(np.isfinite(values))
    side = float(heatmap.downsample) * int(cells_per_object)
    width, height = heatmap.slide_size_lv0
    x0 = cols * side
    y0 = rows * side
    return _write_squares(
        path,
        x0,
        y0,
        np.minimum(x0 + side, width),
        np.minimum(y0 + side, height),
        values[rows, cols],
        None if raw_values is None else raw_values[rows, cols],
        heatmap.slide_id,
        threshold,
        class_name,
        color,
    )


def write_tile_score_objects(
    path: str | Path,
    xs_lv0: np.ndarray | Sequence[float],
    ys_lv0: np.ndarray | Sequence[float],
    tile_size_lv0: float,
    scores: np.ndarray | Sequence[float],
    raw_scores: np.ndarray | Sequence[float] | None = None,
    *,
    slide_id: str = "",
    slide_size_lv0: tuple[int, int] | None = None,
    threshold: float | None = None,
    class_name: str = "Tumor",
    color: tuple[int, int, int] = _TUMOUR_COLOR,
) -> Path:
    """Write one QuPath tile object per scored tile (the tile's own square; overlapping tiles overlap).

    Tiles whose ``scores`` value is not finite get no object.

    Args:
        path: output file, ``.geojson`` or ``.geojson.gz`` (gzip); written atomically.
        xs_lv0: level-0 x of each tile's top-left corner, shape (N,).
        ys_lv0: level-0 y of each tile's top-left corner, shape (N,).
        tile_size_lv0: tile side in level-0 pixels.
        scores: normalised tile scores, shape (N,): ``anomaly_score``.
        raw_scores: raw tile scores, shape (N,): ``raw_score`` (left out when None).
        slide_id: the slide's identifier (part of each object's UUID).
        slide_size_lv0: slide ``(width, height)``; squares are clipped to it when given.
        threshold: tiles whose score is at least this get the class ``class_name``; None: no classification.
        class_name: QuPath class of the tiles at or above ``threshold``.
        color: that class's colour, RGB 0-255.

    Returns:
        The path written.

    Raises:
        ValueError: the arrays do not have one value per tile, the tile size is not positive, or a bad
            ``threshold`` / ``color`` / file name.
    """
    xs = np.asarray(xs_lv0, dtype=np.float64).reshape(-1)
    ys = np.asarray(ys_lv0, dtype=np.float64).reshape(-1)
    score_arr = np.asarray(scores, dtype=np.float32).reshape(-1)
    raw_arr = None if raw_scores is None else np.asarray(raw_scores, dtype=np.float32).reshape(-1)
    sizes = {xs.size, ys.size, score_arr.size} | ({raw_arr.size} if raw_arr is not None else set())
    if len(sizes) != 1:
        msg = (
            f"write_tile_score_objects: xs ({xs.size}), ys ({ys.size}), scores ({score_arr.size})"
            + ("" if raw_arr is None else f" and raw_scores ({raw_arr.size})")
            + " must have one value per tile"
        )
        raise ValueError(msg)
    if not tile_size_lv0 > 0:
        msg = f"write_tile_score_objects: tile_size_lv0 must be a positive number of pixels, got {tile_size_lv0}"
        raise ValueError(msg)
    keep = np.isfinite(score_arr) & np.isfinite(xs) & np.isfinite(ys)
    xs, ys, score_arr = xs[keep], ys[keep], score_arr[keep]
    raw_arr = None if raw_arr is None else raw_arr[keep]
    x1, y1 = xs + float(tile_size_lv0), ys + float(tile_size_lv0)
    if slide_size_lv0 is not None:
        width, height = slide_size_lv0
        xs, ys = np.clip(xs, 0, width), np.clip(ys, 0, height)
        x1, y1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
        inside = (x1 > xs) & (y1 > ys)
        xs, ys, x1, y1, score_arr = xs[inside], ys[inside], x1[inside], y1[inside], score_arr[inside]
        raw_arr = None if raw_arr is None else raw_arr[inside]
    return _write_squares(path, xs, ys, x1, y1, score_arr, raw_arr, slide_id, threshold, class_name, color)


def _blocks(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of the finite cells of each k x k block (NaN where a block has none); the values when k is 1."""
    if k == 1:
        return values
    height, width = values.shape
    out_h, out_w = -(-height // k), -(-width // k)
    padded = np.full((out_h * k, out_w * k), np.nan, dtype=np.float32)
    padded[:height, :width] = values
    blocks = padded.reshape(out_h, k, out_w, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: NaN, as wanted
        means = np.nanmean(blocks, axis=(1, 3), dtype=np.float64)
    return np.asarray(means, dtype=np.float32)


def _coordinate_strings(values: np.ndarray) -> np.ndarray:
    """JSON numbers of level-0 coordinates: whole numbers without a decimal point, others to 1/1000 px."""
    rounded = np.round(np.asarray(values, dtype=np.float64), 3)
    if rounded.size and np.all(rounded == np.round(rounded)) and np.abs(rounded).max() < 2**53:
        return rounded.astype(np.int64).astype(str)
    return rounded.astype(str)


def _score_strings(values: np.ndarray) -> np.ndarray:
    """JSON numbers of float32 scores: the shortest text that reads back as the same float32 (NaN as 'nan')."""
    return np.asarray(values, dtype=np.float32).astype(str)


def _classification_json(class_name: str, color: tuple[int, int, int]) -> str:
    rgb = [int(c) for c in color]
    if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb) or any(c != v for c, v in zip(rgb, color, strict=True)):
        msg = f"tile objects: color must be three whole numbers 0-255 (r, g, b), got {color!r}"
        raise ValueError(msg)
    if not class_name:
        msg = "tile objects: class_name must not be empty (QuPath needs a class name with the colour)"
        raise ValueError(msg)
    return ',"classification":' + json.dumps({"name": str(class_name), "color": rgb}, separators=(",", ":"))


@contextlib.contextmanager
def _open_text(tmp: Path, final: Path) -> Iterator[IO[str]]:
    """A text handle on ``tmp``: gzip (reproducible: no time stamp, the final name) when ``final`` ends in .gz."""
    if not final.name.lower().endswith(".gz"):
        with tmp.open("w", encoding="utf-8", newline="\n") as text:
            yield text
        return
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename=final.name[:-3], mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed,
        io.TextIOWrapper(packed, encoding="utf-8", newline="\n") as text,
    ):
        yield text


def _write_squares(
    path: str | Path,
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    scores: np.ndarray,
    raw: np.ndarray | None,
    slide_id: str,
    threshold: float | None,
    class_name: str,
    color: tuple[int, int, int],
) -> Path:
    """Stream the FeatureCollection of axis-aligned squares ``[x0, x1) x [y0, y1)`` to ``path``."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith((".geojson", ".json", ".geojson.gz", ".json.gz"))):
        msg = f"tile objects: {path} must end in .geojson or .geojson.gz (QuPath chooses the reader by the name)"
        raise ValueError(msg)
    if threshold is not None and not math.isfinite(float(threshold)):
        msg = f"tile objects: threshold must be a finite number or None, got {threshold!r}"
        raise ValueError(msg)
    classification = _classification_json(class_name, color) if threshold is not None else ""
    n = int(scores.size)
    with atomic_path(path, suffix=".tmp") as tmp, _open_text(tmp, path) as out:
        out.write('{"type":"FeatureCollection","features":[\n')
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            out.write(
                _feature_lines(
                    x0[start:stop],
                    y0[start:stop],
                    x1[start:stop],
                    y1[start:stop],
                    scores[start:stop],
                    None if raw is None else raw[start:stop],
                    slide_id,
                    threshold,
                    classification,
                )
            )
            out.write(",\n" if stop < n else "\n")
        out.write("]}\n")
    return path


def _feature_lines(
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    scores: np.ndarray,
    raw: np.ndarray | None,
    slide_id: str,
    threshold: float | None,
    classification: str,
) -> str:
    """One chunk of features, one per line, joined by ``,\\n`` (no trailing separator)."""
    sx0, sy0, sx1, sy1 = (_coordinate_strings(v) for v in (x0, y0, x1, y1))
    s_score = _score_strings(scores)
    finite_score = np.isfinite(scores)
    s_raw = _score_strings(raw) if raw is not None else None
    finite_raw = np.isfinite(raw) if raw is not None else None
    classified = scores >= threshold if threshold is not None else np.zeros(scores.shape, dtype=bool)
    lines = []
    for i in range(scores.size):
        a, b, c, d = sx0[i], sy0[i], sx1[i], sy1[i]
        feature_id = uuid.uuid5(_NAMESPACE, f"anomalib-wsi:tile:{slide_id}:{a},{b},{c},{d}")
        measurements = []
        if finite_score[i]:
            measurements.append(f'"anomaly_score":{s_score[i]}')
        if s_raw is not None and finite_raw is not None and finite_raw[i]:
            measurements.append(f'"raw_score":{s_raw[i]}')
        lines.append(
            f'{{"type":"Feature","id":"{feature_id}","geometry":{{"type":"Polygon","coordinates":'
            f"[[[{a},{b}],[{c},{b}],[{c},{d}],[{a},{d}],[{a},{b}]]]}},"
            f'"properties":{{"objectType":"tile"{classification if classified[i] else ""},'
            f'"measurements":{{{",".join(measurements)}}}}}}}'
        )
    return ",\n".join(lines)
