"""Resume: the fingerprint covers every setting that changes a slide's outputs, and finished folders read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from shapely.geometry import box

from anomalib_wsi.inference.resume import load_finished, run_fingerprint, slide_fingerprint
from anomalib_wsi.inference.settings import PredictionSettings
from anomalib_wsi.post_processing import Heatmap, Lesion
from anomalib_wsi.post_processing.outputs import write_slide_outputs
from anomalib_wsi.post_processing.post_processor import WSIPostProcessor
from anomalib_wsi.slide.tiling import TilingConfig

#: A value other than the default for every slide-level setting of the post-processor.
CHANGED = {
    "lesion_threshold": 0.7,
    "min_lesion_area_um2": 100.0,
    "simplify_tolerance_px_lv0": 4.0,
    "nms_radius_um": 50.0,
    "detection_min_score": 0.2,
    "max_detections": 10,
    "slide_score": "topk",
    "top_k": 3,
    "heatmap_cells_per_tile": 2,
    "tile_objects": True,
    "heatmap_tiff": "uint8",
    "heatmap_tiff_downsample": 32.0,
}
STATISTICS = {"image_threshold", "image_min", "image_max", "pixel_threshold", "pixel_min", "pixel_max"}


class _Module(torch.nn.Module):
    """What the fingerprint reads of a model: its weights and its post-processor."""

    def __init__(self, **post: Any) -> None:
        super().__init__()
        self.model = torch.nn.Linear(3, 1)
        torch.nn.init.constant_(self.model.weight, 0.5)
        torch.nn.init.constant_(self.model.bias, 0.0)
        self.post_processor = WSIPostProcessor(**post)


def test_every_slide_setting_of_the_post_processor_is_covered_here() -> None:
    """A new post-processor setting must be added to CHANGED, so that the next test checks it too."""
    assert set(WSIPostProcessor().slide_settings()) - STATISTICS == set(CHANGED)


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_changing_any_slide_setting_changes_the_fingerprint(key: str) -> None:
    settings = PredictionSettings()
    before = run_fingerprint(None, _Module(), settings)
    assert run_fingerprint(None, _Module(), settings) == before  # deterministic
    assert run_fingerprint(None, _Module(**{key: CHANGED[key]}), settings) != before


def test_tiling_and_precision_change_the_fingerprint() -> None:
    module = _Module()
    base = run_fingerprint(None, module, PredictionSettings())
    others = [
        PredictionSettings(tiling=TilingConfig(mpp=1.0, min_tissue=0.25)),
        PredictionSettings(tiling=TilingConfig(tile_size_px=128, min_tissue=0.25)),
        PredictionSettings(tiling=TilingConfig(stride_px=128, min_tissue=0.25)),
        PredictionSettings(tiling=TilingConfig(min_tissue=0.5)),
        PredictionSettings(slide_mpp=0.25),
        PredictionSettings(precision="bf16"),
    ]
    assert len({base, *(run_fingerprint(None, module, s) for s in others)}) == 7


def test_a_model_of_the_same_size_and_time_is_told_apart_by_its_content(tmp_path: Path) -> None:
    """Swapping the checkpoint for another of the same size and the same mtime must not reuse old outputs."""
    first, second = tmp_path / "a" / "model.ckpt", tmp_path / "b" / "model.ckpt"
    for path, byte in ((first, b"\x01"), (second, b"\x02")):
        path.parent.mkdir()
        path.write_bytes(byte * 4096)
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    module, settings = _Module(), PredictionSettings()
    fingerprint = run_fingerprint(first, module, settings)
    second.replace(first)  # same path, size and mtime; other bytes
    assert run_fingerprint(first, module, settings) != fingerprint


def test_models_without_checkpoint_are_fingerprinted_by_their_weights() -> None:
    one, two = _Module(), _Module()
    settings = PredictionSettings()
    assert run_fingerprint(None, one, settings) == run_fingerprint(None, two, settings)
    with torch.no_grad():
        two.model.bias.add_(1e-3)
    assert run_fingerprint(None, one, settings) != run_fingerprint(None, two, settings)


def _write_finished(slide_dir: Path, fingerprint: str) -> None:
    values = np.full((4, 4), np.nan, np.float32)
    values[1:3, 1:3] = [[0.9, 0.8], [0.7, 0.6]]
    heatmap = Heatmap(values, downsample=256.0, slide_id="s", slide_size_lv0=(1024, 1024))
    lesion = Lesion(polygon=box(256, 256, 768, 768), max_score=0.9, mean_score=0.75, area_um2=65536.0)
    summary = {
        "slide_id": "s",
        "slide_score": 0.9,
        "n_tiles": 4,
        "mpp": 0.5,
        "heatmap_downsample": 256.0,
        "slide_size_lv0": [1024, 1024],
        "timings": {"predict_s": 1.5},
        "fingerprint": fingerprint,
    }
    write_slide_outputs(
        slide_dir, heatmap, [lesion], np.array([[0.9, 384.0, 384.0]]), summary, np.zeros((8, 8, 3), np.uint8), 128.0
    )


def test_a_finished_slide_reads_back_as_it_was_written(tmp_path: Path) -> None:
    _write_finished(tmp_path / "s", "abc")
    done = load_finished(tmp_path / "s", "abc", tmp_path / "s.tif")
    assert done is not None and done.skipped
    assert (done.slide_score, done.n_tiles, done.mpp) == (0.9, 4, 0.5)
    assert np.nanmax(done.heatmap.values) == pytest.approx(0.9) and int(np.isnan(done.heatmap.values).sum()) == 12
    assert done.detections.tolist() == [[0.9, 384.0, 384.0]]
    assert [round(le.polygon.area) for le in done.lesions] == [512 * 512]
    assert done.lesions[0].max_score == pytest.approx(0.9)


def test_another_fingerprint_or_a_damaged_file_means_predict_again(tmp_path: Path) -> None:
    _write_finished(tmp_path / "s", "abc")
    assert load_finished(tmp_path / "s", "other", tmp_path / "s.tif") is None
    (tmp_path / "s" / "detections.csv").write_text("not,numbers,here\n")
    assert load_finished(tmp_path / "s", "abc", tmp_path / "s.tif") is None
    _write_finished(tmp_path / "t", "abc")
    (tmp_path / "t" / "heatmap.npy").unlink()
    assert load_finished(tmp_path / "t", "abc", tmp_path / "t.tif") is None
    assert load_finished(tmp_path / "missing", "abc", tmp_path / "m.tif") is None


def test_the_slide_fingerprint_follows_the_slide_file_and_its_manifest_mpp(tmp_path: Path) -> None:
    slide = tmp_path / "s.tif"
    slide.write_bytes(b"x" * 10)
    first = slide_fingerprint("run", slide, None)
    assert slide_fingerprint("run", slide, 0.25) != first
    assert slide_fingerprint("other run", slide, None) != first
    slide.write_bytes(b"y" * 11)
    assert slide_fingerprint("run", slide, None) != first
