"""``anomalib-wsi evaluate`` end to end over a small prediction folder of real files, with hand-computed numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from anomalib_wsi.cli import main
from anomalib_wsi.cli.evaluate import evaluate_command
from anomalib_wsi.errors import EvaluationError, WSIError
from anomalib_wsi.evaluation.report import (
    find_ground_truth,
    ground_truth,
    ground_truth_mask,
    read_detections,
    read_mask_tiff,
)


def _asap_xml(path: Path, squares: list[tuple[str, float, float, float, float]]) -> None:
    """Camelyon16-layout ASAP XML of axis-aligned squares ``(group, x0, y0, x1, y1)``."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, (group, x0, y0, x1, y1) in enumerate(squares):
        lines.append(f'\t\t<Annotation Name="_{i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">')
        lines.append("\t\t\t<Coordinates>")
        for order, (x, y) in enumerate([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]):
            lines.append(f'\t\t\t\t<Coordinate Order="{order}" X="{x}" Y="{y}" />')
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for group in dict.fromkeys(g for g, *_ in squares):
        lines.append(f'\t\t<Group Name="{group}" PartOfGroup="None" Color="#F4FA58"><Attributes /></Group>')
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(lines) + "\n")


def _geojson(path: Path, x0: float, y0: float, x1: float, y1: float) -> None:
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))


def _prediction(
    root: Path,
    slide_id: str,
    score: float,
    detections: list[tuple[float, int, int]],
    slide_size_lv0: tuple[int, int] | None = None,
) -> None:
    folder = root / slide_id
    folder.mkdir(parents=True)
    summary: dict[str, object] = {"slide_id": slide_id, "slide_score": score}
    if slide_size_lv0 is not None:
        summary["slide_size_lv0"] = list(slide_size_lv0)  # [width, height], as anomalib-wsi predict writes it
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "detections.csv").write_text("".join(f"{c},{x},{y}\n" for c, x, y in detections))


@pytest.fixture
def cohort(tmp_path: Path) -> dict[str, Path]:
    """Seven labelled slides (test_049 without predictions), three kinds of ground truth, one slide file."""
    ann, pred, slides = tmp_path / "annotations", tmp_path / "predictions", tmp_path / "slides"
    for folder in (ann, pred, slides):
        folder.mkdir()
    # tumour_a: ASAP XML, a 1280 px (311 µm) lesion at level-5 px 9..47 (ASAP samples block corners strictly inside
    # the outline's box) and a 64 px ITC at 59; a 2048 px slide
    _asap_xml(ann / "tumour_a.xml", [("_0", 256, 256, 1536, 1536), ("_0", 1856, 1856, 1920, 1920)])
    tifffile.imwrite(
        slides / "tumour_a.tif",
        np.full((2048, 2048, 3), 230, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(1e4 / 0.243, 1e4 / 0.243),
        resolutionunit="CENTIMETER",
    )
    # tumour_b: QuPath GeoJSON, one lesion; no slide file: the size from the prediction's summary.json
    _geojson(ann / "tumour_b.geojson", 3000, 3000, 4600, 4600)
    # tumour_c: a mask TIFF (4096 px, tumour 255 at 1024..2560), read at downsample 32
    mask = np.zeros((4096, 4096), np.uint8)
    mask[1024:2560, 1024:2560] = 255
    tifffile.imwrite(ann / "tumour_c_mask.tif", mask, tile=(256, 256), compression="zlib")
    # predictions
    _prediction(pred, "tumour_a", 0.9, [(0.9, 900, 900), (0.5, 1000, 1000), (0.95, 1888, 1888), (0.3, 100, 1900)])
    _prediction(pred, "tumour_b", 0.6, [(0.4, 3500, 3500), (0.7, 10000, 10000)], slide_size_lv0=(8000, 6400))
    _prediction(pred, "tumour_c", 0.2, [])
    _prediction(pred, "tumour_d", 0.8, [(0.99, 10, 10)])  # no ground truth: AUC only
    _prediction(pred, "normal_a", 0.3, [(0.6, 50, 50), (0.2, 60, 60)])
    _prediction(pred, "normal_b", 0.1, [])
    _prediction(pred, "Test_114", 0.7, [(0.99, 5, 5)])  # excluded from the FROC by default
    _prediction(pred, "unlabelled", 0.5, [])
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "slide_id,label\ntumour_a,tumor\ntumour_b,tumor\ntumour_c,tumor\ntumour_d,tumor\n"
        "normal_a,normal\nnormal_b,normal\ntest_114,tumor\ntest_049,normal\n"
    )
    return {"annotations": ann, "predictions": pred, "slides": slides, "labels": labels, "root": tmp_path}


def test_evaluate_command_writes_the_hand_computed_report(cohort):
    out = cohort["root"] / "report"
    status = evaluate_command(
        cohort["predictions"], cohort["annotations"], cohort["labels"], out, slides=cohort["slides"], n_boot=200
    )
    assert status == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "per_slide.csv", "roc.png", "froc.png"}
    report = json.loads((out / "report.json").read_text())

    # AUC over 5 tumour (0.9, 0.6, 0.2, 0.8, 0.7) and 2 normal (0.3, 0.1) slides: 0.2 loses to 0.3, 9 of 10 pairs
    assert report["slide_auc"] == pytest.approx(0.9)
    low, high = report["slide_auc_ci"]
    assert low <= 0.9 <= high <= 1.0

    # FROC over tumour_a, tumour_b, tumour_c, normal_a, normal_b (5 slides) and 3 counted lesions (+1 ITC):
    # hits 0.9 (a), 0.4 (b), c missed; false positives 0.7 (b, outside the mask), 0.6, 0.3, 0.2.
    counts = report["counts"]
    assert counts["froc_slides"] == 5 and counts["lesions"] == 3 and counts["itc"] == 1
    assert counts["lesions_detected"] == 2 and counts["false_positives"] == 4
    assert counts["auc_slides"] == 7 and (counts["auc_tumour"], counts["auc_normal"]) == (5, 2)
    assert counts["excluded"] == ["test_049"]
    assert counts["excluded_from_froc"] == ["tumour_d", "test_114"]
    np.testing.assert_allclose(report["froc_curve"]["fps_per_slide"], [0.8, 0.6, 0.4, 0.4, 0.2, 0.0, 0.0])
    sens = report["froc_sensitivities"]
    assert list(sens) == ["0.25", "0.5", "1", "2", "4", "8"]
    np.testing.assert_allclose(list(sens.values()), [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert report["froc_score"] == pytest.approx(11 / 18)
    assert any("tumour_d" in w and "ground-truth" in w for w in report["warnings"])

    rows = {r["slide_id"]: r for r in csv.DictReader((out / "per_slide.csv").open())}
    assert len(rows) == 8
    a = rows["tumour_a"]
    assert (a["lesions"], a["itc"], a["lesions_detected"], a["false_positives"], a["itc_hits"]) == (
        "1",
        "1",
        "1",
        "1",
        "1",
    )
    assert a["ground_truth"] == "tumour_a.xml" and rows["tumour_c"]["ground_truth"] == "tumour_c_mask.tif"
    # where each mask's size came from, in report.json and per_slide.csv
    slides = {s["slide_id"]: s for s in report["slides"]}
    assert (slides["tumour_a"]["mask_size_source"], slides["tumour_a"]["mask_size_lv0"]) == ("slide", [2048, 2048])
    assert (slides["tumour_b"]["mask_size_source"], slides["tumour_b"]["mask_size_lv0"]) == (
        "summary.json",
        [8000, 6400],
    )
    assert rows["tumour_c"]["mask_size_source"] == "mask file" and rows["normal_a"]["mask_size_source"] == ""
    assert rows["test_049"]["in_auc"] == "False" and rows["test_114"]["in_froc"] == "False"
    md = (out / "report.md").read_text()
    assert "| FROC score (Camelyon16) | 0.611 |" in md and "| slide AUC | 0.900 |" in md


def test_keep_excluded_puts_test_114_into_the_froc_and_needs_test_049(cohort):
    with pytest.raises(EvaluationError, match="no predictions for 1 labelled slide"):
        evaluate_command(
            cohort["predictions"], cohort["annotations"], cohort["labels"], cohort["root"] / "o", keep_excluded=True
        )
    _prediction(cohort["predictions"], "test_049", 0.05, [])
    # test_114 is a tumour slide without ground truth here: it warns and stays out of the FROC
    evaluate_command(
        cohort["predictions"], cohort["annotations"], cohort["labels"], cohort["root"] / "o", keep_excluded=True
    )
    report = json.loads((cohort["root"] / "o" / "report.json").read_text())
    assert report["counts"]["auc_slides"] == 8 and report["counts"]["excluded"] == []
    assert any("test_114" in w for w in report["warnings"])


def test_cli_reports_a_labelled_slide_without_predictions(cohort, capsys):
    (cohort["predictions"] / "normal_b" / "summary.json").unlink()
    (cohort["predictions"] / "normal_b" / "detections.csv").unlink()
    argv = ["evaluate", "--predictions", str(cohort["predictions"]), "--annotations", str(cohort["annotations"])]
    argv += ["--labels", str(cohort["labels"]), "--output", str(cohort["root"] / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no predictions for 1 labelled slide(s): normal_b" in err and err.count("\n") == 1


def test_slide_size_comes_from_the_slide_file_then_summary_json_then_the_annotation_extent(cohort, tmp_path):
    xml = cohort["annotations"] / "tumour_a.xml"
    truth = ground_truth(xml, cohort["slides"])
    assert truth.mask.shape == (64, 64) and truth.size_source == "slide"  # 2048 / 32
    # a recorded slide size [width, height] = [4000, 3000] gives floor(3000 / 32) x floor(4000 / 32)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"slide_score": 0.5, "slide_size_lv0": [4000, 3000]}))
    truth = ground_truth(xml, summary=summary)
    assert truth.mask.shape == (93, 125) and truth.size_source == "summary.json"
    assert ground_truth(xml, cohort["slides"], summary=summary).size_source == "slide"  # the slide comes first
    # without either: extent 1920 + margin 2 * 32 * (ceil(4.82) + 1) = 384 -> floor(2304 / 32) = 72
    truth = ground_truth(xml)
    assert truth.mask.shape == (72, 72) and truth.size_source == "annotation extent"
    # the 256..1536 px square: corners 32 c with 256 < 32 c < 1536, c = 9..47; the 1856..1920 ITC: c = 59
    assert truth.mask[9:48, 9:48].all() and truth.mask.sum() == 39 * 39 + 1
    assert np.array_equal(ground_truth_mask(xml), truth.mask)


def test_mask_tiff_with_value_1_and_colour_channels(tmp_path):
    mask = np.zeros((640, 960, 3), np.uint8)
    mask[64:320, 320:640, 0] = 1
    tifffile.imwrite(tmp_path / "m.tif", mask, photometric="rgb")
    warnings: list[str] = []
    small = read_mask_tiff(tmp_path / "m.tif", downsample=32, warnings=warnings)
    assert small.shape == (20, 30)
    assert small.sum() == 8 * 10 and small[2:10, 10:20].all()
    assert len(warnings) == 1 and "maximum 1" in warnings[0]  # the official scorer would see no tumour


def test_ground_truth_lookup_is_case_insensitive_and_prefers_vector_files(tmp_path):
    (tmp_path / "Test_001.xml").write_text("<ASAP_Annotations/>")
    (tmp_path / "test_001_Mask.tif").write_bytes(b"")
    (tmp_path / "test_002_Mask.tif").write_bytes(b"")
    found = [find_ground_truth(tmp_path, "test_001"), find_ground_truth(tmp_path, "Test_002")]
    assert [p.name if p is not None else None for p in found] == ["Test_001.xml", "test_002_Mask.tif"]
    assert find_ground_truth(tmp_path, "test_003") is None


def test_bad_detection_rows_name_the_file_and_line(tmp_path):
    path = tmp_path / "detections.csv"
    path.write_text("0.5,10,20\n\n0.4,abc,3\n")
    with pytest.raises(WSIError, match=r"detections.csv, line 3"):
        read_detections(path)
    path.write_text("")
    assert read_detections(path).shape == (0, 3)


def test_mask_tiff_pyramid_level_at_downsample_32_is_read_as_is(tmp_path):
    full = np.zeros((2048, 1024), np.uint8)
    full[512:1024, 256:768] = 255
    level5 = np.zeros((64, 32), np.uint8)
    level5[3, 4] = 255  # differs from level 0 on purpose: proves the level-5 page is the one read
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as writer:
        writer.write(full, tile=(256, 256), compression="zlib")
        for level in (full[::4, ::4], full[::16, ::16], level5, full[::64, ::64]):
            writer.write(level, subfiletype=1, compression="zlib")
    mask = read_mask_tiff(tmp_path / "pyramid.tif", downsample=32)
    assert mask.shape == (64, 32)
    assert mask.sum() == 1 and mask[3, 4]
    # at downsample 8 the 1/4 level (downsample 4) is resized: the 512 x 512 px square becomes 64 x 64
    assert read_mask_tiff(tmp_path / "pyramid.tif", downsample=8).sum() == 64 * 64


# -- careless and hostile input: one line each, exit status 2 -----------------------------------------------------


def _argv(cohort: dict[str, Path], *extra: str, output: Path | None = None) -> list[str]:
    argv = ["evaluate", "--predictions", str(cohort["predictions"]), "--annotations", str(cohort["annotations"])]
    argv += ["--labels", str(cohort["labels"]), "--output", str(output or cohort["root"] / "out"), *extra]
    return argv


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--n-boot", "0", "--n-boot 0: the bootstrap needs 1 to 100,000 resamples"),
        ("--n-boot", "-5", "--n-boot -5: the bootstrap needs 1 to 100,000 resamples"),
        ("--n-boot", "100000000", "--n-boot 100000000: the bootstrap needs 1 to 100,000 resamples"),
        ("--mpp", "0", "--mpp 0.0: the level-0 spacing must be a positive number"),
        ("--mpp", "-1", "--mpp -1.0: the level-0 spacing must be a positive number"),
    ],
)
def test_out_of_range_options_are_refused_in_one_line(cohort, capsys, option, value, expected):
    assert main(_argv(cohort, option, value)) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (cohort["root"] / "out").exists()  # refused before anything is computed or written


@pytest.mark.parametrize(("n_boot", "mpp"), [(1000, float("nan")), (1000, float("inf")), (2.5, 0.243), (0, 0.243)])
def test_out_of_range_options_are_refused_from_python_too(cohort, n_boot, mpp):
    with pytest.raises(EvaluationError, match=r"^--(n-boot|mpp) \S+: ") as info:
        evaluate_command(
            cohort["predictions"], cohort["annotations"], cohort["labels"], cohort["root"] / "o", n_boot=n_boot, mpp=mpp
        )
    assert "\n" not in str(info.value) and not (cohort["root"] / "o").exists()


def test_output_that_is_a_file_is_refused_in_one_line(cohort, capsys):
    existing = cohort["root"] / "report.txt"
    existing.write_text("keep me")
    assert main(_argv(cohort, output=existing)) == 2
    err = capsys.readouterr().err
    assert f"--output {existing}: is a file, not a folder" in err and err.count("\n") == 1
    assert existing.read_text() == "keep me"
    assert main(_argv(cohort, output=existing / "report")) == 2
    assert "lies under the file" in capsys.readouterr().err


def test_binary_labels_and_detections_files_are_refused_in_one_line(cohort, capsys):
    cohort["labels"].write_bytes(bytes(range(256)) * 4)
    assert main(_argv(cohort)) == 2
    err = capsys.readouterr().err
    assert "labels.csv: this labels file is binary, not UTF-8 text" in err and err.count("\n") == 1
    with pytest.raises(WSIError, match="detections file is binary"):
        (cohort["root"] / "d.csv").write_bytes(b"0.5,1,2\n\x00\xff")
        read_detections(cohort["root"] / "d.csv")


def test_mask_size_from_a_far_vertex_is_refused_in_one_line(cohort, capsys):
    # tumour_b has no slide: without a recorded size, one vertex at 3e6 px would ask for an 8 GiB mask
    (cohort["predictions"] / "tumour_b" / "summary.json").write_text(json.dumps({"slide_score": 0.6}))
    _geojson(cohort["annotations"] / "tumour_b.geojson", 3000, 3000, 3_000_000, 3_000_000)
    assert main(_argv(cohort, "--slides", str(cohort["slides"]))) == 2
    err = capsys.readouterr().err
    assert "tumour_b.geojson: a 3000384 x 3000384 px slide (size from the annotation extent) needs a " in err
    assert "8,791,312,644 pixel evaluation mask, more than the 100,000,000 allowed" in err and "--slides DIR" in err
    error_lines = [line for line in err.splitlines() if "error:" in line]  # the rest is the progress bar
    assert len(error_lines) == 1 and "tumour_b.geojson" in error_lines[0] and "Traceback" not in err
