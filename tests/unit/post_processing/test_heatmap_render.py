"""Tests of anomalib_wsi/post_processing/render.py: the heatmap.png picture."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anomalib_wsi.post_processing.lesions import extract_lesions
from anomalib_wsi.post_processing.render import render_heatmap_png
from anomalib_wsi.post_processing.stitch import Heatmap

GREEN = (30, 200, 60)


def _square_slide() -> tuple[Heatmap, np.ndarray]:
    values = np.full((16, 16), np.nan, dtype=np.float32)
    values[:, 8:] = 1.0  # right half scored (red), left half unscored (NaN)
    heatmap = Heatmap(values, downsample=256.0, slide_id="tumor_007", slide_size_lv0=(4096, 4096))
    thumbnail = np.empty((256, 256, 3), dtype=np.uint8)
    thumbnail[:] = GREEN
    return heatmap, thumbnail


def test_png_is_1000_px_wide_and_unscored_cells_show_the_slide(tmp_path) -> None:
    heatmap, thumbnail = _square_slide()
    lesions = extract_lesions(heatmap, threshold=0.5, mpp=0.5)
    path = render_heatmap_png(tmp_path / "out" / "heatmap.png", heatmap, thumbnail, 16.0, lesions=lesions)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] == 1000
    assert 800 <= image.shape[0] <= 1100  # square slide: about as tall as the image area is wide
    green = np.all(image == GREEN, axis=-1)
    assert green.sum() > 100_000  # the NaN half shows the thumbnail unchanged (no tint)
    red = (image[..., 0] > 100) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() > 100_000  # the scored half carries the top colour of the colour map
    assert sorted(p.name for p in path.parent.iterdir()) == ["heatmap.png"]  # no temporary file left


def test_tall_slides_stay_1000_px_wide_with_bounded_height(tmp_path) -> None:
    values = np.random.default_rng(0).random((400, 100)).astype(np.float32)
    heatmap = Heatmap(values, downsample=256.0, slide_id="tall", slide_size_lv0=(25_600, 102_400))
    thumbnail = np.full((800, 200), 230, dtype=np.uint8)  # grey thumbnails are accepted too
    path = render_heatmap_png(tmp_path / "tall.png", heatmap, thumbnail, 128.0, title="tall slide")
    width, height = Image.open(path).size
    assert width == 1000
    assert height <= 1610
