"""Tissue detection: glass and pen marks are not tissue, stained tissue is; the mask comes from a low level."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import box

from anomalib_wsi.slide import Slide, TissueConfig, TissueMask, detect_tissue, save_tissue_png, tissue_mask_from_rgb

HISTOLAB = "tiles/histolab"

# Decided per file from its name and a look at it (fractions measured with the default TissueConfig):
# glass, dust, a pen line or a pen blob on glass -> (almost) no tissue.
NO_TISSUE = {
    "almost-white-1.png": 0.0,
    "almost-white-2.png": 0.028,  # a corner of tissue shows at the top right
    "almost-white-ihc.png": 0.0,
    "no-tissue.png": 0.0,
    "no-tissue2.png": 0.0,
    "no-tissue-line.png": 0.0,  # a black pen line on glass
    "no-tissue-green-pen.png": 0.0,  # 72 % of it is green ink (0.72 with remove_pen=False)
    "no-tissue-red-pen.png": 0.057,  # red ink with dark, blurred rims (0.62 with remove_pen=False)
    "very-low-nuclei-score-red-pen-level1.png": 0.006,  # red ink over fat (0.35 with remove_pen=False)
    "liver-level2-38626-13514-39426-14315.png": 0.0,  # glass
}
# H&E (and IHC) tissue filling most of the image -> tissue.
TISSUE = {
    "high-nuclei-score-level0.png": 0.97,
    "medium-nuclei-score-level0.png": 0.92,
    "medium-nuclei-score-level1-2.png": 1.0,
    "medium-nuclei-score-level2.png": 0.80,
    "very-low-nuclei-score-level0.png": 1.0,
    "tcga-lung-rgb.png": 0.79,
    "tissue-level0-4302-10273-4814-10785.png": 0.52,  # loose stroma
    "tissue-level0-7352-11762-7864-12274.png": 0.81,
    "tissue-level2-1784-6289-5880-10386.png": 0.63,
    "tissue-level2-3000-7666-7096-11763.png": 0.66,
    "tissue-level2-4640-4649-8736-8746.png": 0.71,
    "tissue-level2-4760-5241-8856-9338.png": 0.69,
    "liver-level2-10907-7808-11707-8608.png": 1.0,
    "liver-level2-57138-8209-57938-9009.png": 0.70,
    "kidney-ihc-level0-340-520-390-550.png": 0.84,
}
# Tissue with a pen mark across it: tissue stays, ink goes (fraction with / without pen removal).
PEN_ON_TISSUE = {
    "tcga-red-pen.png": (0.53, 0.80),
    "tcga-green-pen.png": (0.82, 0.97),
    "medium-nuclei-score-green-pen-level1.png": (0.41, 0.86),
    "high-nuclei-score-red-pen-level1.png": (0.80, 0.99),
    "diagnostic-slide-thumb-rgb.png": (0.36, 0.69),  # red, green and black outlines drawn round the tissue
}


def load_rgb(path: Path) -> np.ndarray:
    """A PNG as uint8 RGB, transparency composited over white (as the slide reader does)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float32) / 255
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_histolab_folder_is_fully_classified(shared_data: Path) -> None:
    """Every histolab image is either checked below or knowingly left out (partial tissue, tiny, fat)."""
    left_out = {
        "high-nuclei-score-level2.png",  # 13 % tissue in one corner: measured, not a yes/no case
        "liver-level2-20914-13715-21714-14515.png",  # a 16 % strip of tissue at the top
        "kidney-ihc-level0-310-500-360-530.png",  # 30 x 50 px IHC crops: 79 % and 37 % tissue
        "kidney-ihc-level0-330-480-380-510.png",
        "kidney-ihc-level0-350-530-360-540.png",  # 10 x 10 px: below the smallest region kept
        "low-nuclei-score-level0.png",  # fat: thin membranes around empty cells (13 % and 11 %)
        "low-nuclei-score-level1.png",
        "medium-nuclei-score-level1.png",  # half tissue, half glass (52 %)
        "wsi-blue-pen.png",  # checked by its own test
    }
    names = {p.name for p in (shared_data / HISTOLAB).glob("*.png")}
    assert names == set(NO_TISSUE) | set(TISSUE) | set(PEN_ON_TISSUE) | left_out


@pytest.mark.parametrize("name", sorted(NO_TISSUE))
def test_glass_and_pen_marks_are_not_tissue(shared_data: Path, name: str) -> None:
    """Glass, dust and pen marks on glass give under 10 % tissue (most give none)."""
    fraction = tissue_mask_from_rgb(load_rgb(shared_data / HISTOLAB / name)).mean()
    assert fraction < 0.10
    assert fraction == pytest.approx(NO_TISSUE[name], abs=0.03)


@pytest.mark.parametrize("name", sorted(TISSUE))
def test_stained_tissue_is_tissue(shared_data: Path, name: str) -> None:
    """Images full of H&E or IHC tissue give at least 50 % tissue (loose stroma and lumens excluded)."""
    fraction = tissue_mask_from_rgb(load_rgb(shared_data / HISTOLAB / name)).mean()
    assert fraction >= 0.5
    assert fraction == pytest.approx(TISSUE[name], abs=0.05)


@pytest.mark.parametrize("name", sorted(PEN_ON_TISSUE))
def test_pen_marks_on_tissue_are_removed(shared_data: Path, name: str) -> None:
    """With pen removal the ink is cut out (15-50 % of the image) and the tissue around it stays."""
    rgb = load_rgb(shared_data / HISTOLAB / name)
    with_removal = tissue_mask_from_rgb(rgb).mean()
    without = tissue_mask_from_rgb(rgb, TissueConfig(remove_pen=False)).mean()
    expected_with, expected_without = PEN_ON_TISSUE[name]
    assert with_removal == pytest.approx(expected_with, abs=0.05)
    assert without == pytest.approx(expected_without, abs=0.05)
    assert without - with_removal >= 0.14


def test_blue_pen_strokes_are_not_tissue(shared_data: Path) -> None:
    """wsi-blue-pen: no pixel of the blue ink (B > 170, B - R > 60) lies in the mask; the pink tissue does."""
    rgb = load_rgb(shared_data / HISTOLAB / "wsi-blue-pen.png").astype(int)
    mask = tissue_mask_from_rgb(rgb.astype(np.uint8))
    ink = (rgb[..., 2] > 170) & (rgb[..., 2] - rgb[..., 0] > 60)
    assert ink.sum() > 300  # the two strokes on the right
    assert (mask & ink).sum() == 0
    assert 0.2 < mask.mean() < 0.3  # the dense pink tissue on the left half; pale fragments are left out
    assert mask[:, :100].mean() > 0.3 and mask[:, 150:].mean() < 0.01


def test_synthetic_blob_and_config_validation() -> None:
    """A pink disc on glass is found to within its rim; bad settings are refused with the field named."""
    rgb = np.full((200, 300, 3), 240, np.uint8)
    cv2.circle(rgb, (150, 100), 60, (200, 110, 170), -1)
    mask = tissue_mask_from_rgb(rgb)
    disc = np.zeros((200, 300), np.uint8)
    cv2.circle(disc, (150, 100), 60, 1, -1)
    assert (mask ^ disc.astype(bool)).sum() / disc.sum() < 0.02
    assert not tissue_mask_from_rgb(np.full((64, 64, 3), 250, np.uint8)).any()
    with pytest.raises(ValueError, match="min_saturation <= max_saturation"):
        TissueConfig(min_saturation=60, max_saturation=40)
    with pytest.raises(ValueError, match="mask_mpp"):
        TissueConfig(mask_mpp=0)
    with pytest.raises(ValueError, match="blur_px"):
        TissueConfig(blur_px=4)


def test_detect_tissue_on_synthetic_slide(make_slide: Callable[..., Path]) -> None:
    """At 8 µm/px a 4096 x 3072 slide at 0.5 µm/px gives a 256 x 192 mask: the tissue box, not the green ink."""
    tissue = detect_tissue(Slide(make_slide()))
    assert tissue.mask.shape == (192, 256) and tissue.thumbnail.shape == (192, 256, 3)
    assert tissue.downsample == 16.0
    # tissue box: level-0 x 1024-3072, y 512-2048 -> mask rows 32-128, cols 64-192
    assert tissue.mask[34:126, 66:190].all()
    outside = tissue.mask.copy()
    outside[30:130, 62:194] = False
    assert not outside.any()  # the green ink blob at x 256-768, y 2304-2816 is not tissue
    assert tissue.tissue_fraction == pytest.approx((128 * 96) / (256 * 192), abs=0.01)


def test_detect_tissue_without_mpp_uses_a_bounded_thumbnail(make_slide: Callable[..., Path]) -> None:
    """A slide without mpp still gets a mask, from a thumbnail no larger than 2048 px (never level 0)."""
    slide = Slide(make_slide(name="nompp.tif", mpp=None))
    tissue = detect_tissue(slide, TissueConfig(max_side_px=1024))
    assert max(tissue.mask.shape) == 1024 and tissue.downsample == 4.0
    assert tissue.tissue_fraction == pytest.approx(0.25, abs=0.01)


def test_cmu_tissue_mask(shared_data: Path) -> None:
    """CMU-1-Small-Region: mask at 8 µm/px (138 x 185 px) with tissue in a vertical band, 36 % of the slide."""
    tissue = detect_tissue(Slide(shared_data / "slides/real/CMU-1-Small-Region.svs"))
    assert tissue.mask.shape == (185, 138)
    assert tissue.downsample == pytest.approx(16.09, abs=0.01)  # 8 µm / 0.499 µm, rounded to whole pixels
    assert tissue.tissue_fraction == pytest.approx(0.36, abs=0.04)
    columns = tissue.mask.mean(axis=0)
    assert columns[:30].max() == 0 and columns[122:].max() < 0.01  # glass left of x=480 and right of x=1960
    assert columns[55:97].min() > 0.6  # the band, x 885-1560, is tissue over most of the slide's height


class _Annotations:
    """Stand-in with the two attributes save_tissue_png draws: shapely geometry in level-0 pixels."""

    def __init__(self) -> None:
        self.tumour = box(1500, 700, 1900, 1100)
        self.non_tumour = box(2200, 1300, 2600, 1700)


def test_save_tissue_png_draws_outline_tiles_and_annotations(tmp_path: Path) -> None:
    """The PNG shows the tissue outline (green), tile outlines (blue), tumour (red) and non-tumour (yellow)."""
    import pandas as pd

    mask = np.zeros((192, 256), bool)
    mask[32:128, 64:192] = True
    tissue = TissueMask(mask=mask, downsample=16.0, thumbnail=np.full((192, 256, 3), 240, np.uint8))
    tiles = pd.DataFrame({"x": [1024, 1280], "y": [512, 512], "tile_size_lv0": [256.0, 256.0]})
    path = save_tissue_png(tmp_path / "out" / "tissue.png", tissue, annotations=_Annotations(), tiles=tiles)
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    scale = 2000 / 256  # longer side scaled to 2000 px
    assert image.shape == (round(192 * scale) + 22, 2000, 3)  # plus the legend strip

    def colour_at(x_lv0: float, y_lv0: float, colour: tuple[int, int, int]) -> bool:
        x, y = round(x_lv0 / 16 * scale), round(y_lv0 / 16 * scale)
        patch = image[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).astype(int)
        return bool((np.abs(patch - colour).sum(axis=1) < 60).any())

    assert colour_at(1024, 1800, (0, 170, 0))  # left edge of the tissue, below the tumour box
    assert colour_at(1700, 1100, (230, 0, 0))  # bottom edge of the tumour box
    assert colour_at(2400, 1700, (255, 200, 0))  # bottom edge of the non-tumour box
    assert colour_at(1536, 640, (40, 90, 255))  # right edge of the second tile
    assert not colour_at(1700, 900, (230, 0, 0))  # outlines only: the inside of the tumour box is not red
    assert not colour_at(200, 200, (0, 170, 0))  # glass far from everything stays grey
