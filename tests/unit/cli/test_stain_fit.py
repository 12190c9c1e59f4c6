"""``anomalib-wsi stain fit``: a reference fitted to real H&E tiles, written as the JSON data.stain_reference takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomalib_wsi.cli import main
from anomalib_wsi.data.stain import StainReference, fit_reference, reference_images, resolve_reference

TILE = "tiles/histolab/tissue-level0-4302-10273-4814-10785.png"


@pytest.mark.shared_data
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_stain_fit_writes_the_reference_training_reads(shared_data: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "reference.json"
    assert main(["stain", "fit", str(shared_data / TILE), "--method", method, "--output", str(out)]) == 0
    written = StainReference.from_dict(json.loads(out.read_text()))
    assert written == fit_reference(reference_images(shared_data / TILE), method)
    assert resolve_reference(method, str(out)) == written  # what WSIDataModule(stain_reference=...) does


@pytest.mark.shared_data
def test_stain_fit_on_background_is_one_line_and_status_2(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    white = shared_data / "tiles/histolab/almost-white-1.png"
    assert main(["stain", "fit", str(white), "--output", str(tmp_path / "r.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"anomalib-wsi stain: error: {white}: almost no stained tissue (under 5% of the pixels); "
        "choose reference tiles of well-stained tissue"
    ]
    assert not (tmp_path / "r.json").exists()
