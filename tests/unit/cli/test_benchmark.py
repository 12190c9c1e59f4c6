"""``anomalib-wsi benchmark``: each benchmark's options are refused in one line for the other, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_wsi.cli import main


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["camelyon16", "--root", "c16", "--models", "Padim"], "--models applies to `benchmark models` only"),
        (["camelyon16", "--root", "c16", "--epochs", "3"], "--epochs applies to `benchmark models` only"),
        (["models", "--dry-run"], "--dry-run applies to `benchmark camelyon16` only"),
        (["models", "--paper-patches", "coords"], "--paper-patches applies to `benchmark camelyon16` only"),
        (["camelyon16"], "benchmark camelyon16 needs --root"),
    ],
)
def test_an_option_of_the_other_benchmark_is_one_line_and_exit_2(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["benchmark", *args, "--output", str(tmp_path / "out")]) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_models_refuses_an_unknown_model_and_a_missing_root_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["benchmark", "models", "--models", "Padim,TumourNet", "--output", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "unknown model 'TumourNet'" in line and "Padim" in line and "Patchcore" in line
    assert main(["benchmark", "models", "--root", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert "--root" in _one_error_line(capsys)
    for option, value in (("--epochs", "0"), ("--tile-size", "50"), ("--tiles-per-slide", "0"), ("--mpp", "-1")):
        assert main(["benchmark", "models", option, value, "--output", str(out)]) == 2
        assert f"{option} {value}" in _one_error_line(capsys)
    assert not out.exists()
