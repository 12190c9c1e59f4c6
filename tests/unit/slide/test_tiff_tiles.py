"""Direct TIFF tile decoding: the same pixels as openslide, the same errors, and openslide wherever in doubt."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from anomalib_wsi.data.synthetic import synthesize_slide
from anomalib_wsi.errors import SlideReadError
from anomalib_wsi.slide import Slide
from anomalib_wsi.slide.tiff_tiles import TiffTiles

CMU = "slides/real/CMU-1-Small-Region.svs"
TCGA = "slides/real/TCGA-CR-7395-01A-01-TS1.svs"


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3072 px synthetic H&E slide: JPEG (YCbCr) tiles of 256 px, downsamples 1, 2, 4, 8 (generic-tiff)."""
    path = tmp_path_factory.mktemp("tiff") / "s.tif"
    return synthesize_slide(path, size_px=3072, mpp=0.5, seed=3, min_level_px=256).path


def _compare_random_regions(path: Path, seed: int = 0, per_level: int = 40) -> tuple[int, int, dict[int, int]]:
    """Random regions (partly outside the slide too) read both ways: (regions, regions that differ, reads served)."""
    direct, plain = Slide(path), Slide(path, direct_tiff=False)
    rng = np.random.default_rng(seed)
    regions = differ = 0
    for level in range(direct.level_count):
        width, height = direct.level_dimensions[level]
        downsample = direct.level_downsamples[level]
        for _ in range(per_level):
            w, h = int(rng.integers(1, 600)), int(rng.integers(1, 600))
            left, top = int(rng.integers(-300, width + 50)), int(rng.integers(-300, height + 50))
            x, y = round(left * downsample), round(top * downsample)
            regions += 1
            ours, theirs = direct.read_region(x, y, level, (w, h)), plain.read_region(x, y, level, (w, h))
            differ += not np.array_equal(ours, theirs)
    tiles = direct._direct_tiles()
    served = {} if tiles is None else {level: info.reads for level, info in tiles.levels.items()}
    return regions, differ, served


def test_synthetic_regions_equal_openslide_at_every_level(synthetic_slide: Path) -> None:
    """160 random regions over 4 levels, edges and outside included: pixel-identical, and all of them served."""
    regions, differ, served = _compare_random_regions(synthetic_slide)
    assert (regions, differ) == (160, 0)
    assert served == {0: 40, 1: 40, 2: 40, 3: 40}


def test_tiles_equal_openslide_on_real_aperio_slides(shared_data: Path) -> None:
    """Aperio JPEG (240 px tiles, misaligned with the reads) and JPEG 2000 slides: identical pixels; TCGA's level 1
    (downsample 2.0005, so a level-0 origin falls between its pixels) is left to openslide."""
    regions, differ, served = _compare_random_regions(shared_data / CMU, per_level=60)
    assert (regions, differ, served) == (60, 0, {0: 60})
    regions, differ, served = _compare_random_regions(shared_data / TCGA, per_level=30)
    assert (regions, differ, served) == (60, 0, {0: 30, 1: 0})


def test_each_tile_of_an_aligned_grid_is_decoded_once(synthetic_slide: Path) -> None:
    """A 256 px grid on 256 px TIFF tiles: each of the 144 reads decodes exactly its own tile, none twice and none
    of the neighbours (the speed itself is measured in benchmarks/bench_tile_read.py)."""
    slide = Slide(synthetic_slide)
    for y in range(0, 3072, 256):
        for x in range(0, 3072, 256):
            slide.read_tile(x, y, slide.plan_read(0.5, 256))
    tiles = slide._direct_tiles()
    assert tiles is not None
    assert tiles.levels[0].reads == 144
    assert tiles.decoded == 144


def _corrupt_copy(src: Path, dst: Path, how: str) -> tuple[int, int]:
    """Copy the slide and damage one level-0 tile; returns that tile's level-0 (x, y)."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        index = 5 * across + 5
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    with dst.open("r+b") as f:
        if how == "zeroed tail":
            f.seek(offset + count // 3)
            f.write(bytes(count - count // 3))
        else:
            f.seek(offset)
            f.write(bytes(16))
    return 5 * 256, 5 * 256


@pytest.mark.parametrize("how", ["zeroed tail", "zeroed head"])
def test_a_damaged_tile_fails_as_openslide_fails(synthetic_slide: Path, tmp_path: Path, how: str) -> None:
    """A tile zeroed at its end (an interrupted copy) or its start: the same one-line SlideReadError as openslide."""
    x, y = _corrupt_copy(synthetic_slide, tmp_path / "damaged.tif", how)
    messages = []
    for direct in (True, False):
        slide = Slide(tmp_path / "damaged.tif", direct_tiff=direct)
        assert slide.read_region(0, 0, 0, (256, 256)).shape == (256, 256, 3)  # a good tile first
        with pytest.raises(SlideReadError, match=r"damaged\.tif: cannot read pixels at \(1280, 1280\) level 0") as err:
            slide.read_region(x, y, 0, (256, 256))
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "\n" not in messages[0]


def test_a_level_that_decodes_differently_is_handed_to_openslide(synthetic_slide: Path) -> None:
    """Fault injection: if the decoded tiles ever differ from openslide's, the first read returns openslide's
    pixels and the level is read with openslide from then on."""
    slide, plain = Slide(synthetic_slide), Slide(synthetic_slide, direct_tiff=False)
    tiles = slide._direct_tiles()
    assert tiles is not None
    decode = tiles.levels[1].decode

    def inverted(*args: object, **kwargs: object) -> tuple:
        data, *rest = decode(*args, **kwargs)
        return (255 - data, *rest)

    tiles.levels[1].decode = inverted
    for x in (0, 1024, 2048):
        assert np.array_equal(slide.read_region(x, 512, 1, (300, 200)), plain.read_region(x, 512, 1, (300, 200)))
    assert tiles.levels[1].disabled
    assert tiles.levels[1].reads == 0
    assert not tiles.levels[0].disabled


def test_environment_switch_and_pickling(synthetic_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ANOMALIB_WSI_DIRECT_TIFF=0 reads through openslide only; a pickled slide (a DataLoader worker's copy) opens
    its own reader and reads the same pixels."""
    slide = Slide(synthetic_slide)
    before = slide.read_region(512, 512, 0, (256, 256))
    copy = pickle.loads(pickle.dumps(slide))
    assert copy._direct is None
    assert np.array_equal(copy.read_region(512, 512, 0, (256, 256)), before)
    assert copy._direct_tiles() is not slide._direct_tiles()
    monkeypatch.setenv("ANOMALIB_WSI_DIRECT_TIFF", "0")
    assert Slide(synthetic_slide)._direct_tiles() is None
    assert TiffTiles.open(synthetic_slide, "generic-tiff", [(3072, 3072)], [1.0]) is None


def test_decoded_tiles_share_one_budget_per_process(synthetic_slide: Path) -> None:
    """Two open slides keep their decoded tiles within the one 32 MiB budget of the process (a training worker
    holds dozens of slides), and closing a slide frees its share."""
    from anomalib_wsi.slide.tiff_tiles import _CACHE

    first, second = Slide(synthetic_slide), Slide(synthetic_slide)
    for slide in (first, second):
        for y in range(0, 3072, 256):
            for x in range(0, 3072, 256):
                slide.read_region(x, y, 0, (256, 256))
    assert _CACHE.bytes <= _CACHE.max_bytes == 32 << 20
    serials = {key[0] for key in _CACHE.tiles}
    first_tiles = first._direct_tiles()
    assert first_tiles is not None and first_tiles._serial in serials
    held = _CACHE.bytes
    first.close()
    assert first_tiles._serial not in {key[0] for key in _CACHE.tiles}
    assert _CACHE.bytes < held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc (Linux)")
def test_no_file_stays_open_between_reads(synthetic_slide: Path) -> None:
    """Direct reads open the file only while they read (a training worker may hold hundreds of slides, each with
    openslide's own descriptor): 12 more reads leave the count of open files as it was."""
    slide = Slide(synthetic_slide)
    slide.read_region(0, 0, 0, (256, 256))
    before = len(os.listdir("/proc/self/fd"))
    for x in range(0, 3072, 256):
        slide.read_region(x, 512, 0, (256, 256))
    tiles = slide._direct_tiles()
    assert tiles is not None and tiles.levels[0].reads == 13
    assert len(os.listdir("/proc/self/fd")) == before
