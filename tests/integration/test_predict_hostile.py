"""``anomalib-wsi predict`` against hostile and careless input: no path escape, one line per mistake, no lost work."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import SyntheticSlide

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _predict(ckpt: Path, *args: str) -> int:
    return main(["predict", "--ckpt", str(ckpt), *args, "--num-workers", "0", "--device", "cpu"])


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    ("option", "value", "names"),
    [
        ("--batch-size", "0", "--batch-size"),
        ("--batch-size", "-4", "--batch-size"),
        ("--num-workers", "-1", "--num-workers"),
        ("--device", "banana", "--device"),
        ("--device", "cuda", "no CUDA GPU"),
        ("--threshold", "2", "0-1"),
        ("--min-tissue", "5", "--min-tissue"),
        ("--stride", "0", "--stride"),
        ("--slide-mpp", "-1", "--slide-mpp"),
        ("--precision", "64", "precision"),
        ("--stain-on", "gpu", "--stain-on"),
    ],
)
def test_a_bad_option_is_one_line_and_status_2(
    option: str, value: str, names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read: the options are checked first")
    slide = tmp_path / "a.tif"
    slide.write_bytes(b"x")
    args = ["predict", "--ckpt", str(ckpt), str(slide), "--output", str(tmp_path / "out"), option, value]
    if option != "--device":
        args += ["--device", "cpu"]
    assert main(args) == 2
    assert names in _one_line_error(capsys)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_output_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "results.txt"
    output.write_text("keep me")
    assert _predict(tmp_path / "model.ckpt", str(tmp_path), "--output", str(output)) == 2
    assert "not a folder" in _one_line_error(capsys)
    assert output.read_text() == "keep me"


def test_no_slide_name_writes_outside_the_output_folder(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``...tif`` has the stem ``..``: it must fail in one line, and nothing outside --output may change; the good
    slide beside it is predicted; a formula-like name reaches summary.csv as text."""
    work = tmp_path / "work"
    slides = work / "slides"
    slides.mkdir(parents=True)
    shutil.copy(small_slides["normal"].path, slides / "...tif")
    shutil.copy(small_slides["normal"].path, slides / "=cmd.tif")
    shutil.copy(small_slides["tumour"].path, slides / "good.tif")
    for name in ("summary.json", "heatmap.png", "detections.csv", "lesions.geojson", "heatmap.npy", "summary.csv"):
        (work / name).write_text(f"the user's own {name}")
    before = _tree(work)
    output = work / "out"
    assert _predict(trained_model.ckpt_path, str(slides), "--output", str(output)) == 1
    after = _tree(work)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == before
    summary = pd.read_csv(output / "summary.csv")
    assert sorted(summary.slide_id) == ["'=cmd", "good"]  # the formula is shown as text in a spreadsheet
    failures = pd.read_csv(output / "failures.csv")
    assert len(failures) == 1 and "cannot name a folder" in failures.error[0]
    assert (output / "good" / "summary.json").is_file() and (output / "=cmd" / "summary.json").is_file()


def test_a_file_in_place_of_a_slide_folder_fails_only_that_slide(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "small_normal").write_text("a file where the slide's folder goes")
    slides = [str(small_slides["normal"].path), str(small_slides["tumour"].path)]
    assert _predict(trained_model.ckpt_path, *slides, "--output", str(output)) == 1
    assert (output / "small_normal").read_text() == "a file where the slide's folder goes"
    assert list(pd.read_csv(output / "summary.csv").slide_id) == ["small_tumour"]
    failures = pd.read_csv(output / "failures.csv")
    assert list(failures.slide_id) == ["small_normal"] and "a file is in the place" in failures.error[0]


def test_a_folder_without_slides_is_its_own_failure_not_the_end_of_the_run(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    empty = tmp_path / "scan.svs"  # a folder named like a slide
    empty.mkdir()
    output = tmp_path / "out"
    assert _predict(trained_model.ckpt_path, str(empty), str(small_slides["tumour"].path), "--output", str(output)) == 1
    assert list(pd.read_csv(output / "summary.csv").slide_id) == ["small_tumour"]
    (failure,) = pd.read_csv(output / "failures.csv").itertuples()
    assert failure.stage == "finding" and "holds no slide file" in failure.error


def test_run_tables_that_cannot_be_written_keep_the_slides_and_say_so(
    trained_model: Any,
    small_slides: dict[str, SyntheticSlide],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """summary.csv cannot be written (a folder in its place, as a full disk would refuse it): the slide's files are
    kept, one line says what was not written, the exit status is 1, and the next run (tables writable) resumes."""
    output = tmp_path / "out"
    (output / "summary.csv").mkdir(parents=True)
    (output / "small_tumour").mkdir()
    (output / "small_tumour" / ".summary.json.x1y2.tmp").write_bytes(b"")  # what a kill -9 leaves
    assert _predict(trained_model.ckpt_path, str(small_slides["tumour"].path), "--output", str(output)) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert [r.message for r in caplog.records if "cannot write summary.csv" in r.message]
    assert (output / "small_tumour" / "summary.json").is_file()
    assert not list((output / "small_tumour").glob(".summary.json.*"))  # the leftover temporary is cleared
    (output / "summary.csv").rmdir()
    assert _predict(trained_model.ckpt_path, str(small_slides["tumour"].path), "--output", str(output)) == 0
    assert list(pd.read_csv(output / "summary.csv").status) == ["skipped (done before)"]


def test_an_unexpected_error_is_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import anomalib_wsi.cli.synth as synth

    def broken(**_: Any) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(synth, "run", broken)
    assert main(["synth", "--output", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ZeroDivisionError: a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "synth", "--output", "x"])


def test_thumbnails_wait_encoded_and_decode_pixel_for_pixel() -> None:
    from anomalib_wsi.inference.engine import decode_thumbnail, encode_thumbnail

    rng = np.random.default_rng(0)
    thumbnail = np.clip(rng.normal(200, 20, (300, 500, 3)), 0, 255).astype(np.uint8)
    thumbnail[50:150, 100:300] = (180, 60, 160)  # tissue-like block: what compresses well
    data = encode_thumbnail(thumbnail)
    assert np.array_equal(decode_thumbnail(data), thumbnail)
    assert len(data) < thumbnail.nbytes
