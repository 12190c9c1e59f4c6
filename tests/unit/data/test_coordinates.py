"""Tests of anomalib_wsi/data/coordinates.py: FW-RD's patch lists in every spelling, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from anomalib_wsi.data.coordinates import (
    coordinate_spec_strings,
    name_list,
    patch_samples,
    read_coordinate_file,
    read_coordinates,
)
from anomalib_wsi.errors import WSIError


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    """FW-RD's layout: train_good.txt and train_bad.txt, no header, Windows line ends (as in its repository)."""
    folder = tmp_path / "coords"
    folder.mkdir()
    (folder / "train_good.txt").write_bytes(b"tumor_001,1000,2000\r\ntumor_001,1300,2100\r\ntumor_011,500,700\r\n")
    (folder / "train_bad.txt").write_bytes(b"tumor_011,900,950\r\n")
    return folder


def test_every_spelling_reads_the_same_patches(lists: Path, tmp_path: Path) -> None:
    good, bad = lists / "train_good.txt", lists / "train_bad.txt"
    manifest = tmp_path / "patches.csv"
    manifest.write_text("path,label\ncoords/train_good.txt,normal\ncoords/train_bad.txt,tumour\n")
    spellings = [
        [f"{good}:0", f"{bad}:1"],
        [f"{good}:good", f"{bad}:bad"],
        {str(good): 0, str(bad): "tumor"},
        f"{good}:0 {bad}:1",  # as typed after one command-line option
        str(lists),  # the folder: train_good.txt normal, train_bad.txt tumour
        str(manifest),
    ]
    expected = pd.DataFrame(
        {
            "slide_id": ["tumor_001", "tumor_001", "tumor_011", "tumor_011"],
            "x_center": [1000, 1300, 500, 900],
            "y_center": [2000, 2100, 700, 950],
            "label": [0, 0, 0, 1],
        }
    )
    for spec in spellings:
        table = read_coordinates(spec)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(table.drop(columns="source"), expected, check_dtype=False)
        assert [Path(s).name for s in table.source] == ["train_good.txt"] * 3 + ["train_bad.txt"]


def test_a_label_column_and_a_header_are_read(tmp_path: Path) -> None:
    plain = tmp_path / "mixed.csv"
    plain.write_text("test_001,10,20,1\ntest_002,30,40,0\n\n")
    with_header = tmp_path / "header.csv"
    with_header.write_text("label,slide_id,y_center,x_center\ntumour,test_001,20,10\nnormal,test_002,40,30\n")
    for path in (plain, with_header):
        table = read_coordinate_file(path)
        assert table[["slide_id", "x_center", "y_center", "label"]].values.tolist() == [
            ["test_001", 10, 20, 1],
            ["test_002", 30, 40, 0],
        ]


def test_patch_samples_are_level0_squares_around_the_centres(lists: Path) -> None:
    table = read_coordinates(str(lists))
    samples = patch_samples(table, {"tumor_001": Path("a.tif"), "tumor_011": Path("b.tif")}, 256)
    # FW-RD: read_region((x_center - 128, y_center - 128), 0, (256, 256))
    assert samples[["x", "y"]].values.tolist() == [[872, 1872], [1172, 1972], [372, 572], [772, 822]]
    assert set(samples.level) == {0} and set(samples.read_size_px) == {256} and set(samples.tile_size_lv0) == {256}
    assert samples.label_index.tolist() == [0, 0, 0, 1]
    assert samples.slide_path.tolist() == ["a.tif", "a.tif", "b.tif", "b.tif"]


@pytest.mark.parametrize(
    ("content", "spec_label", "message"),
    [
        ("tumor_001,10\n", ":0", r"line 1: expected slide_id,x_center,y_center\[,label\]"),
        ("tumor_001,ten,20\n", ":0", "line 1: x_center and y_center must be numbers"),
        ("tumor_001,10,20\n", "", "line 1: no label for this patch; give each file a label"),
        ("tumor_001,10,20,maybe\n", "", "line 1: unknown patch label 'maybe'"),
        ("tumor_001,10,20,1\n", ":0", "line 1: label column says 1 but the file is listed with label 0"),
        ("slide,x,y\ntumor_001,10,20\n", ":0", "header slide,x,y lacks slide_id,x_center,y_center"),
    ],
)
def test_bad_lines_name_the_file_line_and_fix(tmp_path: Path, content: str, spec_label: str, message: str) -> None:
    path = tmp_path / "list.txt"
    path.write_text(content)
    with pytest.raises(WSIError, match=message):
        read_coordinates(f"{path}{spec_label}")


def test_missing_files_and_folders_are_named(tmp_path: Path, lists: Path) -> None:
    with pytest.raises(WSIError, match=r"nowhere\.txt: coordinate file not found"):
        read_coordinates([str(tmp_path / "nowhere.txt:0")])
    (lists / "train_bad.txt").unlink()
    with pytest.raises(WSIError, match=r"coordinate folder lacks train_bad\.txt"):
        read_coordinates(str(lists))


def test_specs_are_stored_as_plain_strings_and_long_name_lists_are_cut(lists: Path) -> None:
    assert coordinate_spec_strings(lists) == [str(lists)]
    assert coordinate_spec_strings([lists / "train_good.txt"]) == [str(lists / "train_good.txt")]
    assert coordinate_spec_strings({"a.txt": 0}) == {"a.txt": 0}
    assert name_list([f"test_{n:03d}" for n in range(1, 13)]) == (
        "test_001, test_002, test_003, test_004, test_005, test_006, test_007, test_008, test_009, test_010 and 2 more"
    )
