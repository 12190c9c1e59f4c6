"""Exported models: a missing runtime, a missing or foreign file, each one line naming the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from anomalib_wsi.cli import main
from anomalib_wsi.inference.export import (
    METADATA_NAME,
    ExportError,
    export_model,
    is_exported_model,
    load_exported,
    require_runtime,
)


@pytest.mark.parametrize(
    ("fmt", "module", "extra"), [("openvino", "openvino", "openvino"), ("onnx", "onnxruntime", "onnx")]
)
def test_a_missing_runtime_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were absent
    with pytest.raises(ExportError, match=rf"pip install 'anomalib-wsi\[{extra}\]'"):
        require_runtime(fmt)
    suffix = ".xml" if fmt == "openvino" else ".onnx"
    with pytest.raises(ExportError, match=rf"anomalib-wsi\[{extra}\]"):
        load_exported(tmp_path / f"model{suffix}")


def test_export_without_its_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = ["export", "--ckpt", str(tmp_path / "m.ckpt"), "--format", "openvino", "--output", str(tmp_path / "e")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "anomalib-wsi[openvino]" in err and "Traceback" not in err


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="use one of openvino, onnx"):
        export_model(tmp_path / "m.ckpt", "tensorrt", tmp_path)


def test_which_paths_are_exports() -> None:
    assert is_exported_model("out/model.xml") and is_exported_model(Path("m.ONNX"))
    assert not is_exported_model("model.ckpt") and not is_exported_model(None)


def test_an_export_without_its_weights_or_metadata_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    model = tmp_path / "model.xml"
    model.write_text("<net/>")
    with pytest.raises(ExportError, match=r"model\.bin are missing"):
        load_exported(model)
    model.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ExportError, match="metadata is missing"):
        load_exported(model)
    (tmp_path / METADATA_NAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ExportError, match="not metadata of anomalib-wsi export"):
        load_exported(model)
    with pytest.raises(ExportError, match="exported model not found"):
        load_exported(tmp_path / "other.xml")


def test_predict_needs_exactly_one_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["predict", str(tmp_path / "a.svs"), "--output", str(tmp_path / "o")]) == 2
    assert "either --ckpt" in capsys.readouterr().err
    assert main(["predict", "--model", "m.ckpt", str(tmp_path / "a.svs"), "--output", str(tmp_path / "o")]) == 2
    assert "a .ckpt goes to --ckpt" in capsys.readouterr().err
