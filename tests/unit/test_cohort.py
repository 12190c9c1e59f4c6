"""Cohort facts: the one annotation-matching rule, manifests (bad mpp in one line), slide lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_wsi.cohort import find_annotation, read_manifest, resolve_slides
from anomalib_wsi.errors import CohortError


def test_annotations_match_by_exact_name_first_then_ignoring_case(tmp_path: Path) -> None:
    (tmp_path / "Test_001.xml").write_text("<ASAP_Annotations/>")
    (tmp_path / "test_002.geojson").write_text("{}")
    (tmp_path / "test_002.xml").write_text("<ASAP_Annotations/>")
    (tmp_path / "TEST_003.json").write_text("{}")
    (tmp_path / "test_003.JSON").write_text("{}")
    assert find_annotation(tmp_path, "test_001") == tmp_path / "Test_001.xml"
    assert find_annotation(tmp_path, "test_002") == tmp_path / "test_002.xml"  # .xml before .geojson
    assert find_annotation(tmp_path, "TEST_003") == tmp_path / "TEST_003.json"  # the exact name wins
    assert find_annotation(tmp_path, "test_004") is None
    assert find_annotation(None, "test_001") is None
    assert find_annotation(tmp_path / "missing", "test_001") is None


@pytest.mark.parametrize("mpp", ["abc", "inf", "-0.5", "0"])
def test_a_manifest_mpp_that_is_no_resolution_is_one_line(tmp_path: Path, mpp: str) -> None:
    (tmp_path / "a.tif").write_bytes(b"x")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_path,mpp\na.tif,{mpp}\n")
    with pytest.raises(CohortError, match=r"manifest.csv: mpp .* of a.tif is not a positive number") as info:
        read_manifest(manifest)
    assert "\n" not in str(info.value)


def test_manifest_rows_and_folders_resolve_to_slides_with_problems_reported(tmp_path: Path) -> None:
    (tmp_path / "slides").mkdir()
    for name in ("b.tif", "a.svs"):
        (tmp_path / "slides" / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_path,mpp\nslides/a.svs,0.25\n")
    pairs, problems = resolve_slides([manifest, tmp_path / "slides", tmp_path / "empty"])
    assert pairs == [
        (tmp_path / "slides" / "a.svs", 0.25),
        (tmp_path / "slides" / "a.svs", None),
        (tmp_path / "slides" / "b.tif", None),
    ]
    assert [path for path, _ in problems] == [tmp_path / "empty"]
    assert "holds no slide file" in problems[0][1]
