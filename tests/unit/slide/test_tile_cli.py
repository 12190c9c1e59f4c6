"""``anomalib-wsi tile``: outputs per slide, a failure record instead of a traceback, labels from annotations."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from shapely.geometry import box

from anomalib_wsi.cli import main

CMU = "slides/real/CMU-1-Small-Region.svs"
TCGA = "slides/real/TCGA-CR-7395-01A-01-TS1.svs"

#: What each broken file gives (data README: documented behaviour).
BROKEN = {
    "unopenable.tiff": "openslide cannot open this file (Unsupported TIFF compression: 52479)",
    "broken.svs": "openslide cannot open this file (Unsupported or missing image file)",
    "unreadable.svs": "cannot read pixels at (0, 0) level 0 (Bogus marker length)",
    "small.svs": "slide is 16x16 px, smaller than one 256 px tile",
    "boxes.tiff": "implausible resolution (352.8 µm/px",  # 72 dpi default: no real mpp
}


def test_broken_slides_are_recorded_and_good_ones_tiled(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Every broken file fails on its own line in failures.csv; CMU in the same run is tiled; exit status 1."""
    broken = shared_data / "slides" / "broken"
    slides = [str(broken / name) for name in sorted(BROKEN)] + [str(shared_data / CMU)]
    with caplog.at_level(logging.ERROR):
        status = main(["tile", *slides, "--output", str(tmp_path)])
    assert status == 1
    failures = pd.read_csv(tmp_path / "failures.csv")
    assert list(failures.columns) == ["slide_path", "slide_id", "error"]
    assert sorted(failures.slide_id) == sorted(Path(name).stem for name in BROKEN)
    for name, expected in BROKEN.items():
        (error,) = failures.loc[failures.slide_id == Path(name).stem, "error"]
        assert expected in error and name in error and "\n" not in error
    failed_lines = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert len(failed_lines) == 5  # one log line per failed slide
    assert "Traceback" not in capsys.readouterr().err
    tiles = pd.read_csv(tmp_path / "CMU-1-Small-Region" / "tiles.csv")
    assert 28 <= len(tiles) <= 36
    assert list(tiles.columns) == [
        "slide_id",
        "x",
        "y",
        "level",
        "read_size_px",
        "tile_size_px",
        "tissue_fraction",
        "tile_size_lv0",
    ]
    assert (tmp_path / "CMU-1-Small-Region" / "tissue.png").stat().st_size > 10_000
    summary = pd.read_csv(tmp_path / "summary.csv")
    (row,) = summary.itertuples()
    assert (row.slide_id, row.tiles, row.level, row.read_size_px, row.slide_mpp) == (
        "CMU-1-Small-Region",
        len(tiles),
        0,
        256,
        0.499,
    )
    for name in BROKEN:  # failed slides leave no half-written output
        assert not (tmp_path / Path(name).stem / "tiles.csv").exists()


def test_tcga_needs_slide_mpp(shared_data: Path, tmp_path: Path) -> None:
    """Without --slide-mpp the JPEG 2000 slide fails naming the option; with 0.25 it tiles from level 1."""
    slide = str(shared_data / TCGA)
    assert main(["tile", slide, "--output", str(tmp_path / "a")]) == 1
    (error,) = pd.read_csv(tmp_path / "a" / "failures.csv").error
    assert "records no resolution" in error and "--slide-mpp" in error
    assert main(["tile", slide, "--output", str(tmp_path / "b"), "--slide-mpp", "0.25"]) == 0
    tiles = pd.read_csv(tmp_path / "b" / "TCGA-CR-7395-01A-01-TS1" / "tiles.csv")
    assert 30 <= len(tiles) <= 40  # 35: the 4443 x 3567 section is mostly tissue, 7 x 6 tiles of 512 level-0 px
    assert (tiles.level == 1).all() and (tiles.read_size_px == 256).all()
    assert pd.read_csv(tmp_path / "b" / "failures.csv").empty


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option or an empty folder exits with status 2 and one line naming the option."""
    assert main(["tile", str(tmp_path), "--output", str(tmp_path / "o"), "--tile-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "anomalib-wsi tile: error: --tile-size must be a positive number of pixels, got 0"
    ]
    assert main(["tile", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "no slide found in" in capsys.readouterr().err
    assert main(["tile", str(tmp_path), "--output", str(tmp_path / "o"), "--annotations", str(tmp_path / "x")]) == 2
    assert "--annotations" in capsys.readouterr().err


def test_second_run_reuses_the_cache(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """Running tile twice with the same options keeps tiles.csv as it was; another tile size recomputes it."""
    slide = str(make_slide())
    out = tmp_path / "out"
    assert main(["tile", slide, "--output", str(out)]) == 0
    csv = out / "slide" / "tiles.csv"
    stamp = csv.stat().st_mtime_ns
    assert main(["tile", slide, "--output", str(out)]) == 0
    assert csv.stat().st_mtime_ns == stamp
    assert bool(pd.read_csv(out / "summary.csv").cached.iloc[0]) is True
    assert main(["tile", slide, "--output", str(out), "--tile-size", "128"]) == 0
    assert len(pd.read_csv(csv)) == 4 * 48
    assert bool(pd.read_csv(out / "summary.csv").cached.iloc[0]) is False


def test_unexpected_errors_do_not_stop_the_run(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """A non-WSI error (here: the slide's output folder is a file) is recorded with its type; others go on."""
    first = make_slide(name="first.tif")
    second = make_slide(name="second.tif")
    out = tmp_path / "out"
    out.mkdir()
    (out / "first").write_text("in the way")
    assert main(["tile", str(first), str(second), "--output", str(out)]) == 1
    (error,) = pd.read_csv(out / "failures.csv").error
    assert error.startswith(("FileExistsError", "NotADirectoryError"))
    assert len(pd.read_csv(out / "second" / "tiles.csv")) == 48


def test_duplicate_slide_ids_are_refused(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """Two slides with the same stem would share DIR/<slide_id>: the second is recorded as a failure."""
    first = make_slide(name="same.tif")
    other = tmp_path / "other"
    other.mkdir()
    second = other / "same.tiff"
    second.write_bytes(first.read_bytes())
    assert main(["tile", str(first), str(second), "--output", str(tmp_path / "out")]) == 1
    (error,) = pd.read_csv(tmp_path / "out" / "failures.csv").error
    assert "same slide id" in error


def test_annotations_label_the_tiles(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """An ASAP XML beside the slide labels tiles: 2 x 2 tiles fully tumour, half-covered ones by the threshold."""
    pytest.importorskip("anomalib_wsi.annotations.labels")
    from anomalib_wsi.annotations.asap import write_asap_xml

    slide = str(make_slide())
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    # tumour over tiles x 1024-1536 fully and x 1536-1792 half (to x=1664), rows y 512-1024
    write_asap_xml(annotations / "slide.xml", [("_0", box(1024, 512, 1664, 1024))])
    out = tmp_path / "out"
    assert main(["tile", slide, "--output", str(out), "--annotations", str(annotations)]) == 0
    tiles = pd.read_csv(out / "slide" / "tiles.csv")
    assert len(tiles) == 48
    tumour = tiles[tiles.label == 1]
    assert sorted(zip(tumour.x, tumour.y, strict=True)) == [
        (1024, 512),
        (1024, 768),
        (1280, 512),
        (1280, 768),
        (1536, 512),
        (1536, 768),
    ]
    assert tiles.loc[tiles.x == 1536, "tumour_fraction"].head(2).round(3).tolist() == [0.5, 0.5]
    assert (tiles.label == 0).sum() == 42
    summary = pd.read_csv(out / "summary.csv")
    assert (summary.tumour_tiles.iloc[0], summary.normal_tiles.iloc[0], summary.ignored_tiles.iloc[0]) == (6, 42, 0)
    # a stricter threshold leaves the half-covered tiles ignored (-1); the tile cache is reused, labels are not
    assert (
        main(["tile", slide, "--output", str(out), "--annotations", str(annotations), "--tumour-threshold", "0.6"]) == 0
    )
    tiles = pd.read_csv(out / "slide" / "tiles.csv")
    assert (tiles.label == 1).sum() == 4 and (tiles.label == -1).sum() == 2
    # without annotations the labels go away again
    assert main(["tile", slide, "--output", str(out)]) == 0
    assert "label" not in pd.read_csv(out / "slide" / "tiles.csv").columns
