"""``anomalib-wsi benchmark camelyon16`` on small synthetic folders with Camelyon16's layout and names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomalib_wsi.cli import main
from anomalib_wsi.data.coordinates import patch_samples, read_coordinates
from anomalib_wsi.data.synthetic import synthesize_slide
from anomalib_wsi.errors import WSIError
from anomalib_wsi.reproduction import (
    PAPER_TRAIN_SLIDES,
    benchmark_command,
    patch_level_test,
    plan_camelyon16,
    score_patches,
)

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

#: The synthetic download's validation slides: the first annotated tumour and normal slides outside the paper's 10.
VALIDATION = ["tumor_002", "tumor_003", "normal_001", "normal_002"]


def _camelyon16_folder(root: Path, train_px: int = 1536, test_px: int = 6144) -> Path:
    """The official download's layout: the 10 training tumour slides, 2 more tumour and 2 normal slides, 4 test
    slides (2 with tumour), ASAP XML and reference.csv."""
    for folder in ("training/tumor", "training/normal", "testing/images", "lesion_annotations"):
        (root / folder).mkdir(parents=True)
    for n, slide_id in enumerate([*PAPER_TRAIN_SLIDES, "tumor_002", "tumor_003"]):
        slide = synthesize_slide(root / "training/tumor" / f"{slide_id}.tif", size_px=train_px, seed=n, tumour=True)
        shutil.move(str(slide.annotation_path), root / "lesion_annotations" / f"{slide_id}.xml")
    for n in (1, 2):
        synthesize_slide(root / f"training/normal/normal_{n:03d}.tif", size_px=train_px, seed=20 + n, tumour=False)
    reference = []
    for n, tumour in enumerate((True, False, True, False), start=1):
        # test slides large enough that their lesions count in the FROC (not isolated tumour cells)
        slide = synthesize_slide(root / f"testing/images/test_{n:03d}.tif", size_px=test_px, seed=30 + n, tumour=tumour)
        if tumour:
            shutil.move(str(slide.annotation_path), root / "lesion_annotations" / f"test_{n:03d}.xml")
        reference.append(f"Test_{n:03d},{'Tumor,Macro,Primary' if tumour else 'Normal'}")
    (root / "reference.csv").write_text("\n".join(reference) + "\n")
    return root


@pytest.fixture(scope="module")
def small_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A download of 1024 px slides (plans and dry runs read no pixels beyond the patch checks)."""
    return _camelyon16_folder(tmp_path_factory.mktemp("download") / "CAMELYON16", train_px=1024, test_px=1024)


def _fwrd_style_lists(root: Path, folder: Path, per_slide: int = 3) -> Path:
    """Coordinate lists in FW-RD's format for a synthetic download: normal centres on tissue outside the lesions,
    tumour centres inside them (from the slides' ASAP XML), on the 10 training and the 4 test slides."""
    from shapely import Point

    from anomalib_wsi.annotations import read_annotations
    from anomalib_wsi.slide.reader import Slide

    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {name: [] for name in ("train_good", "train_bad", "test_good", "test_bad")}
    slides = [("train", s, root / "training/tumor" / f"{s}.tif") for s in PAPER_TRAIN_SLIDES]
    slides += [("test", f"test_{n:03d}", root / f"testing/images/test_{n:03d}.tif") for n in range(1, 5)]
    for part, slide_id, path in slides:
        annotation = root / "lesion_annotations" / f"{slide_id}.xml"
        region = read_annotations(annotation).region if annotation.is_file() else None
        with Slide(path) as slide:
            width, height = slide.dimensions
        good = bad = 0
        for y in range(96, height - 96, 64):
            for x in range(96, width - 96, 64):
                inside = region is not None and region.contains(Point(x, y).buffer(40))
                outside = region is None or not region.intersects(Point(x, y).buffer(48))
                if inside and bad < per_slide:
                    lines[f"{part}_bad"].append(f"{slide_id},{x},{y}")
                    bad += 1
                elif outside and good < per_slide and (x // 64 + y // 64) % 7 == 0:
                    lines[f"{part}_good"].append(f"{slide_id},{x},{y}")
                    good += 1
    for name, rows in lines.items():
        (folder / f"{name}.txt").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return folder


def test_layout_check_names_what_is_missing(small_download: Path, tmp_path: Path) -> None:
    root = tmp_path / "CAMELYON16"
    shutil.copytree(small_download, root)
    plan = plan_camelyon16(root, tmp_path / "run")
    manifest = pd.read_csv(plan["manifest"])
    # the paper's 10 slides train (all of them); two more tumour and two normal training slides validate
    assert [Path(p).stem for p in manifest.slide_path] == [*PAPER_TRAIN_SLIDES, *VALIDATION]
    assert manifest.split.tolist() == ["train"] * 10 + ["val"] * 4
    assert manifest.label.tolist() == ["tumor"] * 12 + ["normal"] * 2
    assert all(Path(p).exists() for p in manifest.annotation_path[:12])
    labels = pd.read_csv(plan["labels"])
    assert labels.slide_id.tolist() == ["test_001", "test_002", "test_003", "test_004"]
    assert labels.label.tolist() == ["tumor", "normal", "tumor", "normal"]
    assert plan["missing"] == {}
    (root / "training/tumor/tumor_057.tif").unlink()
    (root / "testing/images/test_003.tif").unlink()
    assert main(["benchmark", "camelyon16", "--root", str(root), "--output", str(tmp_path / "x"), "--dry-run"]) == 2
    with pytest.raises(WSIError, match=r"2 slides .* missing \(training/tumor: tumor_057; testing/images: Test_003\)"):
        benchmark_command("camelyon16", str(root), str(tmp_path / "x"), dry_run=True)
    shutil.rmtree(root / "lesion_annotations")
    with pytest.raises(WSIError, match="lesion_annotations"):
        plan_camelyon16(root, tmp_path / "y")


@pytest.mark.shared_data
def test_paper_patches_dry_run_counts_fwrd_lists_and_names_missing_slides(
    shared_data: Path, small_download: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lists = shared_data / "fwrd_coords"
    with pytest.raises(WSIError) as error:
        benchmark_command(
            "camelyon16", str(small_download), str(tmp_path / "run"), paper_patches=str(lists), dry_run=True
        )
    plan = json.loads(capsys.readouterr().out)
    assert plan["paper_patches"] == {
        "folder": str(lists),
        "train_slides": 10,
        "train_patches": 6001,
        "train_normal": 5000,
        "train_tumour": 1001,
        "test_slides": 128,
        "test_patches": 20698,
        "test_normal": 9856,
        "test_tumour": 10842,
    }
    assert [Path(p).stem for p in plan["train_slides"]] == list(PAPER_TRAIN_SLIDES)
    # the download holds test_001-004; the test lists need 128 test slides: 124 are named as missing
    missing = plan["missing"]["testing/images"]
    assert len(missing) == 124 and missing[:2] == ["test_005", "test_006"] and "test_004" not in missing
    assert list(plan["missing"]) == ["testing/images"]
    message = str(error.value)
    assert "124 slides the protocol needs are missing (testing/images: test_005, test_006," in message
    assert "and 114 more); complete the download" in message and "\n" not in message


def test_paper_patches_dry_run_on_a_complete_download(small_download: Path, tmp_path: Path, capsys) -> None:
    lists = _fwrd_style_lists(small_download, tmp_path / "coords")
    assert (
        benchmark_command(
            "camelyon16", str(small_download), str(tmp_path / "run"), paper_patches=str(lists), dry_run=True
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    counts = plan["paper_patches"]
    expected = {name: len((lists / f"{name}.txt").read_text().split()) for name in ("train_good", "train_bad")}
    assert (counts["train_slides"], counts["train_normal"], counts["train_tumour"]) == (
        10,
        expected["train_good"],
        expected["train_bad"],
    )
    assert plan["missing"] == {} and counts["test_slides"] == 4
    (lists / "test_bad.txt").unlink()
    with pytest.raises(WSIError, match=r"--paper-patches needs FW-RD's coordinate lists .*missing test_bad\.txt"):
        plan_camelyon16(small_download, tmp_path / "again", paper_patches=lists)


def test_listed_test_patches_score_as_fwrd_scores_them(small_download: Path, tmp_path: Path) -> None:
    import torch
    from sklearn.metrics import roc_auc_score

    from anomalib_wsi.data.dataset import WSITileDataset
    from anomalib_wsi.models.rd_focal import RDFocal

    lists = _fwrd_style_lists(small_download, tmp_path / "coords", per_slide=2)
    test = read_coordinates([f"{lists / 'test_good.txt'}:0", f"{lists / 'test_bad.txt'}:1"])
    slides = {s: small_download / "testing/images" / f"{s}.tif" for s in test.slide_id.unique()}
    samples = patch_samples(test, slides, 64)
    torch.manual_seed(0)
    model = RDFocal(backbone="resnet18", pre_trained=False, image_size=64, evaluator=False, visualizer=False)
    scores = score_patches(model, samples, mpp=0.5, batch_size=4, device="cpu")
    # patch 0 by hand: its level-0 pixels, the model's raw anomaly map, the map's mean and max
    image = torch.from_numpy(WSITileDataset(samples, 0.5, with_masks=False).read_image(0)).permute(2, 0, 1)
    with torch.no_grad():
        anomaly_map = model.model(model.pre_processor(image[None].float() / 255)).anomaly_map
    assert scores.mean_score[0] == pytest.approx(anomaly_map.mean().item(), rel=1e-5)
    assert scores.max_score[0] == pytest.approx(anomaly_map.max().item(), rel=1e-5)
    assert bool((scores.max_score > scores.mean_score).all())
    result = patch_level_test(scores)
    assert (result["patches"], result["normal"], result["tumour"]) == (
        len(test),
        int((test.label == 0).sum()),
        int((test.label == 1).sum()),
    )
    assert result["auroc_mean"] == round(roc_auc_score(test.label, scores.mean_score), 4)
    assert result["auroc_max"] == round(roc_auc_score(test.label, scores.max_score), 4)
    assert patch_level_test(scores.iloc[:1])["auroc_mean"] is None  # one class only: no AUROC


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
    assert "patch_level" not in result
    assert sorted(p.name for p in (out / "predictions").iterdir() if p.is_dir()) == [
        "test_001",
        "test_002",
        "test_003",
        "test_004",
    ]
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["counts"]["auc_slides"] == 4 and report["counts"]["lesions"] >= 2


@pytest.mark.slow
def test_runner_with_paper_patches_trains_on_the_lists_and_adds_the_patch_test(tmp_path: Path) -> None:
    root = _camelyon16_folder(tmp_path / "CAMELYON16", train_px=1024, test_px=2048)
    lists = _fwrd_style_lists(root, tmp_path / "coords")
    tiny = {**TINY, "data": {**TINY["data"], "mpp": 0.5}}  # listed patches are level-0 patches (0.5 µm/px here)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    assert benchmark_command("camelyon16", str(root), str(out), config=str(config), paper_patches=str(lists)) == 0
    result = json.loads((out / "benchmark.json").read_text())
    test_patches = sum(len((lists / f"{n}.txt").read_text().split()) for n in ("test_good", "test_bad"))
    patch = result["patch_level"]
    assert patch["patches"] == test_patches and patch["tumour"] > 0 and patch["normal"] > 0
    scores = pd.read_csv(result["patch_scores"])
    assert len(scores) == test_patches and list(scores.columns[-2:]) == ["mean_score", "max_score"]
    assert 0.0 <= patch["auroc_mean"] <= 1.0 and 0.0 <= patch["auroc_max"] <= 1.0
    assert 0.0 <= result["slide_auc"] <= 1.0
    split = pd.read_csv(out / "tile_cache" / "split.csv")
    assert sorted(split[split.split == "train"].slide_id) == sorted(PAPER_TRAIN_SLIDES)
