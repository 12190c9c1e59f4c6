"""Slide prediction end to end: a tiny trained RDFocal predicts synthetic slides through ``WSIEngine.predict``.

What a user relies on: lesion polygons where the tumour is, tumour slides scored above normal ones, QuPath
GeoJSON and Camelyon16 detections that other tools read, every slide's outputs or a one-line failure, and a
run that resumes where it stopped without redoing a slide.

Numbers measured with the session's model (2 epochs; seed 0; see ``conftest.py``) on the 4 slides it never
trained on: true tumour area covered by lesions 0.90 and 0.98, lesion area inside true tumour 0.82 and 0.71
(128 px heatmap cells on lesions about 600 px wide), lesion area inside tissue 0.99 and 1.00, tumour slide scores
0.91 and 0.94, normal 0.0 and 0.0; no lesion on the normal slides. The same settings trained on a GPU gave
coverage 0.90 and 0.99 and tumour scores 0.80 and 0.83. The bounds below leave a margin for such differences.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from shapely.geometry import box

from anomalib_wsi.annotations import read_annotations
from anomalib_wsi.cli.predict import predict_command
from anomalib_wsi.data.synthetic import SyntheticSlide
from anomalib_wsi.inference import SlidePrediction, WSIEngine
from anomalib_wsi.models.rd_focal import RDFocal

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: Bounds of the lesion checks (measured values in the module docstring).
MIN_TUMOUR_COVERED = 0.7
MIN_LESION_IN_TUMOUR = 0.5
MIN_LESION_IN_TISSUE = 0.9

OUTPUT_FILES = ("heatmap.npy", "heatmap.png", "lesions.geojson", "detections.csv", "summary.json")


@dataclass
class HeldOutRun:
    """The prediction of the slides the model never trained on."""

    results: list[SlidePrediction]
    output_dir: Path
    slide_ids: list[str]

    def result(self, slide_id: str) -> SlidePrediction:
        return next(r for r in self.results if r.slide_id == slide_id)


def _engine(**kwargs: Any) -> WSIEngine:
    return WSIEngine(**{"num_workers": 0, "device": "cpu", "progress": False, **kwargs})


def _union(geometries: list[Any]) -> Any:
    return shapely.union_all(geometries) if geometries else shapely.Polygon()


@pytest.fixture(scope="module")
def held_out_run(trained_model: Any, tmp_path_factory: pytest.TempPathFactory) -> HeldOutRun:
    """Predict the 4 held-out slides (2 tumour, 2 normal) with the Python API of DESIGN.md."""
    slide_ids = trained_model.held_out_ids
    slides = [trained_model.slide(s).path for s in slide_ids]
    output_dir = tmp_path_factory.mktemp("held_out_predictions")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = _engine().predict(
            model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output_dir
        )
    finally:
        torch.set_num_threads(threads)
    return HeldOutRun(results=results, output_dir=output_dir, slide_ids=slide_ids)


# -- what the model finds ---------------------------------------------------------------------------------------
def test_held_out_split_has_tumour_and_normal_slides(trained_model: Any) -> None:
    held_out = trained_model.held_out_ids
    assert len(held_out) == 4
    assert sum(trained_model.is_tumour(s) for s in held_out) == 2


def test_python_api_returns_one_prediction_per_slide(held_out_run: HeldOutRun, trained_model: Any) -> None:
    results = held_out_run.results
    assert [r.slide_id for r in results] == held_out_run.slide_ids  # the order the slides were given in
    for result in results:
        assert not result.skipped
        assert 0.0 <= result.slide_score <= 1.0
        assert result.heatmap.values.shape == (24, 24)  # 3072 px / 128 px tiles (64 px at 1 µm/px, slide 0.5)
        assert result.heatmap.downsample == 128.0
        assert result.geojson_path == held_out_run.output_dir / result.slide_id / "lesions.geojson"
        assert result.geojson_path.is_file()
        assert result.mpp == 0.5
        assert 80 <= result.n_tiles <= 24 * 24
        assert all(lesion.area_um2 > 0 for lesion in result.lesions)


def test_lesions_cover_the_true_tumour(held_out_run: HeldOutRun, trained_model: Any) -> None:
    """Per held-out tumour slide: covered = area(lesions ∩ tumour) / area(tumour), tumour from the ASAP XML."""
    tumour_ids = [s for s in held_out_run.slide_ids if trained_model.is_tumour(s)]
    assert len(tumour_ids) == 2
    for slide_id in tumour_ids:
        slide: SyntheticSlide = trained_model.slide(slide_id)
        truth = read_annotations(trained_model.cohort.annotations[slide_id]).region
        assert truth.area == pytest.approx(slide.tumour_region.area, rel=0.01)  # the XML is what was rendered
        lesions = _union([lesion.polygon for lesion in held_out_run.result(slide_id).lesions])
        covered = lesions.intersection(truth).area / truth.area
        in_tumour = lesions.intersection(truth).area / lesions.area
        in_tissue = lesions.intersection(slide.tissue_region).area / lesions.area
        assert covered >= MIN_TUMOUR_COVERED, f"{slide_id}: lesions cover {covered:.2f} of the tumour"
        assert in_tumour >= MIN_LESION_IN_TUMOUR, f"{slide_id}: {in_tumour:.2f} of the lesion area is tumour"
        assert in_tissue >= MIN_LESION_IN_TISSUE, f"{slide_id}: {in_tissue:.2f} of the lesion area is tissue"


def test_normal_slides_have_no_lesion(held_out_run: HeldOutRun, trained_model: Any) -> None:
    normal_ids = [s for s in held_out_run.slide_ids if not trained_model.is_tumour(s)]
    assert len(normal_ids) == 2
    for slide_id in normal_ids:
        assert held_out_run.result(slide_id).lesions == []


def test_tumour_slides_score_above_normal_slides(held_out_run: HeldOutRun, trained_model: Any) -> None:
    """Every held-out tumour slide scores above every held-out normal one, on either side of the threshold 0.5."""
    tumour = [r.slide_score for r in held_out_run.results if trained_model.is_tumour(r.slide_id)]
    normal = [r.slide_score for r in held_out_run.results if not trained_model.is_tumour(r.slide_id)]
    assert min(tumour) > max(normal)
    assert min(tumour) > 0.5 > max(normal)


def test_best_detection_lies_in_the_tumour(held_out_run: HeldOutRun, trained_model: Any) -> None:
    """The most confident Camelyon16 detection of a tumour slide is within one tile (128 px) of true tumour."""
    for slide_id in held_out_run.slide_ids:
        if not trained_model.is_tumour(slide_id):
            continue
        detections = held_out_run.result(slide_id).detections
        assert len(detections) >= 1
        confidence, x, y = detections[0]
        assert confidence == detections[:, 0].max()
        truth = read_annotations(trained_model.cohort.annotations[slide_id]).region
        assert truth.distance(shapely.Point(x, y)) <= 128


# -- the files --------------------------------------------------------------------------------------------------
def test_every_slide_has_its_files(held_out_run: HeldOutRun) -> None:
    for slide_id in held_out_run.slide_ids:
        for name in OUTPUT_FILES:
            assert (held_out_run.output_dir / slide_id / name).is_file(), f"{slide_id}/{name} missing"


def test_geojson_reads_back_with_qupath_fields(held_out_run: HeldOutRun) -> None:
    n_polygons = 0
    for result in held_out_run.results:
        width, height = result.heatmap.slide_size_lv0
        data = json.loads(result.geojson_path.read_text())
        assert data["type"] == "FeatureCollection"
        assert len(data["features"]) == len(result.lesions)
        for feature, lesion in zip(data["features"], result.lesions, strict=True):
            assert "objectType" not in feature  # QuPath reads it from properties only
            props = feature["properties"]
            assert props["objectType"] == "annotation"
            assert props["classification"]["name"] == "Tumor"
            color = props["classification"]["color"]
            assert isinstance(color, list) and len(color) == 3 and all(0 <= c <= 255 for c in color)
            measurements = props["measurements"]
            assert measurements["max_score"] == pytest.approx(lesion.max_score, abs=1e-5)
            assert measurements["mean_score"] == pytest.approx(lesion.mean_score, abs=1e-5)
            assert 0.5 <= measurements["mean_score"] <= measurements["max_score"] <= 1.0  # normalised, 0.5 = threshold
            assert measurements["area_um2"] == pytest.approx(lesion.polygon.area * 0.5**2, rel=1e-6)
        annotations = read_annotations(result.geojson_path, slide_size=(width, height))
        assert annotations.warnings == []  # nothing repaired, skipped or clipped to the slide
        assert all(p.kind == "tumour" for p in annotations.polygons)
        region = annotations.region
        assert region.is_valid
        assert region.area == pytest.approx(sum(lesion.polygon.area for lesion in result.lesions), rel=1e-6)
        if not region.is_empty:
            assert box(0, 0, width, height).contains(region)
        n_polygons += len(result.lesions)
    assert n_polygons >= 2  # the two tumour slides have lesions


def _read_detections(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_detections_csv_is_camelyon16_format(held_out_run: HeldOutRun) -> None:
    """No header, ``confidence,x,y`` with integer level-0 x, y inside the slide, best first."""
    for result in held_out_run.results:
        width, height = result.heatmap.slide_size_lv0
        rows = _read_detections(result.paths["detections"])
        assert len(rows) == len(result.detections)
        confidences = []
        for row in rows:
            assert len(row) == 3
            confidence, x_text, y_text = row
            confidences.append(float(confidence))  # a header would not parse
            assert x_text.isdigit() and y_text.isdigit(), row
            assert 0 <= int(x_text) < width and 0 <= int(y_text) < height
        assert confidences == sorted(confidences, reverse=True)


def test_heatmap_npy_and_summary_agree_with_the_slide(held_out_run: HeldOutRun) -> None:
    for result in held_out_run.results:
        folder = held_out_run.output_dir / result.slide_id
        values = np.load(folder / "heatmap.npy")
        summary = json.loads((folder / "summary.json").read_text())
        width, height = summary["slide_size_lv0"]
        assert (width, height) == (3072, 3072)
        downsample = summary["heatmap_downsample"]
        assert downsample == 128.0
        assert values.dtype == np.float32
        assert values.shape == (math.ceil(height / downsample), math.ceil(width / downsample)) == (24, 24)
        assert list(values.shape) == summary["heatmap_shape"]
        np.testing.assert_array_equal(values, result.heatmap.values)
        assert int(np.isfinite(values).sum()) >= result.n_tiles  # every scored tile fills a cell
        assert summary["slide_id"] == result.slide_id
        assert summary["slide_score"] == pytest.approx(result.slide_score)
        assert summary["n_tiles"] == result.n_tiles
        assert summary["mpp"] == 0.5 and summary["tile_mpp"] == 1.0 and summary["tile_size_px"] == 64
        assert Path(summary["checkpoint"]).name.endswith(".ckpt")
        assert summary["settings"]["lesion_threshold"] == 0.5
        assert set(summary["timings"]) >= {"tiling_s", "predict_s", "post_s"}


def test_summary_csv_lists_every_slide(held_out_run: HeldOutRun) -> None:
    table = pd.read_csv(held_out_run.output_dir / "summary.csv")
    assert sorted(table.slide_id) == sorted(held_out_run.slide_ids)
    scores = dict(zip(table.slide_id, table.slide_score, strict=True))
    for result in held_out_run.results:
        assert scores[result.slide_id] == pytest.approx(result.slide_score)
    assert set(table.status) == {"done"}
    assert pd.read_csv(held_out_run.output_dir / "failures.csv").empty


# -- slides without tissue, broken slides, workers ---------------------------------------------------------------
def test_slide_without_tissue_gets_empty_outputs(trained_model: Any, blank_slide: Path, tmp_path: Path) -> None:
    results = _engine().predict(
        model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[blank_slide], output_dir=tmp_path / "out"
    )
    assert len(results) == 1
    result = results[0]
    assert result.n_tiles == 0
    assert result.slide_score == 0.0
    assert result.lesions == []
    folder = tmp_path / "out" / "blank"
    assert (folder / "detections.csv").read_text() == ""  # written, and empty
    assert json.loads((folder / "lesions.geojson").read_text())["features"] == []
    values = np.load(folder / "heatmap.npy")
    assert values.shape == (8, 8) and np.isnan(values).all()  # 1024 px / 128 px, nothing scored
    assert (folder / "heatmap.png").stat().st_size > 0


def test_broken_slides_are_recorded_and_the_others_complete(
    trained_model: Any,
    small_slides: dict[str, SyntheticSlide],
    truncated_slide: Path,
    damaged_slide: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A truncated file fails at opening, a damaged pyramid level while its tiles are read; the rest is done."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for slide in small_slides.values():
        shutil.copy(slide.path, folder / slide.path.name)
    shutil.copy(truncated_slide, folder / "truncated.tif")
    shutil.copy(damaged_slide, folder / "damaged.tif")
    output = tmp_path / "out"
    status = predict_command(
        slides=[str(folder)], ckpt=str(trained_model.ckpt_path), output=str(output), num_workers=0, device="cpu"
    )
    assert status == 1
    failures = pd.read_csv(output / "failures.csv")
    assert sorted(failures.slide_id) == ["damaged", "truncated"]
    by_id = failures.set_index("slide_id")
    assert by_id.loc["truncated", "stage"] == "tiling"
    assert by_id.loc["damaged", "stage"] == "reading"  # failed inside the DataLoader, after tiling
    for slide_id, row in by_id.iterrows():
        assert "\n" not in row.error
        assert str(folder / f"{slide_id}.tif") in row.error
        assert "openslide cannot open" in row.error or "cannot read pixels" in row.error
        assert not (output / str(slide_id) / "summary.json").exists()
    summary = pd.read_csv(output / "summary.csv")
    assert sorted(summary.slide_id) == ["small_normal", "small_tumour"]
    for slide_id in summary.slide_id:
        for name in OUTPUT_FILES:
            assert (output / slide_id / name).is_file()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_two_workers_give_the_same_outputs_and_report_a_worker_error(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], damaged_slide: Path, tmp_path: Path
) -> None:
    """Tiles read by two DataLoader workers (each with its own slide handles) score as in the main process."""
    slides = [small_slides["tumour"].path, damaged_slide, small_slides["normal"].path]
    runs = {}
    for workers in (0, 2):
        engine = _engine(num_workers=workers, batch_size=16)
        results = engine.predict(
            model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=tmp_path / f"w{workers}"
        )
        assert [r.slide_id for r in results] == ["small_tumour", "small_normal"]
        assert [(f.slide_id, f.stage) for f in results.failures] == [("damaged", "reading")]
        assert "cannot read pixels" in results.failures[0].error
        runs[workers] = results
    for one, two in zip(runs[0], runs[2], strict=True):
        assert one.n_tiles == two.n_tiles > 20
        np.testing.assert_allclose(one.heatmap.values, two.heatmap.values, rtol=1e-5, atol=1e-6)
        assert one.slide_score == pytest.approx(two.slide_score, abs=1e-5)
        assert len(one.lesions) == len(two.lesions)


def test_direct_tiff_decoding_gives_openslides_heatmaps_exactly(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same slides predicted with tiles decoded from the TIFF directly and with openslide only
    (ANOMALIB_WSI_DIRECT_TIFF=0): identical heatmaps, scores and lesions, bit for bit."""
    slides = [small_slides["tumour"].path, small_slides["normal"].path]
    runs = {}
    for direct in ("1", "0"):
        monkeypatch.setenv("ANOMALIB_WSI_DIRECT_TIFF", direct)
        runs[direct] = _engine(num_workers=0, batch_size=16).predict(
            model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=tmp_path / f"direct{direct}"
        )
    for fast, plain in zip(runs["1"], runs["0"], strict=True):
        assert fast.n_tiles == plain.n_tiles > 20
        assert np.array_equal(fast.heatmap.values, plain.heatmap.values, equal_nan=True)
        assert fast.slide_score == plain.slide_score
        assert [le.polygon.wkt for le in fast.lesions] == [le.polygon.wkt for le in plain.lesions]


# -- resume ----------------------------------------------------------------------------------------------------
def _without_ids(geojson: Path) -> dict[str, Any]:
    """The GeoJSON without its feature ids (random UUIDs, new at every write)."""
    data = json.loads(geojson.read_text())
    for feature in data["features"]:
        feature.pop("id", None)
    return data


def _mtimes(output: Path, slide_ids: list[str]) -> dict[str, int]:
    return {s: (output / s / "summary.json").stat().st_mtime_ns for s in slide_ids}


def test_interrupted_run_resumes_without_redoing_a_slide(
    trained_model: Any,
    small_slides: dict[str, SyntheticSlide],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while the second slide's outputs are written; the next run does only that slide, with the same
    result as a run that was never interrupted."""
    slides = [small_slides["normal"].path, small_slides["tumour"].path]
    ids = ["small_normal", "small_tumour"]
    reference = _engine().predict(
        model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=tmp_path / "reference"
    )
    output = tmp_path / "resumed"
    original = WSIEngine._write
    calls: list[str] = []

    def interrupted_after_one(self: WSIEngine, module: Any, job: Any, *args: Any) -> SlidePrediction:
        calls.append(job.slide_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, module, job, *args)

    with monkeypatch.context() as patch:
        patch.setattr(WSIEngine, "_write", interrupted_after_one)
        with pytest.raises(KeyboardInterrupt):
            _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output)
    assert calls == ids
    assert (output / "small_normal" / "summary.json").is_file()
    assert not (output / "small_tumour" / "summary.json").exists()
    first_done = _mtimes(output, ["small_normal"])

    written: list[str] = []

    def recording(self: WSIEngine, module: Any, job: Any, *args: Any) -> SlidePrediction:
        written.append(job.slide_id)
        return original(self, module, job, *args)

    monkeypatch.setattr(WSIEngine, "_write", recording)
    resumed = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output)
    assert written == ["small_tumour"]  # the finished slide is not predicted again
    assert [(r.slide_id, r.skipped) for r in resumed] == [("small_normal", True), ("small_tumour", False)]
    assert _mtimes(output, ["small_normal"]) == first_done

    for ref, res in zip(reference, resumed, strict=True):
        np.testing.assert_array_equal(
            np.load(tmp_path / "reference" / ref.slide_id / "heatmap.npy"),
            np.load(output / res.slide_id / "heatmap.npy"),
        )
        assert _without_ids(res.geojson_path) == _without_ids(ref.geojson_path)
        assert (output / res.slide_id / "detections.csv").read_text() == ref.paths["detections"].read_text()
        assert res.slide_score == pytest.approx(ref.slide_score, abs=1e-6)
        assert len(res.lesions) == len(ref.lesions)
        assert res.detections.shape == ref.detections.shape
    assert list(pd.read_csv(output / "summary.csv").status) == ["skipped (done before)", "done"]

    again = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output)
    assert written == ["small_tumour"] and all(r.skipped for r in again)
    assert _mtimes(output, ["small_normal"]) == first_done


def test_a_slide_whose_summary_is_gone_or_edited_is_predicted_again(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    slides = [small_slides["normal"].path, small_slides["tumour"].path]
    output = tmp_path / "out"
    first = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output)
    before = _mtimes(output, ["small_normal"])
    (output / "small_tumour" / "summary.json").write_text('{"fingerprint": "0"}')
    second = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output)
    assert [(r.slide_id, r.skipped) for r in second] == [("small_normal", True), ("small_tumour", False)]
    assert _mtimes(output, ["small_normal"]) == before
    np.testing.assert_array_equal(second[1].heatmap.values, first[1].heatmap.values)
    (output / "small_normal" / "summary.json").unlink()
    third = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=output)
    assert [(r.slide_id, r.skipped) for r in third] == [("small_normal", False), ("small_tumour", True)]


def test_a_changed_stride_recomputes_the_slide(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    slide = small_slides["tumour"].path
    output = tmp_path / "out"
    (first,) = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output)
    (overlapping,) = _engine().predict(
        model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output, stride_px=32
    )
    assert not overlapping.skipped
    assert overlapping.heatmap.downsample == 64.0 and overlapping.heatmap.values.shape == (24, 24)
    assert first.heatmap.values.shape == (12, 12)
    assert overlapping.n_tiles > 3 * first.n_tiles  # half the stride: about four times the tiles
    summary = json.loads((output / "small_tumour" / "summary.json").read_text())
    assert summary["stride_px"] == 32 and summary["heatmap_downsample"] == 64.0
    np.testing.assert_array_equal(np.load(output / "small_tumour" / "heatmap.npy"), overlapping.heatmap.values)
    (again,) = _engine().predict(
        model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output, stride_px=32
    )
    assert again.skipped


def test_a_replaced_slide_is_predicted_again_and_leaves_no_stale_outputs(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], truncated_slide: Path, tmp_path: Path
) -> None:
    """Same name, same settings, another file: the old outputs are neither reused nor left behind on failure."""
    slide = tmp_path / "slide.tif"
    shutil.copy(small_slides["tumour"].path, slide)
    output = tmp_path / "out"
    (first,) = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output)
    assert first.lesions
    shutil.copy(small_slides["normal"].path, slide)  # another scan under the same name
    (second,) = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output)
    assert not second.skipped
    assert second.slide_score < 0.5 < first.slide_score
    shutil.copy(truncated_slide, slide)  # and now a broken file under that name
    engine = _engine()
    run = engine.predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output)
    assert run == []
    assert [f.stage for f in run.failures] == ["tiling"]
    for name in OUTPUT_FILES:
        assert not (output / "slide" / name).exists(), f"stale {name} of the earlier slide left behind"
    assert pd.read_csv(output / "summary.csv").empty


def test_damaged_outputs_of_an_earlier_run_are_computed_again(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    slide = small_slides["tumour"].path
    output = tmp_path / "out"
    (first,) = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output)
    heatmap = output / "small_tumour" / "heatmap.npy"
    heatmap.write_bytes(heatmap.read_bytes()[:40])  # a disk that filled up after summary.json was written
    (again,) = _engine().predict(model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=[slide], output_dir=output)
    assert not again.skipped
    np.testing.assert_array_equal(np.load(heatmap), first.heatmap.values)


def test_two_slides_with_the_same_name_do_not_overwrite_each_other(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    for folder, slide in (("a", small_slides["tumour"]), ("b", small_slides["normal"])):
        (tmp_path / folder).mkdir()
        shutil.copy(slide.path, tmp_path / folder / "case.tif")
    engine = _engine()
    results = engine.predict(
        model=RDFocal,
        ckpt_path=trained_model.ckpt_path,
        slides=[tmp_path / "a", tmp_path / "b"],
        output_dir=tmp_path / "out",
    )
    assert [r.slide_path for r in results] == [tmp_path / "a" / "case.tif"]
    assert results[0].slide_score > 0.5  # the tumour slide's outputs, not overwritten by the normal one
    (failure,) = results.failures
    assert failure.slide_path == tmp_path / "b" / "case.tif"
    assert "same name" in failure.error and str(tmp_path / "a" / "case.tif") in failure.error
    assert json.loads((tmp_path / "out" / "case" / "summary.json").read_text())["slide_path"].startswith(
        str(tmp_path / "a")
    )
