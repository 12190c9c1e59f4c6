"""``predict --tile-objects --heatmap-tiff``: the heatmap as QuPath tile objects and as a slide-aligned TIFF."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pandas as pd
import pytest

from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import SyntheticSlide

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _predict(ckpt: Path, slide: Path, output: Path, *extra: str) -> int:
    args = ["predict", "--ckpt", str(ckpt), str(slide), "--output", str(output), "--num-workers", "0"]
    return main([*args, "--device", "cpu", *extra])


def test_tile_objects_and_heatmap_tiff_match_the_heatmap_and_resume(
    trained_model: Any, small_slides: dict[str, SyntheticSlide], tmp_path: Path
) -> None:
    slide = small_slides["tumour"].path
    output = tmp_path / "out"
    assert _predict(trained_model.ckpt_path, slide, output, "--tile-objects", "--heatmap-tiff", "uint8") == 0
    folder = output / "small_tumour"
    heatmap = np.load(folder / "heatmap.npy")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["extra_files"] == ["heatmap.tif", "tiles.geojson.gz"]

    with gzip.open(folder / "tiles.geojson.gz", "rt") as handle:
        features = json.load(handle)["features"]
    assert len(features) == int(np.isfinite(heatmap).sum()) > 20  # one tile object per scored cell
    downsample = summary["heatmap_downsample"]
    scores = {}
    for feature in features:
        assert feature["properties"]["objectType"] == "tile"
        x0, y0 = np.min(feature["geometry"]["coordinates"][0], axis=0)
        scores[(round(y0 / downsample), round(x0 / downsample))] = feature["properties"]["measurements"][
            "anomaly_score"
        ]
    for (row, col), score in scores.items():
        assert score == pytest.approx(float(heatmap[row, col]), abs=1e-5)

    with openslide.OpenSlide(folder / "heatmap.tif") as overlay:
        assert float(overlay.properties["openslide.mpp-x"]) == pytest.approx(summary["mpp"] * 16.0)
        width, height = overlay.dimensions
        assert (width, height) == (summary["slide_size_lv0"][0] // 16, summary["slide_size_lv0"][1] // 16)
        row, col = max(scores, key=lambda key: scores[key])  # the hottest cell, read at its centre
        x, y = int((col + 0.5) * downsample / 16), int((row + 0.5) * downsample / 16)
        value = np.asarray(overlay.read_region((x, y), 0, (1, 1)))[0, 0, 0]
    assert value == round(float(np.clip(heatmap[row, col], 0, 1)) * 255)

    assert _predict(trained_model.ckpt_path, slide, output, "--tile-objects", "--heatmap-tiff", "uint8") == 0
    assert list(pd.read_csv(output / "summary.csv").status) == ["skipped (done before)"]
    (folder / "heatmap.tif").unlink()  # a missing extra file means: predict the slide again
    assert _predict(trained_model.ckpt_path, slide, output, "--tile-objects", "--heatmap-tiff", "uint8") == 0
    assert list(pd.read_csv(output / "summary.csv").status) == ["done"] and (folder / "heatmap.tif").is_file()
    assert _predict(trained_model.ckpt_path, slide, output) == 0  # without them: predicted again, extras removed
    assert not (folder / "heatmap.tif").exists() and not (folder / "tiles.geojson.gz").exists()
