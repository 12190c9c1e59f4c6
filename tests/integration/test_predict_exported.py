"""Exported models predict whole slides as the torch model does: OpenVINO Runtime and ONNX Runtime on the CPU.

The session's tiny RDFocal (resnet18, 64 px tiles, see ``conftest.py``) is exported once to each format. In
fp32 the exported network is the torch forward (uint8 tiles in, the float conversion and the pre-processor
inside), so the outputs agree to float rounding: measured, raw tile scores (about 0.2-2.5) within 5e-7 and
pooled anomaly maps within 1e-6, normalised heatmaps within 2e-7, identical lesions and detections. The tests
allow :data:`RAW_TOL` on raw scores and maps and :data:`NORM_TOL` on normalised heatmaps, scores and detection
confidences, far above rounding and far below any difference a user would see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import SyntheticSlide
from anomalib_wsi.errors import WSIError
from anomalib_wsi.inference import SlidePrediction, WSIEngine, load_model
from anomalib_wsi.inference.export import ExportedModel, export_model, load_exported
from anomalib_wsi.inference.forward import TileForward
from anomalib_wsi.inference.resume import run_fingerprint
from anomalib_wsi.inference.settings import PredictionSettings

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'anomalib-wsi[openvino]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'anomalib-wsi[onnx]'")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: Tolerance on raw tile scores and anomaly maps (fp32; measured at most 1e-6).
RAW_TOL = 1e-4
#: Tolerance on normalised heatmaps, slide scores and detection confidences (fp32; measured at most 2e-7).
NORM_TOL = 1e-5
FORMATS = ("openvino", "onnx")


@pytest.fixture(scope="module")
def exports(trained_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's model exported to both formats (one folder each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("exports")
        return {fmt: export_model(trained_model.ckpt_path, fmt, root / fmt) for fmt in FORMATS}
    finally:
        torch.set_num_threads(threads)


def _engine() -> WSIEngine:
    return WSIEngine(num_workers=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def torch_run(trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path_factory: pytest.TempPathFactory):
    """The torch path's prediction of the two small slides (the reference)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        slides = [small_slides["tumour"].path, small_slides["normal"].path]
        out = tmp_path_factory.mktemp("torch_run")
        return _engine().predict(ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=out), out
    finally:
        torch.set_num_threads(threads)


def test_export_writes_the_model_and_what_prediction_needs(trained_model: Any, exports: dict[str, Path]) -> None:
    assert exports["openvino"].name == "model.xml"
    assert exports["openvino"].with_suffix(".bin").is_file()
    assert exports["onnx"].name == "model.onnx"
    module, _ = load_model(None, trained_model.ckpt_path)
    post = module.post_processor
    for path in exports.values():
        metadata = json.loads((path.parent / "metadata.json").read_text())
        assert metadata["tile_size_px"] == 64
        assert metadata["mpp"] == 1.0  # the demo model's training resolution
        assert metadata["pre_processor"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
        stats = metadata["post_processor"]["statistics"]
        assert stats["image_threshold"] == pytest.approx(float(post.image_threshold))
        assert stats["image_max"] == pytest.approx(float(post.image_max))
        exported, data = load_exported(path)
        assert data == {"tile_size_px": 64, "mpp": 1.0}
        assert exported.post_processor.slide_settings() == pytest.approx(post.slide_settings(), nan_ok=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_tile_scores_and_maps_equal_torch(trained_model: Any, exports: dict[str, Path], fmt: str) -> None:
    module, _ = load_model(None, trained_model.ckpt_path)
    generator = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (7, 64, 64, 3), dtype=torch.uint8, generator=generator)  # not the batch size
    tiles[:3] = 230  # pale, tissue-free tiles as well as noise
    cpu = torch.device("cpu")
    scores, maps = TileForward(module, cpu, "32", False, None, 8, map_cells=4)(tiles)
    exported, _ = load_exported(exports[fmt])
    forward = TileForward(exported, cpu, "32", False, None, 8, map_cells=4)
    assert forward.backend.name == fmt
    got_scores, got_maps = forward(tiles)
    assert got_maps is not None and maps is not None
    assert got_scores.shape == scores.shape == (7,)
    assert got_maps.shape == maps.shape == (7, 4, 4)
    assert np.abs(got_scores - scores).max() <= RAW_TOL
    assert np.abs(got_maps - maps).max() <= RAW_TOL


def _same_prediction(got: SlidePrediction, want: SlidePrediction) -> None:
    a, b = got.heatmap.values, want.heatmap.values
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= NORM_TOL
    assert got.slide_score == pytest.approx(want.slide_score, abs=NORM_TOL)
    assert len(got.lesions) == len(want.lesions)
    for mine, theirs in zip(got.lesions, want.lesions, strict=True):
        overlap = mine.polygon.intersection(theirs.polygon).area / mine.polygon.union(theirs.polygon).area
        assert overlap >= 0.99
    assert got.detections.shape == want.detections.shape
    assert np.array_equal(got.detections[:, 1:], want.detections[:, 1:])  # the same level-0 points
    assert np.abs(got.detections[:, 0] - want.detections[:, 0]).max(initial=0.0) <= NORM_TOL


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_model_predicts_the_slides_as_torch_does(
    exports: dict[str, Path], torch_run: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path, fmt: str
) -> None:
    reference, _ = torch_run
    slides = [small_slides["tumour"].path, small_slides["normal"].path]
    run = _engine().predict(model=exports[fmt], slides=slides, output_dir=tmp_path)
    assert not run.failures
    assert [r.slide_id for r in run] == [r.slide_id for r in reference] == ["small_tumour", "small_normal"]
    for got, want in zip(run, reference, strict=True):
        _same_prediction(got, want)
    tumour, normal = run
    assert tumour.slide_score > 0.5 > normal.slide_score
    assert tumour.lesions and not normal.lesions
    summary = json.loads((tmp_path / "small_tumour" / "summary.json").read_text())
    assert summary["checkpoint"] == str(exports[fmt])


def test_resume_fingerprint_tells_the_export_from_the_checkpoint(
    trained_model: Any, exports: dict[str, Path], torch_run: Any, small_slides: dict[str, SyntheticSlide]
) -> None:
    settings = PredictionSettings()
    module, _ = load_model(None, trained_model.ckpt_path)
    fingerprints = {"torch": run_fingerprint(Path(trained_model.ckpt_path), module, settings)}
    for fmt, path in exports.items():
        exported, _ = load_exported(path)
        assert isinstance(exported, ExportedModel)
        fingerprints[fmt] = run_fingerprint(path, exported, settings)
    assert len(set(fingerprints.values())) == 3
    # the torch run's folder is not taken for the export's: both slides are predicted again, then resumed
    _, out = torch_run
    slides = [small_slides["tumour"].path, small_slides["normal"].path]
    again = _engine().predict(model=exports["onnx"], slides=slides, output_dir=out)
    assert [r.skipped for r in again] == [False, False]
    resumed = _engine().predict(model=exports["onnx"], slides=slides, output_dir=out)
    assert [r.skipped for r in resumed] == [True, True]


def test_cli_exports_and_predicts_with_the_export(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export_dir = tmp_path / "exported"
    assert (
        main(["export", "--ckpt", str(trained_model.ckpt_path), "--format", "onnx", "--output", str(export_dir)]) == 0
    )
    output = tmp_path / "preds"
    slide = str(small_slides["tumour"].path)
    args = ["predict", "--model", str(export_dir / "model.onnx"), slide, "--output", str(output), "--num-workers", "0"]
    assert main(args) == 0
    table = pd.read_csv(output / "summary.csv")
    assert list(table.status) == ["done"]
    assert float(table.slide_score[0]) > 0.5
    for name in ("heatmap.npy", "lesions.geojson", "detections.csv", "summary.json"):
        assert (output / "small_tumour" / name).is_file()
    assert main(args) == 0
    assert list(pd.read_csv(output / "summary.csv").status) == ["skipped (done before)"]
    # a tile size the export was not made for: one line naming the fix
    capsys.readouterr()
    wrong = ["predict", "--model", str(export_dir / "model.onnx"), slide, "--output", str(tmp_path / "x")]
    assert main(["export", "--ckpt", "missing.ckpt", "--format", "onnx", "--output", str(tmp_path / "y")]) == 2
    assert main([*wrong, "--ckpt", str(trained_model.ckpt_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.ckpt" in err and "either --ckpt" in err and "Traceback" not in err


def test_a_tile_size_the_export_was_not_made_for_is_one_error(
    exports: dict[str, Path], small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    with pytest.raises(WSIError, match="exported for 64 px tiles, given 32 px"):
        _engine().predict(model=exports["openvino"], slides=[small_slides["normal"].path], output_dir=tmp_path,
                          tile_size_px=32)  # fmt: skip


@pytest.fixture(scope="module")
def int8_export(trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path_factory: pytest.TempPathFactory):
    """The session's model exported to OpenVINO and quantised to INT8 on tiles of the two small slides (CLI)."""
    pytest.importorskip("nncf", reason="the int8 extra is not installed: pip install 'anomalib-wsi[int8]'")
    out = tmp_path_factory.mktemp("int8")
    slides = [str(small_slides["tumour"].path), str(small_slides["normal"].path)]
    args = ["export", "--ckpt", str(trained_model.ckpt_path), "--format", "openvino", "--output", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--int8", "--calibration", *slides, "--calibration-tiles", "96"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "model.xml"


def test_int8_export_states_how_close_it_stays_and_predicts_the_slides(
    int8_export: Path, exports: dict[str, Path], torch_run: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    metadata = json.loads((int8_export.parent / "metadata.json").read_text())
    assert metadata["precision"] == "int8"
    entry = metadata["int8"]
    assert entry["calibration_slides"] == ["small_tumour", "small_normal"]
    check = entry["held_out_check"]
    read = entry["calibration_tiles"] + check["tiles"]  # up to 48 per slide: all the normal slide's 28 tissue tiles
    assert 64 <= read <= 96 and check["tiles"] == read // 4  # every fourth tile read is held out
    assert check["spearman"] > 0.9  # measured 0.99
    assert check["max_diff_of_range"] < 0.1  # measured 0.03 (0.68 with NNCF's default averaged ranges)
    assert int8_export.with_suffix(".bin").stat().st_size < 0.5 * exports["openvino"].with_suffix(".bin").stat().st_size
    settings = PredictionSettings()
    fingerprint = run_fingerprint(int8_export, load_exported(int8_export)[0], settings)
    assert fingerprint != run_fingerprint(exports["openvino"], load_exported(exports["openvino"])[0], settings)

    reference, _ = torch_run
    slides = [small_slides["tumour"].path, small_slides["normal"].path]
    run = _engine().predict(model=int8_export, slides=slides, output_dir=tmp_path)
    assert not run.failures
    tumour, normal = run
    assert tumour.slide_score > 0.5 > normal.slide_score
    assert tumour.lesions and not normal.lesions
    for got, want in zip(run, reference, strict=True):
        assert np.array_equal(np.isnan(got.heatmap.values), np.isnan(want.heatmap.values))
        diff = np.abs(got.heatmap.values - want.heatmap.values)
        assert np.nanmax(diff) < 0.03  # normalised 0-1 scores; measured 0.010


def test_int8_needs_openvino_calibration_slides_and_tissue(
    trained_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nncf", reason="the int8 extra is not installed: pip install 'anomalib-wsi[int8]'")
    out = tmp_path / "x"
    base = ["export", "--ckpt", str(trained_model.ckpt_path), "--output", str(out)]
    (tmp_path / "empty").mkdir()
    not_a_slide = tmp_path / "notes.tif"
    not_a_slide.write_text("not a slide")
    int8 = ["--format", "openvino", "--int8", "--calibration"]
    cases = [
        (["--format", "onnx", "--int8", "--calibration", str(tmp_path)], "OpenVINO exports only"),
        (["--format", "openvino", "--int8"], "--calibration"),
        (["--format", "openvino", "--calibration-tiles", "50"], "--int8"),
        ([*int8, str(tmp_path / "empty")], "holds no slide file"),
        ([*int8, str(trained_model.ckpt_path.parent), "--calibration-tiles", "0"], "at least 8 tiles"),
        ([*int8, str(not_a_slide)], "openslide cannot open"),
    ]
    for extra, words in cases:
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists(), extra  # found out before anything is exported
