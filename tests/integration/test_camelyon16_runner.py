"""``anomalib-wsi benchmark camelyon16`` on a small synthetic folder with Camelyon16's layout and names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomalib_wsi.benchmark import PAPER_TRAIN_SLIDES, benchmark_command, plan_camelyon16
from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import synthesize_slide
from anomalib_wsi.errors import WSIError

TINY = {  # the demo's model and tiles, one epoch: the protocol, not the paper's numbers
    "model": {"backbone": "resnet18", "pre_trained": False, "image_size": 64},
    "data": {
        "mpp": 1.0,
        "tile_size_px": 64,
        "normal_tiles_per_slide": 60,
        "tumour_tiles_per_slide": 30,
        "eval_tiles_per_slide": 60,
        "train_batch_size": 32,
        "num_workers": 0,
    },
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "precision": 32, "enable_progress_bar": False},
    "predict": {"batch_size": 64, "num_workers": 0, "precision": "32"},
}


def _camelyon16_folder(root: Path) -> Path:
    """The official download's layout: 10 training tumour slides, 1 normal, 4 test slides, XML, reference.csv."""
    for folder in ("training/tumor", "training/normal", "testing/images", "lesion_annotations"):
        (root / folder).mkdir(parents=True)
    for n, slide_id in enumerate(PAPER_TRAIN_SLIDES):
        slide = synthesize_slide(root / "training/tumor" / f"{slide_id}.tif", size_px=1536, seed=n, tumour=True)
        shutil.move(str(slide.annotation_path), root / "lesion_annotations" / f"{slide_id}.xml")
    synthesize_slide(root / "training/normal/normal_001.tif", size_px=1536, seed=20, tumour=False)
    reference = []
    for n, tumour in enumerate((True, False, True, False), start=1):
        # test slides large enough that their lesions count in the FROC (not isolated tumour cells)
        slide = synthesize_slide(root / f"testing/images/test_{n:03d}.tif", size_px=6144, seed=30 + n, tumour=tumour)
        if tumour:
            shutil.move(str(slide.annotation_path), root / "lesion_annotations" / f"test_{n:03d}.xml")
        reference.append(f"Test_{n:03d},{'Tumor,Macro,Primary' if tumour else 'Normal'}")
    (root / "reference.csv").write_text("\n".join(reference) + "\n")
    return root


def test_layout_check_names_what_is_missing(tmp_path: Path) -> None:
    root = _camelyon16_folder(tmp_path / "CAMELYON16")
    plan = plan_camelyon16(root, tmp_path / "run")
    manifest = pd.read_csv(plan["manifest"])
    assert [Path(p).stem for p in manifest.slide_path] == list(PAPER_TRAIN_SLIDES)
    assert all(Path(p).exists() for p in manifest.annotation_path)
    labels = pd.read_csv(plan["labels"])
    assert labels.slide_id.tolist() == ["test_001", "test_002", "test_003", "test_004"]
    assert labels.label.tolist() == ["tumor", "normal", "tumor", "normal"]
    (root / "training/tumor/tumor_057.tif").unlink()
    assert main(["benchmark", "camelyon16", "--root", str(root), "--output", str(tmp_path / "x"), "--dry-run"]) == 2
    shutil.rmtree(root / "lesion_annotations")
    with pytest.raises(WSIError, match="lesion_annotations"):
        plan_camelyon16(root, tmp_path / "y")


@pytest.mark.slow
def test_runner_trains_predicts_and_reports_beside_the_paper(tmp_path: Path) -> None:
    root = _camelyon16_folder(tmp_path / "CAMELYON16")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert benchmark_command("camelyon16", str(root), str(out), config=str(config)) == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert result["paper"] == {"RDFocal (FW-RD), 10 tumour slides": 0.9036, "plain RD": 0.6068}
    assert 0.0 <= result["slide_auc"] <= 1.0
    assert result["froc"] is not None and 0.0 <= result["froc"] <= 1.0
    assert sorted(p.name for p in (out / "predictions").iterdir() if p.is_dir()) == [
        "test_001",
        "test_002",
        "test_003",
        "test_004",
    ]
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["counts"]["auc_slides"] == 4 and report["counts"]["lesions"] >= 2
