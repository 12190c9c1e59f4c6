"""Slide reading: resolution by mpp, level choice, pixel reads, and the errors a user sees for bad files."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import pytest

from anomalib_wsi.errors import SlideOpenError, SlideReadError, SlideResolutionError, SlideTooSmallError, WSIError
from anomalib_wsi.slide import Slide, list_slides
from anomalib_wsi.slide.reader import (
    MAX_SLIDE_PIXELS,
    MAX_SLIDE_PIXELS_ENV,
    SlideTooLargeError,
    find_slides,
    max_slide_pixels,
)

CMU = "slides/real/CMU-1-Small-Region.svs"
TCGA = "slides/real/TCGA-CR-7395-01A-01-TS1.svs"


# -- synthetic slides -------------------------------------------------------------------------------------------------
def test_synthetic_tiff_levels_and_mpp(make_slide: Callable[..., Path]) -> None:
    """A tifffile pyramid opens with its three levels and the mpp written in its resolution tag."""
    slide = Slide(make_slide())
    assert slide.dimensions == (4096, 3072)
    assert slide.level_count == 3
    assert slide.level_downsamples == [1.0, 4.0, 16.0]
    assert slide.mpp == pytest.approx(0.5)
    assert slide.level_mpp(1) == pytest.approx(2.0)


def test_plan_picks_matching_level_or_reads_finer_and_resizes(make_slide: Callable[..., Path]) -> None:
    """2 µm/px is level 1 as is; 1 µm/px comes from level 0 (0.5) read at 512 px and resized to 256."""
    slide = Slide(make_slide())
    exact = slide.plan_read(2.0, 256)
    assert (exact.level, exact.read_size_px, exact.tile_size_lv0, exact.needs_resize) == (1, 256, 1024.0, False)
    between = slide.plan_read(1.0, 256)
    assert (between.level, between.read_size_px, between.tile_size_lv0, between.needs_resize) == (0, 512, 512.0, True)
    within = slide.plan_read(2.1, 256)  # 5 % off level 1: within the 10 % tolerance, read without resizing
    assert (within.level, within.read_size_px, within.tile_size_lv0) == (1, 256, 1024.0)  # the level's true scale
    strict = slide.plan_read(2.1, 256, mpp_tolerance=0.01)  # 1 % tolerance: nearest finer level 1, resized
    assert (strict.level, strict.read_size_px, strict.needs_resize) == (1, 269, True)


def test_read_tile_matches_openslide_and_whitens_outside(make_slide: Callable[..., Path]) -> None:
    """Tiles equal openslide's own pixels; beyond the slide edge (transparent) they are white, never black."""
    path = make_slide()
    slide = Slide(path)
    bare = openslide.OpenSlide(str(path))
    plan = slide.plan_read(0.5, 256)
    tile = slide.read_tile(1024, 512, plan)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    expected = np.asarray(bare.read_region((1024, 512), 0, (256, 256)))[..., :3]
    np.testing.assert_array_equal(tile, expected)
    edge = slide.read_region(4096 - 100, 0, 0, (200, 50))  # half outside on the right
    assert edge[:, 100:].min() == 255
    assert edge[:, :100].max() > 200  # glass inside: bright but read
    resized = slide.read_tile(1024, 512, slide.plan_read(1.0, 256))
    assert resized.shape == (256, 256, 3)
    assert 100 < resized.mean() < 200  # the pink tissue, not glass or black


def test_slide_pickles_and_reopens(make_slide: Callable[..., Path]) -> None:
    """A Slide sent to a DataLoader worker (pickled) reopens its own handle and reads the same pixels."""
    slide = Slide(make_slide())
    copy = pickle.loads(pickle.dumps(slide))
    np.testing.assert_array_equal(copy.read_region(1100, 600, 0, (64, 64)), slide.read_region(1100, 600, 0, (64, 64)))


def test_mpp_override_and_missing_mpp(make_slide: Callable[..., Path]) -> None:
    """A TIFF without resolution needs the mpp; the error names --slide-mpp; an override is used as given."""
    path = make_slide(name="nompp.tif", mpp=None)
    slide = Slide(path)
    assert not slide.has_mpp
    with pytest.raises(SlideResolutionError, match="--slide-mpp"):
        _ = slide.mpp
    assert Slide(path, mpp=0.25).mpp == 0.25
    with pytest.raises(SlideResolutionError, match="positive"):
        Slide(path, mpp=0)


def test_list_slides_expands_folders(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """A folder gives its slide files (sorted, by extension); a file is kept as given."""
    a = make_slide(name="b.tif")
    b = make_slide(name="a.tiff")
    (tmp_path / "notes.txt").write_text("not a slide")
    assert list_slides(tmp_path) == [b, a]
    assert list_slides([str(a)]) == [a]


def test_find_slides_names_what_gives_no_slide(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """Folders holding no slide and folder entries named like slides that are no file come back as problems,
    one line each; list_slides keeps returning only the slides."""
    a = make_slide(name="a.tif")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "loop.svs").symlink_to("loop.svs")
    (tmp_path / "sub.ndpi").mkdir()
    search = find_slides([tmp_path, empty, tmp_path / "missing.svs"])
    assert search.slides == [a, tmp_path / "missing.svs"]  # a missing file fails when it is opened
    assert [(path, message.split(": ", 1)[1]) for path, message in search.problems] == [
        (tmp_path / "loop.svs", "a symbolic link loop (the link leads back to itself); fix or remove the link"),
        (
            tmp_path / "sub.ndpi",
            "a folder, not a slide file; give the slide file (for MIRAX, the .mrxs file beside its folder)",
        ),
        (
            empty,
            "a folder, not a slide file, and it holds no slide file (.svs, .tif, .tiff, .ndpi, .mrxs, ...); "
            "give slide files or folders of slides",
        ),
    ]
    assert all(message.startswith(f"{path}: ") for path, message in search.problems)
    assert list_slides([tmp_path, empty]) == [a]


def test_opening_what_is_not_a_slide_file_says_what_it_is(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    """Missing file, folder, link loop, broken link: each its own one-line SlideOpenError naming the path."""
    (tmp_path / "loop.tif").symlink_to("loop.tif")
    (tmp_path / "broken.tif").symlink_to(tmp_path / "gone.tif")
    (tmp_path / "folder.svs").mkdir()
    expected = {
        "missing.tif": "no such file; check the path",
        "loop.tif": "a symbolic link loop (the link leads back to itself); fix or remove the link",
        "broken.tif": f"a broken symbolic link to {tmp_path / 'gone.tif'}; fix the link or give the slide file itself",
        "folder.svs": "a folder, not a slide file; give the slide file (for MIRAX, the .mrxs file beside its folder)",
    }
    for name, reason in expected.items():
        with pytest.raises(SlideOpenError) as info:
            Slide(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}: {reason}"


def test_claimed_size_bound(
    make_claimed_slide: Callable[..., Path], make_slide: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file claiming 10^6 x 10^6 px is refused above 2e11 px; max_pixels or ANOMALIB_WSI_MAX_SLIDE_PIXELS raise
    the bound (and then it opens with its claimed size); a bad value of the variable is a one-line error."""
    bomb = make_claimed_slide("bomb.tif", (1_000_000, 1_000_000), tile_px=4096, downsamples=())
    assert MAX_SLIDE_PIXELS == 2 * 10**11 and max_slide_pixels() == MAX_SLIDE_PIXELS
    with pytest.raises(SlideTooLargeError, match=r"1,000,000 x 1,000,000 px \(1e\+12 px\).*limit 2e\+11 px"):
        Slide(bomb)
    assert Slide(bomb, max_pixels=10**12).dimensions == (1_000_000, 1_000_000)
    with pytest.raises(SlideTooLargeError, match="limit 1e\\+07 px"):
        Slide(make_slide(), max_pixels=10**7)  # 4096 x 3072 = 1.26e7 px
    monkeypatch.setenv(MAX_SLIDE_PIXELS_ENV, "1e12")
    assert max_slide_pixels() == 10**12
    assert Slide(bomb).dimensions == (1_000_000, 1_000_000)
    for bad in ("abc", "0", "-5", "inf", "nan"):
        monkeypatch.setenv(MAX_SLIDE_PIXELS_ENV, bad)
        with pytest.raises(WSIError, match=f"ANOMALIB_WSI_MAX_SLIDE_PIXELS='{bad}': not a positive number of pixels"):
            Slide(bomb)


# -- real slides ------------------------------------------------------------------------------------------------------
def test_cmu_plan_at_half_and_one_micron(shared_data: Path) -> None:
    """CMU-1-Small-Region (0.499 µm/px, one level): 0.5 µm/px tiles need no resize; 1.0 µm/px reads 513 px."""
    slide = Slide(shared_data / CMU)
    assert slide.dimensions == (2220, 2967)
    assert slide.mpp == pytest.approx(0.499)
    half = slide.plan_read(0.5, 256)
    assert (half.level, half.read_size_px, half.tile_size_px, half.tile_size_lv0) == (0, 256, 256, 256.0)
    one = slide.plan_read(1.0, 256)
    assert (one.level, one.read_size_px) == (0, 513)
    assert one.tile_size_lv0 == pytest.approx(513.03, abs=0.01)
    assert slide.read_tile(1024, 1024, one).shape == (256, 256, 3)


def test_cmu_finer_than_slide_is_an_error(shared_data: Path) -> None:
    """Asking 0.25 µm/px of a 0.499 µm/px slide names the slide's resolution and the option to change."""
    slide = Slide(shared_data / CMU)
    with pytest.raises(SlideResolutionError, match=r"finer than the slide's level 0 \(0.499 µm/px\); choose --mpp"):
        slide.plan_read(0.25, 256)


def test_tcga_jpeg2000_without_mpp(shared_data: Path) -> None:
    """The JPEG 2000 TCGA slide records no mpp: a clear error; with 0.25 µm/px, 0.5 µm/px is level 1 as is."""
    with pytest.raises(SlideResolutionError, match=r"records no resolution.*--slide-mpp"):
        Slide(shared_data / TCGA).plan_read(0.5, 256)
    slide = Slide(shared_data / TCGA, mpp=0.25)
    plan = slide.plan_read(0.5, 256)
    assert (plan.level, plan.read_size_px) == (1, 256)
    assert plan.tile_size_lv0 == pytest.approx(512.13, abs=0.01)  # level 1 downsample is 2.0005
    tile = slide.read_tile(1024, 1024, plan)
    assert tile.shape == (256, 256, 3) and tile.std() > 5  # decoded JPEG 2000 tissue, not a blank


def test_broken_files_give_one_line_errors(shared_data: Path) -> None:
    """Each broken file fails with its own error class and a one-line message that names the file."""
    broken = shared_data / "slides" / "broken"
    for name in ("unopenable.tiff", "broken.svs"):
        with pytest.raises(SlideOpenError, match=f"{name}: openslide cannot open this file") as info:
            Slide(broken / name)
        assert "\n" not in str(info.value)
    with pytest.raises(SlideOpenError, match="no such file"):
        Slide(broken / "missing.svs")
    unreadable = Slide(broken / "unreadable.svs")  # opens...
    with pytest.raises(SlideReadError, match=r"unreadable\.svs: cannot read pixels"):  # ...but cannot decode
        unreadable.read_region(0, 0, 0, (16, 16))
    with pytest.raises(SlideTooSmallError, match=r"small.svs: slide is 16x16 px, smaller than one 256 px tile"):
        Slide(broken / "small.svs").plan_read(0.5, 256)


def test_boxes_default_72_dpi_is_not_a_resolution(shared_data: Path) -> None:
    """boxes.tiff carries a 72 dpi default (352.8 µm/px): treated as no mpp, and the message says why."""
    slide = Slide(shared_data / "slides" / "broken" / "boxes.tiff")
    assert slide.properties["openslide.mpp-x"].startswith("352.77")
    assert not slide.has_mpp
    with pytest.raises(SlideResolutionError, match=r"implausible resolution \(352.8 µm/px.*--slide-mpp"):
        _ = slide.mpp
