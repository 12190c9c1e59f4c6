"""``anomalib-wsi demo`` (the README's first command) end to end on two CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomalib_wsi.cli import main


@pytest.mark.slow
def test_demo_trains_predicts_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "slide AUC" in printed and "FROC" in printed and "tiles/s" in printed
    figures = json.loads((tmp_path / "demo" / "demo.json").read_text())
    slides = figures["slides"]
    assert len(slides) == 4 and sorted(s["label"] for s in slides) == [0, 0, 1, 1]
    # the held-out tumour slides score above the held-out normal slides, and their lesions are found
    assert figures["slide_auc"] == 1.0
    assert figures["froc"] >= 0.5
    for slide in slides:
        folder = tmp_path / "demo" / "predictions" / slide["slide_id"]
        for name in ("heatmap.npy", "heatmap.png", "lesions.geojson", "detections.csv", "summary.json"):
            assert (folder / name).is_file(), f"{slide['slide_id']}: {name} missing"
        if slide["label"] == 1:
            assert slide["lesions"] >= 1
    report = json.loads((tmp_path / "demo" / "evaluation" / "report.json").read_text())
    assert report["slide_auc"] == figures["slide_auc"]
    assert (tmp_path / "demo" / "evaluation" / "report.md").is_file()
