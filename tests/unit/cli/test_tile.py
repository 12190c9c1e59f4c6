"""``anomalib-wsi tile``: outputs per slide, a failure record instead of a traceback, labels from annotations."""

from __future__ import annotations

import logging
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from shapely.geometry import box

from anomalib_wsi.cli import main
from anomalib_wsi.slide import tiling
from anomalib_wsi.slide.ids import printable

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


def test_a_file_in_place_of_the_output_folder_fails_that_slide_only(
    make_slide: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``<output>/<slide_id>`` existing as a file: that slide's one-line failure naming it, the file untouched,
    the other slide tiled (48 tiles), exit status 1."""
    first = make_slide(name="first.tif")
    second = make_slide(name="second.tif")
    out = tmp_path / "out"
    out.mkdir()
    (out / "first").write_text("in the way")
    assert main(["tile", str(first), str(second), "--output", str(out)]) == 1
    (error,) = pd.read_csv(out / "failures.csv").error
    assert error == (
        f"{out / 'first'}: a file is in the place of the slide's output folder; move it away or choose another "
        "output folder"
    )
    assert (out / "first").read_text() == "in the way"
    assert len(pd.read_csv(out / "second" / "tiles.csv")) == 48
    assert "Traceback" not in capsys.readouterr().err


def test_unexpected_errors_do_not_stop_the_run(
    make_slide: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (not a user error) in one slide is recorded with its type, in one line; the other slide goes on."""
    first = make_slide(name="first.tif")
    second = make_slide(name="second.tif")
    real = tiling.tiles_from_mask

    def fails_on_first(*args: object, **kwargs: object) -> pd.DataFrame:
        if kwargs.get("slide_id") == "first":
            raise ZeroDivisionError("a bug\non two lines")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tiling, "tiles_from_mask", fails_on_first)
    assert main(["tile", str(first), str(second), "--output", str(tmp_path / "out")]) == 1
    (error,) = pd.read_csv(tmp_path / "out" / "failures.csv").error
    assert error == "ZeroDivisionError: a bug on two lines"
    assert len(pd.read_csv(tmp_path / "out" / "second" / "tiles.csv")) == 48


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` except under ``skip``: relative path -> (size, mtime_ns, content)."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
        for path in root.rglob("*")
        if path.is_file() and skip not in path.parents
    }


#: Slide file names whose stems cannot name a folder, and the reason each is refused.
UNSAFE_NAMES = {
    "...tif": "it is '..': the outputs would go to the parent of the output folder",
    "..tif": "it is '.': the outputs would go to the output folder itself",
    "line\nbreak.tif": "it holds a control character or line break",
    "tab\there.tif": "it holds a control character or line break",
    "esc\x1bape.tif": "it holds a control character or line break",
    "back\\slash.tif": "it holds a path separator",
    " .tif": "it is only spaces",
}


def test_no_slide_name_writes_outside_the_output_folder(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """Slides named ``...tif`` (stem ``..``), ``..tif`` (stem ``.``), with control characters, a backslash or a
    name that is not UTF-8 each fail in one line naming the file; no file outside --output changes (the parent
    holds files with the names ``tile`` writes) and nothing but the good slide's folder appears inside."""
    good = make_slide(name="good.tif")
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in UNSAFE_NAMES:
        (slides / name).write_bytes(good.read_bytes())  # real slides: tiled if their id were not refused
    not_utf8 = os.fsdecode(os.path.join(os.fsencode(slides), b"latin\xe9.tif"))
    Path(not_utf8).write_bytes(good.read_bytes())
    parent = tmp_path / "parent"
    out = parent / "out"
    out.mkdir(parents=True)
    for name in ("summary.csv", "failures.csv", "tiles.csv", "tiles.json", "tissue.png"):
        (parent / name).write_text(f"the user's own {name}")
    before = _tree(tmp_path, skip=out)
    for inputs in ([str(slides), str(good)], [*map(str, sorted(slides.iterdir())), str(good)]):  # folder, files
        assert main(["tile", *inputs, "--output", str(out)]) == 1
        assert _tree(tmp_path, skip=out) == before
        assert sorted(p.name for p in out.iterdir()) == ["failures.csv", "good", "summary.csv"]
        failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
        assert len(failures) == len(UNSAFE_NAMES) + 1
        for name, reason in UNSAFE_NAMES.items():
            (error,) = failures.loc[failures.slide_path == printable(slides / name), "error"]
            assert error == (
                f"{printable(slides / name)}: slide id {printable(Path(name).stem)!r} cannot name a folder ({reason}); "
                "rename the slide file (its id is the file name without the extension)"
            )
        (error,) = failures.loc[failures.slide_id == "latin\\udce9", "error"]
        assert "latin\\udce9" in error and "the file name is not valid UTF-8" in error
        assert not any("\n" in e or "\t" in e for e in failures.error)
        assert pd.read_csv(out / "summary.csv").slide_id.tolist() == ["good"]


def test_a_folder_without_slides_is_a_one_line_failure(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """An empty folder and a folder named like a slide, given with a good slide: one failure line each (not a
    silent skip), the good slide tiled; alone, an empty folder is the one-line error of exit status 2."""
    good = make_slide(name="good.tif")
    empty = tmp_path / "empty"
    empty.mkdir()
    named = tmp_path / "named.svs"
    named.mkdir()
    out = tmp_path / "out"
    assert main(["tile", str(empty), str(named), str(good), "--output", str(out)]) == 1
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    assert failures.to_dict("records") == [
        {
            "slide_path": str(empty),
            "slide_id": "",
            "error": f"{empty}: a folder, not a slide file, and it holds no slide file (.svs, .tif, .tiff, .ndpi, "
            ".mrxs, ...); give slide files or folders of slides",
        },
        {
            "slide_path": str(named),
            "slide_id": "named",
            "error": f"{named}: a folder, not a slide file (it is named like one), and it holds no slide file "
            "(.svs, .tif, .tiff, .ndpi, .mrxs, ...); give slide files or folders of slides",
        },
    ]
    assert len(pd.read_csv(out / "good" / "tiles.csv")) == 48
    assert main(["tile", str(empty), "--output", str(out)]) == 2


def test_symlink_loops_and_broken_links_say_so(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """A link loop and a broken link, given as files or found in a folder, fail as such (not "no such file")."""
    good = make_slide(name="good.tif")
    links = tmp_path / "links"
    links.mkdir()
    (links / "loop.svs").symlink_to("loop.svs")
    (links / "broken.tif").symlink_to(tmp_path / "gone.tif")
    for inputs in ([str(links)], [str(links / "loop.svs"), str(links / "broken.tif")]):
        out = tmp_path / f"out{len(inputs)}"
        assert main(["tile", *inputs, str(good), "--output", str(out)]) == 1
        failures = pd.read_csv(out / "failures.csv").set_index("slide_id").error
        loop, broken = links / "loop.svs", links / "broken.tif"
        assert failures["loop"].endswith(
            f"{loop}: a symbolic link loop (the link leads back to itself); fix or remove the link"
        )
        assert failures["broken"].endswith(
            f"{broken}: a broken symbolic link to {tmp_path / 'gone.tif'}; fix the link or give the slide file itself"
        )
        assert len(pd.read_csv(out / "good" / "tiles.csv")) == 48


def test_a_slide_claiming_a_huge_size_is_refused_in_one_line(
    make_claimed_slide: Callable[..., Path], make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    """A 0.75 MB TIFF claiming 10^6 x 10^6 px (1e12 px; the limit is 2e11) fails in one line naming the bound and
    the variable that raises it, without a tiles.csv and within 5 MiB of traced memory; the good slide is tiled."""
    bomb = make_claimed_slide("bomb.tif", (1_000_000, 1_000_000), tile_px=4096, downsamples=())
    assert bomb.stat().st_size < 800_000
    good = make_slide(name="good.tif")
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        assert main(["tile", str(bomb), "--output", str(tmp_path / "alone")]) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20
    assert main(["tile", str(bomb), str(good), "--output", str(out)]) == 1
    (error,) = pd.read_csv(out / "failures.csv").error
    assert error == (
        f"{bomb}: the file claims a slide of 1,000,000 x 1,000,000 px (1e+12 px), more than any scanner writes "
        "(limit 2e+11 px; a whole 75 x 25 mm slide at 0.12 µm/px is 1.3e11): damaged or crafted? If the size is "
        "real, set ANOMALIB_WSI_MAX_SLIDE_PIXELS=1e+12"
    )
    assert not (out / "bomb").exists()
    assert len(pd.read_csv(out / "good" / "tiles.csv")) == 48


def test_unmatched_annotation_files_are_a_warning(
    make_slide: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Annotation files that match no slide of the run are named in one WARNING; one that differs from its slide
    only in case labels it (the cohort's matching rule: exact name first, then ignoring case)."""
    from anomalib_wsi.annotations.asap import write_asap_xml

    slide = make_slide(name="slide.tif")
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    write_asap_xml(annotations / "Slide.xml", [("_0", box(1024, 512, 1664, 1024))])
    write_asap_xml(annotations / "other.xml", [("_0", box(1024, 512, 1664, 1024))])
    write_asap_xml(annotations / "third.geojson.xml", [("_0", box(1024, 512, 1664, 1024))])
    (annotations / "notes.txt").write_text("not an annotation")
    with caplog.at_level(logging.INFO):
        assert main(["tile", str(slide), "--output", str(tmp_path / "out"), "--annotations", str(annotations)]) == 0
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        f"2 annotation file(s) in {annotations} match no slide of this run and were not used: "
        "other.xml, third.geojson.xml;"
    )
    assert (pd.read_csv(tmp_path / "out" / "slide" / "tiles.csv").label == 1).sum() > 0  # Slide.xml labels it


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
    pytest.importorskip("anomalib_wsi.annotations.tile_labels")
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 5000 + "]" * 5000, "JSON nested too deep to be annotations (thousands of levels)"),
        ('[{"type": "Feature", "properties": [], "geometry": null}]', "feature 0 has 'properties' of type list"),
        (
            '[{"type": "Feature", "properties": {"classification": {"name": "Tumor"}}, "geometry": {"type": '
            '"Polygon", "coordinates": [[[0, 0], [1e15, 0], [1e15, 1e15], [0, 1e15], [0, 0]]]}}]',
            "annotation '' (group 'Tumor') spans x 0 to 1e+15, y 0 to 1e+15, far outside the 4096 x 3072 px slide",
        ),
    ],
)
def test_bad_annotation_files_fail_their_slide_in_one_line_naming_the_file(
    make_slide: Callable[..., Path], tmp_path: Path, content: str, message: str
) -> None:
    """A GeoJSON nested thousands deep, with non-object properties, or with vertices at 1e15 px: the slide's
    one-line failure names the annotation file (not "failed unexpectedly"); no tile is labelled tumour."""
    slide = make_slide(name="slide.tif")
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "slide.geojson").write_text(content)
    out = tmp_path / "out"
    assert main(["tile", str(slide), "--output", str(out), "--annotations", str(annotations)]) == 1
    (error,) = pd.read_csv(out / "failures.csv").error
    assert error.startswith(f"{annotations / 'slide.geojson'}: {message}")
    assert "\n" not in error and "unexpectedly" not in error
    assert pd.read_csv(out / "summary.csv").empty
