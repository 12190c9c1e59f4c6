"""Slide-label files: every accepted layout, the shared Camelyon16 list, and clear errors."""

from __future__ import annotations

import pytest

from anomalib_wsi.cohort import read_slide_labels
from anomalib_wsi.errors import CohortError, WSIError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slide_id,label\na,tumor\nb,normal\n", {"a": 1, "b": 0}),
        ("slide_id,label\na,Tumour\nb,NORMAL\n", {"a": 1, "b": 0}),
        ("slide_id,label\na,1\nb,0\n", {"a": 1, "b": 0}),
        ("case_id,slide_id,label\nc1,a,tumor_tissue\nc2,b,normal_tissue\n", {"a": 1, "b": 0}),
        ("label,slide_id\n1,a\n0,b\n", {"a": 1, "b": 0}),
        ("\ufeffslide_id, label\r\na , tumor\r\n\r\nb,normal\r\n", {"a": 1, "b": 0}),
    ],
)
def test_header_csv_layouts(tmp_path, text, expected):
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    assert read_slide_labels(path) == expected


def test_camelyon16_reference_csv_without_header(tmp_path):
    path = tmp_path / "reference.csv"
    path.write_text("Test_001,Tumor,Macro,Tumor\nTest_002,Normal\nTest_004,Tumor,Micro,Tumor\n")
    assert read_slide_labels(path) == {"Test_001": 1, "Test_002": 0, "Test_004": 1}


@pytest.mark.shared_data
def test_shared_camelyon16_slide_list(shared_data):
    labels = read_slide_labels(shared_data / "camelyon16" / "slide_labels.csv")
    assert len(labels) == 399
    train = {k: v for k, v in labels.items() if not k.startswith("test_")}
    test = {k: v for k, v in labels.items() if k.startswith("test_")}
    assert len(train) == 270 and len(test) == 129
    assert sum(labels.values()) == 160
    assert sum(train.values()) == 111 and sum(test.values()) == 49
    assert sum(1 for k in train if k.startswith("normal_")) == 159
    assert "normal_086" not in labels and "test_049" not in labels
    assert labels["test_114"] == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("slide_id,label\na,tumor\nb,maybe\n", "line 3: label 'maybe' of slide 'b'"),
        ("id,diagnosis\na,tumor\n", "unrecognised labels file"),
        ("slide_id,label\na,tumor\nA,normal\n", "'A' is listed twice"),
        ("slide_id,label\n", "no slide rows"),
        ("", "empty"),
        ("Test_001\n", "unrecognised"),
    ],
)
def test_bad_label_files_raise_a_one_line_error_naming_the_file(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CohortError, match=match) as info:
        read_slide_labels(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, WSIError)


def test_missing_label_file(tmp_path):
    with pytest.raises(CohortError, match="labels file not found"):
        read_slide_labels(tmp_path / "nope.csv")
