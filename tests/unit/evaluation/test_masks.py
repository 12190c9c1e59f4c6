"""Ground-truth masks made as ASAP made the Camelyon16 masks: corner samples, winding rule, ASAP's ties, groups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from anomalib_wsi.errors import EvaluationError
from anomalib_wsi.evaluation.froc import compute_evaluation_mask
from anomalib_wsi.evaluation.masks import (
    Outline,
    asap_region_mask,
    load_ground_truth,
    read_annotation_outlines,
    read_mask_tiff,
)


def _picture(mask: np.ndarray) -> list[str]:
    return ["".join("#" if v else "." for v in row) for row in mask]


def _asap_wn_oracle(ring: np.ndarray, shape_hw: tuple[int, int], step: int = 32, first: int = 0) -> np.ndarray:
    """A transcription of ASAP's AnnotationToMask test (float32 Points, wn_PnPoly, isLeft truncated to int) at
    the level-0 points (step * c, step * r), c and r from ``first``, strictly inside the ring's bounding box;
    one edge at a time over all points, in float32 as ASAP computes."""
    v = np.asarray(ring, dtype=np.float32)
    rows, cols = np.mgrid[0 : shape_hw[0], 0 : shape_hw[1]]
    px = ((cols + first) * step).astype(np.float32)
    py = ((rows + first) * step).astype(np.float32)
    wn = np.zeros(shape_hw, dtype=np.int64)
    for (x0, y0), (x1, y1) in zip(v, np.roll(v, -1, axis=0), strict=True):
        is_left = np.trunc((x1 - x0) * (py - y0) - (px - x0) * (y1 - y0))
        wn += (y0 <= py) & (y1 > py) & (is_left > 0)
        wn -= (y0 > py) & (y1 <= py) & (is_left < 0)
    lo, hi = v.min(axis=0), v.max(axis=0)
    in_box = (px > lo[0]) & (px < hi[0]) & (py > lo[1]) & (py < hi[1])
    return in_box & (wn != 0)


# -- sampling rule ----------------------------------------------------------------------------------------------


def test_level5_pixel_is_the_test_of_the_block_top_left_corner():
    # Edges at 16 px offsets: the corners (32, 64) of blocks 1 and 2 lie inside, so level-5 pixels 1..2 are
    # tumour (sampling block centres 16 + 32 c would give pixels 0..1 instead).
    square = np.array([[16, 16], [80, 16], [80, 80], [16, 80]])
    mask = asap_region_mask([Outline("tumour", square)], (128, 96))
    assert mask.shape == (3, 4)  # floor(96 / 32) rows x floor(128 / 32) columns
    assert _picture(mask) == ["....", ".##.", ".##."]
    # Edges on block corners: ASAP tests only points strictly inside the bounding box, so of the corners
    # 32, 64, 96 only 64 is tested: one pixel.
    on_corners = np.array([[32, 32], [96, 32], [96, 96], [32, 96]])
    assert np.argwhere(asap_region_mask([Outline("tumour", on_corners)], (128, 128))).tolist() == [[2, 2]]


def test_left_and_top_edges_are_inside_right_and_bottom_edges_outside():
    # A cross whose inner edges (not on the bounding box) pass through sample points: the vertical bar spans
    # x 96..224 (columns 3..7) and keeps column 3 (its left edge) but not column 7 (its right edge); the
    # horizontal bar spans rows 3..7 and keeps row 3 (top edge), not row 7 (bottom edge).
    cross = np.array([[96, 0], [224, 0], [224, 96], [320, 96], [320, 224], [224, 224], [224, 320], [96, 320]])
    cross = np.vstack([cross, [[96, 224], [0, 224], [0, 96], [96, 96]]])
    expected = [
        "...........",
        "...####....",
        "...####....",
        ".#########.",
        ".#########.",
        ".#########.",
        ".#########.",
        "...####....",
        "...####....",
        "...####....",
        "...........",
    ]
    for ring in (cross, cross[::-1]):  # the vertex order does not matter
        mask = asap_region_mask([Outline("tumour", ring)], (352, 352))
        assert _picture(mask) == expected
        np.testing.assert_array_equal(mask, _asap_wn_oracle(ring, (11, 11)))


def test_points_within_one_unit_of_cross_product_of_an_edge_count_as_on_it():
    # ASAP's isLeft truncates the float32 cross product to an int: x = 64 lies 0.001 px left of the edge
    # x = 64.001, a cross product of 0.1 (edge height 100): "on" the edge, as if exactly on it.
    right = np.array([[0.5, 0.5], [64.001, 0.5], [64.001, 100.5], [0.5, 100.5]])
    mask = asap_region_mask([Outline("tumour", right)], (160, 128))
    assert mask[1:4, 1].all() and not mask[:, 2].any()  # inside by 0.001 px, yet out: a right edge
    # A left edge at x = 64.001 (below a notch, so not the bounding box's side): the point 0.001 px outside
    # it counts as on it, hence inside.
    notched = np.array([[0.5, 0.5], [200.5, 0.5], [200.5, 100.5], [64.001, 100.5], [64.001, 50.5], [0.5, 50.5]])
    mask = asap_region_mask([Outline("tumour", notched)], (224, 128))
    assert mask[2:4, 2].all() and not mask[2:4, 1].any()
    for ring, size in ((right, (160, 128)), (notched, (224, 128))):
        np.testing.assert_array_equal(
            asap_region_mask([Outline("tumour", ring)], size), _asap_wn_oracle(ring, (size[1] // 32, size[0] // 32))
        )


def test_sampling_matches_a_point_by_point_transcription_of_asap():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(3, 25))
        if trial % 3 == 0:  # vertices on the sample grid: exact ties everywhere
            ring = rng.integers(0, 40, size=(n, 2)).astype(np.float64) * 32
        elif trial % 3 == 1:  # within a hair of the grid, large coordinates (float32 rounding)
            ring = 100_000 + rng.integers(0, 40, size=(n, 2)) * 32 + rng.normal(0, 0.01, size=(n, 2))
        else:
            ring = rng.uniform(0, 40 * 32, size=(n, 2))
        offset = 100_000 if trial % 3 == 1 else 0
        size = (offset + 41 * 32, offset + 41 * 32)
        mask = asap_region_mask([Outline("tumour", ring)], size)
        block = (slice(offset // 32, None), slice(offset // 32, None))
        oracle = _asap_wn_oracle(ring, (41, 41), first=offset // 32)
        np.testing.assert_array_equal(mask[block], oracle, err_msg=f"trial {trial}")


def test_self_overlapping_outline_is_filled_by_the_winding_rule():
    # A pentagram drawn in one stroke: its centre has winding number 2, inside for ASAP (even-odd would not be).
    star = np.array([[50, 0], [79, 90], [2, 35], [98, 35], [21, 90]], dtype=np.float64) * 32
    mask = asap_region_mask([Outline("tumour", star)], (100 * 32, 100 * 32))
    assert mask[50, 50] and mask[20, 50] and not mask[95, 50]


def test_non_tumour_groups_clear_tumour_whatever_the_file_order(tmp_path):
    xml = tmp_path / "slide.xml"
    xml.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        + "".join(
            f'<Annotation Name="a{i}" Type="Polygon" PartOfGroup="{group}"><Coordinates>'
            + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(ring))
            + "</Coordinates></Annotation>"
            for i, (group, ring) in enumerate(
                [
                    ("_2", [(200, 200), (400, 200), (400, 400), (200, 400)]),  # written first, still clears
                    ("_0", [(100, 100), (600, 100), (600, 600), (100, 600)]),
                    ("Tumor", [(500, 500), (900, 500), (900, 900), (500, 900)]),  # overlaps the _0 polygon
                    ("Stroma", [(1000, 1000), (1200, 1000), (1200, 1200), (1000, 1200)]),
                ]
            )
        )
        + "</Annotations><AnnotationGroups /></ASAP_Annotations>"
    )
    truth = load_ground_truth(xml, (1280, 1280))
    mask = truth.mask
    assert truth.size_source == "slide" and mask.shape == (40, 40)
    # _0: samples 4..18 (15 x 15); Tumor adds 16..28 minus the overlap; _2 clears 7..12 (6 x 6); Stroma nothing
    union = np.zeros((40, 40), bool)
    union[4:19, 4:19] = True
    union[16:29, 16:29] = True
    union[7:13, 7:13] = False
    np.testing.assert_array_equal(mask, union)
    assert any("'Stroma'" in w and "left out" in w for w in truth.warnings)


def test_geojson_polygon_holes_are_cut_out(tmp_path):
    path = tmp_path / "slide.geojson"
    ring = [[100, 100], [600, 100], [600, 600], [100, 600], [100, 100]]
    hole = [[200, 200], [400, 200], [400, 400], [200, 400], [200, 200]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring, hole]},
        "properties": {"classification": {"name": "Tumor"}},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    mask = load_ground_truth(path, (640, 640)).mask
    assert mask.sum() == 15 * 15 - 6 * 6 and not mask[8, 8] and mask[5, 5]


# -- size and bounds --------------------------------------------------------------------------------------------


def test_mask_size_from_the_annotation_extent_is_bounded(tmp_path):
    xml = tmp_path / "far.xml"
    xml.write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="0" X="100" Y="100" /><Coordinate Order="1" X="3000000" Y="100" />'
        '<Coordinate Order="2" X="3000000" Y="3000000" /></Coordinates></Annotation></Annotations>'
        "</ASAP_Annotations>"
    )
    # 3e6 px a side at downsample 32 would be 8.8e9 mask pixels (8 GiB): refused in one line
    with pytest.raises(EvaluationError, match=r"annotation extent.*100,000,000 allowed.*--slides") as info:
        load_ground_truth(xml)
    assert "\n" not in str(info.value)
    # with the slide's own size the far vertex only clips: the mask is the slide's
    truth = load_ground_truth(xml, (4096, 2048))
    assert truth.mask.shape == (64, 128) and truth.mask.any()


# -- mask TIFFs -------------------------------------------------------------------------------------------------


def test_mask_tiff_tumour_is_255_only_and_a_0_1_mask_warns(tmp_path):
    mask = np.zeros((640, 640), np.uint8)
    mask[64:320, 64:320] = 255
    mask[400:500, 400:500] = 128  # neither 0 nor 255: background for the official scorer
    tifffile.imwrite(tmp_path / "m255.tif", mask)
    warnings: list[str] = []
    read = read_mask_tiff(tmp_path / "m255.tif", 32, warnings)
    assert read.shape == (20, 20) and read.sum() == 8 * 8
    assert any("[128]" in w and "only 255" in w for w in warnings)

    tifffile.imwrite(tmp_path / "m1.tif", (mask == 255).astype(np.uint8))
    warnings = []
    assert read_mask_tiff(tmp_path / "m1.tif", 32, warnings).sum() == 8 * 8
    assert len(warnings) == 1 and "maximum 1" in warnings[0] and "read as tumour" in warnings[0]


def test_mask_tiff_larger_than_the_bound_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(EvaluationError, match=r"64 x 64 px, more than the 1,000 pixels allowed"):
        read_mask_tiff(tmp_path / "m.tif", 1, max_pixels=1000)


# -- real Camelyon16 outlines -----------------------------------------------------------------------------------

# (lesions, isolated tumour cells, lesions counted in the FROC) of the level-5 mask, slide extent = largest
# vertex + 2000 px in x and y (the reference figures of the project's issue, from an emulation of ASAP's code and
# the official scorer), and the tumour pixels of the level-5 mask before the 75 µm growth: ours (ASAP's tie rule:
# left edges in, right edges out) and the issue's, which an emulation with left and right swapped gives.
CAMELYON16 = {
    "tumor_003": (2, 0, 2, None),
    "tumor_007": (3, 1, 2, None),
    "tumor_014": (2, 0, 2, None),
    "tumor_025": (1, 0, 1, None),
    "tumor_034": (1, 0, 1, None),
    "tumor_047": (23, 3, 20, (583_742, 583_724)),
    "tumor_083": (2, 0, 2, None),
    "tumor_091": (4, 0, 4, None),
    "tumor_095": (4, 1, 3, (845_789, 845_790)),
    "tumor_105": (76, 59, 17, (85_319, 85_325)),
    "tumor_107": (2, 0, 2, None),
    "tumor_110": (5, 0, 5, (1_028_067, 1_028_058)),
}


@pytest.mark.parametrize("slide_id", sorted(CAMELYON16))
def test_camelyon16_lesion_counts_match_the_organisers_masks(shared_data: Path, slide_id: str):
    lesions, itc, counted, pixels = CAMELYON16[slide_id]
    path = shared_data / "annotations" / "camelyon16" / f"{slide_id}.xml"
    outlines, notes = read_annotation_outlines(path)
    assert notes == []
    largest = np.vstack([o.ring for o in outlines]).max(axis=0)
    size = (math.ceil(largest[0]) + 2000, math.ceil(largest[1]) + 2000)
    truth = load_ground_truth(path, size)
    labels, itc_labels = compute_evaluation_mask(truth.mask)
    assert (int(labels.max()), len(itc_labels), int(labels.max()) - len(itc_labels)) == (lesions, itc, counted)
    if slide_id == "tumor_047":
        assert truth.mask.shape == (5502, 2695)
    if pixels is not None:
        ours, issue = pixels
        assert int(truth.mask.sum()) == ours
        # The same outlines mirrored left-right (so that left and right edges swap their tie rule), sampled on
        # the mirrored grid: the issue's figure.
        width = truth.mask.shape[1] * 32
        mirrored = [
            Outline(o.kind, np.c_[width - np.asarray(o.ring)[:, 0], np.asarray(o.ring)[:, 1]]) for o in outlines
        ]
        assert int(asap_region_mask(mirrored, (width + 32, size[1])).sum()) == issue
