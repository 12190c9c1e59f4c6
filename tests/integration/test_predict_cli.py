"""``anomalib-wsi predict`` end to end: exit statuses, the output layout, user errors in one line, real slides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import SyntheticSlide

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TCGA = "TCGA-CR-7395-01A-01-TS1"
OUTPUT_FILES = ("heatmap.npy", "heatmap.png", "lesions.geojson", "detections.csv", "summary.json")


def _predict(*args: str) -> int:
    return main(["predict", *args, "--num-workers", "0", "--device", "cpu"])


def _no_traceback(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return captured.err


def test_predict_a_folder_writes_the_layout(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for slide in small_slides.values():
        shutil.copy(slide.path, folder / slide.path.name)
    output = tmp_path / "out"
    assert main(["predict", "--ckpt", str(trained_model.ckpt_path), str(folder), "--output", str(output),
                 "--num-workers", "0"]) == 0  # fmt: skip
    _no_traceback(capsys)
    for slide_id in ("small_normal", "small_tumour"):
        for name in OUTPUT_FILES:
            assert (output / slide_id / name).is_file(), f"{slide_id}/{name}"
        summary = json.loads((output / slide_id / "summary.json").read_text())
        assert summary["checkpoint"] == str(trained_model.ckpt_path)
        assert np.load(output / slide_id / "heatmap.npy").shape == (12, 12)  # 1536 px / 128 px tiles
    table = pd.read_csv(output / "summary.csv")
    assert list(table.slide_id) == ["small_normal", "small_tumour"]
    assert list(table.status) == ["done", "done"]
    assert pd.read_csv(output / "failures.csv").empty
    # the synthetic tumour slide is found, the normal one is not flagged
    scores = dict(zip(table.slide_id, table.slide_score, strict=True))
    assert scores["small_tumour"] > 0.5 > scores["small_normal"]

    assert _predict("--ckpt", str(trained_model.ckpt_path), str(folder), "--output", str(output)) == 0
    assert set(pd.read_csv(output / "summary.csv").status) == {"skipped (done before)"}


@pytest.mark.parametrize("problem", ["missing", "not a checkpoint"])
def test_a_bad_checkpoint_exits_2_with_one_line(
    problem: str, small_slides: dict[str, SyntheticSlide], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "model.ckpt"
    if problem == "not a checkpoint":
        ckpt.write_text("not a checkpoint\n")
    status = _predict("--ckpt", str(ckpt), str(small_slides["normal"].path), "--output", str(tmp_path / "out"))
    assert status == 2
    err = _no_traceback(capsys)
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert str(ckpt) in lines[0] and ".ckpt written by training" in lines[0]
    assert not (tmp_path / "out" / "small_normal").exists()


def test_broken_slides_among_good_ones_exit_1(
    trained_model: Any,
    small_slides: dict[str, SyntheticSlide],
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """openslide's own bad fixtures: ``broken.svs`` (not a slide) and ``unreadable.svs``, beside a good slide."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("broken.svs", "unreadable.svs"):
        shutil.copy(shared_data / "slides" / "broken" / name, folder / name)
    shutil.copy(small_slides["tumour"].path, folder / "good.tif")
    output = tmp_path / "out"
    assert _predict("--ckpt", str(trained_model.ckpt_path), str(folder), "--output", str(output)) == 1
    _no_traceback(capsys)
    failures = pd.read_csv(output / "failures.csv").set_index("slide_id")
    assert sorted(failures.index) == ["broken", "unreadable"]
    assert "openslide cannot open this file" in failures.loc["broken", "error"]
    for slide_id, row in failures.iterrows():
        assert str(folder / f"{slide_id}.svs") in row.error and "\n" not in row.error
    assert list(pd.read_csv(output / "summary.csv").slide_id) == ["good"]
    for name in OUTPUT_FILES:
        assert (output / "good" / name).is_file()


def test_real_jpeg2000_slide_without_mpp_needs_slide_mpp(
    trained_model: Any, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TCGA frozen section (JPEG 2000 tiles, no mpp recorded): a clear failure without --slide-mpp, then
    predicted end to end with ``--slide-mpp 0.25``."""
    slide = shared_data / "slides" / "real" / f"{TCGA}.svs"
    output = tmp_path / "out"
    assert _predict("--ckpt", str(trained_model.ckpt_path), str(slide), "--output", str(output)) == 1
    _no_traceback(capsys)
    failure = pd.read_csv(output / "failures.csv").iloc[0]
    assert failure.slide_id == TCGA and failure.stage == "tiling"
    assert "records no resolution" in failure.error and "--slide-mpp" in failure.error
    assert not (output / TCGA / "summary.json").exists()

    args = ("--ckpt", str(trained_model.ckpt_path), str(slide), "--output", str(output), "--slide-mpp", "0.25")
    assert _predict(*args) == 0
    _no_traceback(capsys)
    assert pd.read_csv(output / "failures.csv").empty
    summary = json.loads((output / TCGA / "summary.json").read_text())
    assert summary["mpp"] == 0.25 and summary["slide_size_lv0"] == [4443, 3567]
    assert summary["heatmap_downsample"] == 256.0  # 64 px at 1 µm/px = 256 level-0 px at 0.25 µm/px
    heatmap = np.load(output / TCGA / "heatmap.npy")
    assert heatmap.shape == (14, 18)  # ceil(3567 / 256), ceil(4443 / 256)
    assert summary["n_tiles"] >= 100  # the tissue of a frozen section fills most of the slide
    assert int(np.isfinite(heatmap).sum()) >= summary["n_tiles"]
    detections = (output / TCGA / "detections.csv").read_text().splitlines()
    for line in detections:
        _, x, y = line.split(",")
        assert 0 <= int(x) < 4443 and 0 <= int(y) < 3567
    features = json.loads((output / TCGA / "lesions.geojson").read_text())["features"]
    assert len(features) == summary["n_lesions"]


def test_channels_last_and_min_tissue_options(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    slide = str(small_slides["tumour"].path)
    ckpt = str(trained_model.ckpt_path)
    assert _predict("--ckpt", ckpt, slide, "--output", str(tmp_path / "plain")) == 0
    assert _predict("--ckpt", ckpt, slide, "--output", str(tmp_path / "cl"), "--channels-last") == 0
    plain = np.load(tmp_path / "plain" / "small_tumour" / "heatmap.npy")
    channels_last = np.load(tmp_path / "cl" / "small_tumour" / "heatmap.npy")
    # the same network in another memory layout: the same scores up to float rounding
    np.testing.assert_allclose(plain, channels_last, atol=1e-4, equal_nan=True)
    # a stricter tissue threshold scores fewer tiles
    assert _predict("--ckpt", ckpt, slide, "--output", str(tmp_path / "strict"), "--min-tissue", "0.9") == 0
    strict = json.loads((tmp_path / "strict" / "small_tumour" / "summary.json").read_text())["n_tiles"]
    loose = json.loads((tmp_path / "plain" / "small_tumour" / "summary.json").read_text())["n_tiles"]
    assert 0 < strict < loose
