"""``anomalib-wsi tile``: tissue detection and tiling; ``DIR/<slide_id>/tiles.csv`` and ``tissue.png`` per slide."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from jsonargparse import ArgumentParser

from anomalib_wsi.cohort import ANNOTATION_EXTENSIONS, find_annotation
from anomalib_wsi.errors import WSIError
from anomalib_wsi.files import atomic_path, atomic_write_csv
from anomalib_wsi.slide.ids import printable, slide_id_from_path, slide_output_dir
from anomalib_wsi.slide.reader import SLIDE_EXTENSIONS, Slide, find_slides
from anomalib_wsi.slide.tiling import TILE_COLUMNS, TILES_CSV, TilingConfig, load_or_tile, read_tiling_record
from anomalib_wsi.slide.tissue import detect_tissue, save_tissue_png

__all__ = ["parser", "run", "tile_command"]

logger = logging.getLogger(__name__)


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Detect tissue and tile slides; writes DIR/<slide_id>/tiles.csv and tissue.png.")
    p.add_argument("slides", nargs="+", help="slide files or folders of slides")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=0.5, help="target resolution of the tiles in µm per pixel")
    p.add_argument("--tile-size", type=int, default=256, help="tile side in pixels at the target resolution")
    p.add_argument("--stride", type=int, default=None, help="step between tiles at the target mpp (default: tile size)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile")
    p.add_argument("--slide-mpp", type=float, default=None, help="level-0 mpp for slides that record none")
    p.add_argument("--annotations", default=None, help="folder of ASAP .xml / QuPath .geojson, matched by slide stem")
    p.add_argument("--tumour-threshold", type=float, default=0.5, help="tumour fraction from which a tile is tumour")
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    return tile_command(**options)


def _check_options(
    mpp: float, tile_size: int, stride: int | None, min_tissue: float, slide_mpp: float | None, tumour_threshold: float
) -> None:
    """Raise a one-line WSIError naming the first bad option of ``anomalib-wsi tile``."""
    checks = [
        (mpp is not None and math.isfinite(mpp) and mpp > 0, f"--mpp must be a positive µm per pixel, got {mpp}"),
        (tile_size is not None and tile_size >= 1, f"--tile-size must be a positive number of pixels, got {tile_size}"),
        (stride is None or stride >= 1, f"--stride must be a positive number of pixels, got {stride}"),
        (min_tissue is not None and 0 <= min_tissue <= 1, f"--min-tissue must be in [0, 1], got {min_tissue}"),
        (
            slide_mpp is None or (math.isfinite(slide_mpp) and slide_mpp > 0),
            f"--slide-mpp must be a positive µm per pixel, got {slide_mpp}",
        ),
        (
            tumour_threshold is not None and 0 < tumour_threshold <= 1,
            f"--tumour-threshold must be in (0, 1], got {tumour_threshold}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise WSIError(msg)


def _csv_header(path: Path) -> list[str]:
    """Column names of a CSV file (its first line)."""
    with path.open() as handle:
        return handle.readline().strip().split(",")


def _tile_one(
    slide_path: Path,
    config: TilingConfig,
    out_dir: Path,
    slide_mpp: float | None,
    annotation_dir: Path | None,
    tumour_threshold: float,
    max_slide_pixels: int | None = None,
) -> dict[str, Any]:
    """Tile one slide into ``out_dir`` (tiles.csv, tiles.json, tissue.png); returns its summary row."""
    start = time.perf_counter()
    table, tissue = load_or_tile(slide_path, config, out_dir, slide_mpp=slide_mpp, max_slide_pixels=max_slide_pixels)
    record = read_tiling_record(out_dir)
    row: dict[str, Any] = {
        "slide_id": record["slide_id"],
        "slide_path": printable(slide_path),
        "tiles": len(table),
        "slide_mpp": record["level0_mpp"],
        "mpp": config.mpp,
        "level": record["level"],
        "read_size_px": record["read_size_px"],
        "tile_size_px": config.tile_size_px,
        "tile_size_lv0": record["tile_size_lv0"],
        "width_lv0": record["width_lv0"],
        "height_lv0": record["height_lv0"],
        "tissue_area_fraction": record["tissue_area_fraction"],
        "cached": tissue is None,
    }
    annotations = None
    if annotation_dir is not None:
        from anomalib_wsi.annotations import read_annotations
        from anomalib_wsi.annotations.tile_labels import label_tiles

        annotation_path = find_annotation(annotation_dir, record["slide_id"])
        with Slide(slide_path, mpp=slide_mpp, max_pixels=max_slide_pixels) as slide:
            if annotation_path is None:
                logger.info("%s: no annotation file in %s; tiles labelled normal (0)", slide.slide_id, annotation_dir)
            else:
                annotations = read_annotations(annotation_path, slide_size=slide.dimensions)
                if annotations.warnings:
                    logger.warning(
                        "%s: %d note(s) on %s, first: %s",
                        slide.slide_id,
                        len(annotations.warnings),
                        annotation_path.name,
                        annotations.warnings[0],
                    )
            table = label_tiles(table, annotations, slide, threshold=tumour_threshold)
        row["annotation_path"] = str(annotation_path) if annotation_path is not None else ""
        row["tumour_tiles"] = int((table["label"] == 1).sum())
        row["normal_tiles"] = int((table["label"] == 0).sum())
        row["ignored_tiles"] = int((table["label"] == -1).sum())
    csv_path = out_dir / TILES_CSV
    if annotation_dir is not None or (tissue is None and _csv_header(csv_path) != list(TILE_COLUMNS)):
        # Labels of this run, or a cached file still holding labels of an earlier run: write what this run made.
        with atomic_path(csv_path, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    png_path = out_dir / "tissue.png"
    if tissue is None and (annotations is not None or not png_path.is_file()):
        with Slide(slide_path, mpp=slide_mpp, max_pixels=max_slide_pixels) as slide:
            tissue = detect_tissue(slide, config.tissue)
    if tissue is not None:
        save_tissue_png(png_path, tissue, annotations=annotations, tiles=table)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def tile_command(
    slides: list[str],
    output: str,
    mpp: float = 0.5,
    tile_size: int = 256,
    stride: int | None = None,
    min_tissue: float = 0.5,
    slide_mpp: float | None = None,
    annotations: str | None = None,
    tumour_threshold: float = 0.5,
    max_slide_pixels: int | None = None,
) -> int:
    """``anomalib-wsi tile``: detect tissue and tile slides into ``output/<slide_id>/tiles.csv`` and ``tissue.png``.

    One bad slide does not stop the run: its error goes to ``output/failures.csv`` (``slide_path,slide_id,error``)
    and to the log, one line each, and the other slides go on. So do a slide whose id cannot name a folder
    (``...tif``, see :mod:`anomalib_wsi.slide.ids`), a file where its output folder would go, a folder given or
    found that holds no slide, and a folder entry named like a slide that is no file (broken link, link loop).
    Nothing is written outside ``output``. ``output/summary.csv`` has one row per slide tiled. With
    ``annotations``, annotation files that match no slide of the run are named in one warning.

    Args:
        slides: slide files or folders of slides.
        output: output folder.
        mpp: target resolution of the tiles in µm per pixel.
        tile_size: tile side in pixels at ``mpp``.
        stride: step between tiles at ``mpp`` (default: the tile size).
        min_tissue: smallest tissue fraction of a kept tile.
        slide_mpp: level-0 mpp for slides that record none (overrides the metadata of every slide).
        annotations: folder of ASAP ``.xml`` / QuPath ``.geojson`` files named like the slides; when given the
            tables gain ``tumour_fraction`` and ``label`` (1 tumour, 0 normal, -1 ignored).
        tumour_threshold: tumour fraction from which a tile is tumour.
        max_slide_pixels: largest level-0 area a slide may claim; larger ones fail (default
            :func:`~anomalib_wsi.slide.reader.max_slide_pixels`: 2e11 px or ``ANOMALIB_WSI_MAX_SLIDE_PIXELS``).

    Returns:
        0 when every slide was tiled, 1 when any failed.

    Raises:
        WSIError: a bad option, no slide found, or an output folder that cannot be written.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    _check_options(mpp, tile_size, stride, min_tissue, slide_mpp, tumour_threshold)
    if max_slide_pixels is not None and not max_slide_pixels >= 1:
        msg = f"--max-slide-pixels must be a positive number of pixels, got {max_slide_pixels}"
        raise WSIError(msg)
    config = TilingConfig(mpp=float(mpp), tile_size_px=int(tile_size), stride_px=stride, min_tissue=float(min_tissue))
    annotation_dir = Path(annotations) if annotations else None
    if annotation_dir is not None and not annotation_dir.is_dir():
        msg = f"--annotations {annotation_dir}: not a folder; give the folder holding <slide_id>.xml / .geojson files"
        raise WSIError(msg)
    search = find_slides(list(slides))
    paths = search.slides
    if not paths:
        given = {Path(item) for item in slides}
        entries = [message for path, message in search.problems if path not in given]
        if entries:  # an entry named like a slide that is no file (broken link, loop): say what it is
            raise WSIError(printable(f"no slide found: {entries[0]}"))
        msg = f"no slide found in {', '.join(map(str, slides))}; give slide files or folders of .svs/.tif/.ndpi/..."
        raise WSIError(printable(msg))
    out_root = Path(output)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"--output {out_root}: cannot create the folder ({err.strerror}); choose a writable path"
        raise WSIError(msg) from None

    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for path, message in search.problems:
        shown_id = printable(path.stem) if path.suffix.lower() in SLIDE_EXTENSIONS else ""
        failures.append({"slide_path": printable(path), "slide_id": shown_id, "error": printable(message)})
        logger.error("%s", printable(message))
    seen: dict[str, Path] = {}
    with logging_redirect_tqdm():
        for slide_path in tqdm(paths, desc="tiling", unit="slide", disable=None):
            shown_id = printable(slide_path.stem)
            try:
                slide_id = slide_id_from_path(slide_path)
                if slide_id in seen:
                    msg = f"{slide_path}: same slide id as {seen[slide_id]}; rename one (outputs go to DIR/<slide_id>)"
                    raise WSIError(msg)
                seen[slide_id] = slide_path
                out_dir = slide_output_dir(out_root, slide_id, source=slide_path)
                rows.append(
                    _tile_one(
                        slide_path, config, out_dir, slide_mpp, annotation_dir, tumour_threshold, max_slide_pixels
                    )
                )
            except WSIError as err:
                error = printable(str(err))
                failures.append({"slide_path": printable(slide_path), "slide_id": shown_id, "error": error})
                logger.error("%s failed: %s", shown_id, error)
            except Exception as err:  # one bad slide must not stop the run
                error = printable(f"{type(err).__name__}: {err}".replace("\n", " "))
                failures.append({"slide_path": printable(slide_path), "slide_id": shown_id, "error": error})
                logger.error("%s failed unexpectedly: %s (run with -v for the traceback)", shown_id, error)
                logger.debug("traceback of %s", shown_id, exc_info=True)
    if annotation_dir is not None:
        _warn_unmatched_annotations(annotation_dir, {path.stem for path in paths})

    summary = pd.DataFrame(rows, columns=None if rows else ["slide_id", "slide_path", "tiles"])
    atomic_write_csv(out_root / "summary.csv", summary, ("slide_id", "slide_path", "annotation_path"))
    failed = pd.DataFrame(failures, columns=["slide_path", "slide_id", "error"])
    atomic_write_csv(out_root / "failures.csv", failed, ("slide_path", "slide_id", "error"))
    total = sum(int(r["tiles"]) for r in rows)
    logger.info("tiled %d of %d slides (%d tiles) into %s", len(rows), len(paths), total, out_root)
    if failures:
        logger.error("%d slide(s) failed; see %s", len(failures), out_root / "failures.csv")
        return 1
    return 0


def _warn_unmatched_annotations(annotation_dir: Path, slide_ids: set[str]) -> None:
    """One warning naming the annotation files of ``annotation_dir`` that :func:`find_annotation` gives no slide."""
    used = {find_annotation(annotation_dir, slide_id) for slide_id in slide_ids}
    unmatched = sorted(
        p.name
        for p in annotation_dir.iterdir()
        if p.suffix.lower() in ANNOTATION_EXTENSIONS and p.is_file() and p not in used
    )
    if not unmatched:
        return
    more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
    logger.warning(
        "%d annotation file(s) in %s match no slide of this run and were not used: %s%s; an annotation labels the "
        "slide whose id (file name without the extension) is its own file name without the extension",
        len(unmatched),
        annotation_dir,
        printable(", ".join(unmatched[:5])),
        more,
    )
