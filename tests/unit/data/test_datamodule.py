"""WSIDataModule: slide-level splits, the paper's tile sampling, labelled tiles with masks, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomalib_wsi.data.datamodule import WSIDataModule
from anomalib_wsi.data.patch_folder import PatchFolder
from anomalib_wsi.errors import WSIError

SETTINGS = {"mpp": 1.0, "tile_size_px": 64, "val_ratio": 0.34, "test_ratio": 0.34, "num_workers": 0}


def _module(root: Path, tmp_path: Path, **kwargs: object) -> WSIDataModule:
    return WSIDataModule(root=root, cache_dir=tmp_path / "cache", **{**SETTINGS, **kwargs})  # type: ignore[arg-type]


def test_splits_are_by_slide_stratified_and_written(small_cohort, tmp_path: Path) -> None:
    dm = _module(small_cohort.root, tmp_path, seed=3)
    dm.setup()
    split = pd.read_csv(tmp_path / "cache" / "split.csv")
    assert len(split) == 6 and split.slide_id.is_unique
    # every split holds one tumour and one normal slide (6 slides, 1/3 each, stratified by label)
    for name in ("train", "val", "test"):
        part = split[split.split == name]
        assert sorted(part.label) == [0, 1], (name, part)
    # tiles of a slide appear in one split only
    slides_in = {n: set(getattr(dm, f"{n}_data").samples.slide_id) for n in ("train", "val", "test")}
    assert not (slides_in["train"] & slides_in["val"]) and not (slides_in["train"] & slides_in["test"])
    # the same seed draws the same split
    again = _module(small_cohort.root, tmp_path / "again", seed=3)
    again.setup()
    assert pd.read_csv(tmp_path / "again" / "cache" / "split.csv").split.tolist() == split.split.tolist()


def test_training_tiles_follow_the_per_slide_sampling(small_cohort, tmp_path: Path) -> None:
    dm = _module(small_cohort.root, tmp_path, normal_tiles_per_slide=20, tumour_tiles_per_slide=7)
    dm.setup()
    train = dm.train_data.samples
    tumour_slides = set(small_cohort.tumour_slide_ids)
    for slide_id, tiles in train.groupby("slide_id"):
        assert (tiles.label_index == 0).sum() <= 20
        assert (tiles.label_index == 1).sum() <= 7
        if slide_id not in tumour_slides:
            assert (tiles.label_index == 1).sum() == 0
    assert (train.label_index == 1).sum() > 0, "the training tumour slide must give tumour tiles"
    assert set(train.label_index) <= {0, 1}, "ignored tiles (-1) never reach training"

    normal_only = _module(small_cohort.root, tmp_path / "n", normal_only=True)
    normal_only.setup()
    assert (normal_only.train_data.samples.label_index == 1).sum() == 0


def test_test_tiles_carry_labels_and_tumour_masks(small_cohort, tmp_path: Path) -> None:
    dm = _module(small_cohort.root, tmp_path)
    dm.setup()
    test = dm.test_data.samples
    assert set(test.label_index) == {0, 1}, "test tiles keep both normal and tumour tiles"
    tumour_rows = np.flatnonzero(test.label_index.to_numpy() == 1)[:5]
    for index in tumour_rows:
        item = dm.test_data[int(index)]
        assert item.image.shape == (3, 64, 64)
        assert bool(item.gt_label) is True
        assert item.image_path.endswith(f"@{test.x[index]},{test.y[index]}")
        # the tile mask covers the same share of the tile as the tile table's tumour fraction
        assert abs(float(item.gt_mask.float().mean()) - float(test.tumour_fraction[index])) < 0.08
    normal_index = int(np.flatnonzero(test.label_index.to_numpy() == 0)[0])
    assert float(dm.test_data[normal_index].gt_mask.float().sum()) == 0.0


def test_manifest_with_explicit_splits(small_cohort, tmp_path: Path) -> None:
    slides = sorted(small_cohort.slides)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "slide_path": [str(p) for p in slides],
            "annotation_path": [str(small_cohort.annotations.get(p.stem, "")) for p in slides],
            "split": ["train", "train", "train", "train", "val", "test"],
        }
    ).to_csv(manifest, index=False)
    dm = _module(manifest, tmp_path)
    dm.setup()
    assert set(dm.test_data.samples.slide_id) == {slides[5].stem}
    assert set(dm.val_data.samples.slide_id) == {slides[4].stem}


def test_clear_errors(tmp_path: Path, small_cohort) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WSIError, match="no slides found"):
        _module(empty, tmp_path).setup()
    with pytest.raises(WSIError, match="does not exist"):
        _module(tmp_path / "missing", tmp_path).setup()
    with pytest.raises(WSIError, match="annotation folder does not exist"):
        _module(small_cohort.root, tmp_path, annotations=tmp_path / "nowhere").setup()
    manifest = tmp_path / "bad.csv"
    manifest.write_text(f"slide_path,annotation_path\n{small_cohort.slides[0]},{tmp_path / 'gone.xml'}\n")
    with pytest.raises(WSIError, match=r"gone\.xml .*does not exist"):
        _module(manifest, tmp_path).setup()


def test_prepare_data_synthesises_a_missing_demo_cohort(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    dm = _module(root, tmp_path, synthesize_if_missing=True, synthetic_slides=3, synthetic_size_px=2048)
    dm.prepare_data()
    assert len(list((root / "slides").glob("*.tif"))) == 3
    assert (root / "labels.csv").is_file()


def test_patch_folder_keeps_tumour_tiles_in_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = {("train", "good"): 5, ("train", "bad"): 2, ("test", "good"): 3, ("test", "bad"): 4}
    for (split, sub), n in counts.items():
        folder = tmp_path / split / sub
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    dm = PatchFolder(root=tmp_path, num_workers=0)
    dm.setup()
    assert dm.train_data.samples.label_index.tolist().count(1) == 2
    assert len(dm.train_data) == 7 and len(dm.test_data) == 7
    assert int(dm.train_data[6].gt_label) in (0, 1) and dm.train_data[0].image.shape == (3, 32, 32)
    shutil.rmtree(tmp_path / "train" / "good")
    with pytest.raises(WSIError, match="train/good"):
        PatchFolder(root=tmp_path).setup()


# ---------------------------------------------------------------- listed patches (data.coordinates)


@pytest.fixture(scope="module")
def camelyon_named(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Four 1024 px slides named as Camelyon16's (tumor_001, tumor_011 with XML; normal_001, normal_002) and
    FW-RD-style coordinate lists for the two tumour slides: normal patch centres on tissue, tumour ones on lesions."""
    from anomalib_wsi.data.synthetic import synthesize_slide

    root = tmp_path_factory.mktemp("camelyon_named")
    good, bad = [], []
    for n, (slide_id, tumour) in enumerate(
        [("tumor_001", True), ("tumor_011", True), ("normal_001", False), ("normal_002", False)]
    ):
        slide = synthesize_slide(
            root / "slides" / f"{slide_id}.tif",
            size_px=1024,
            seed=40 + n,
            tumour=tumour,
            annotation_path=root / "annotations" / f"{slide_id}.xml",
        )
        if tumour:
            for polygon in slide.tissue_polygons[:3]:
                point = polygon.representative_point()
                good.append(f"{slide_id},{int(point.x)},{int(point.y)}")
            for polygon in slide.tumour_polygons[:2]:
                point = polygon.representative_point()
                bad.append(f"{slide_id},{int(point.x)},{int(point.y)}")
    (root / "train_good.txt").write_bytes(("\r\n".join(good) + "\r\n").encode())
    (root / "train_bad.txt").write_bytes(("\r\n".join(bad) + "\r\n").encode())
    return {"root": root, "good": good, "bad": bad}


def _listed(lines: list[str], tile_px: int) -> list[list[object]]:
    rows = []
    for line in lines:
        slide_id, x, y = line.split(",")
        rows.append([slide_id, int(x) - tile_px // 2, int(y) - tile_px // 2])
    return rows


def test_listed_patches_are_the_training_set_pixel_for_pixel(camelyon_named, tmp_path: Path) -> None:
    import openslide

    root = camelyon_named["root"]
    tile_px = 128
    dm = _module(
        root,
        tmp_path,
        mpp=0.5,
        tile_size_px=tile_px,
        coordinates=[f"{root / 'train_good.txt'}:0", f"{root / 'train_bad.txt'}:1"],
        val_ratio=0.3,
        test_ratio=0.3,
    )
    dm.setup()
    train = dm.train_data.samples
    expected = _listed(camelyon_named["good"], tile_px) + _listed(camelyon_named["bad"], tile_px)
    assert train[["slide_id", "x", "y"]].values.tolist() == expected
    assert train.label_index.tolist() == [0] * len(camelyon_named["good"]) + [1] * len(camelyon_named["bad"])
    # the slides with listed patches train; the others validate and test (one each: val_ratio = test_ratio)
    split = pd.read_csv(tmp_path / "cache" / "split.csv").set_index("slide_id").split.to_dict()
    assert {k: v for k, v in split.items() if v == "train"} == {"tumor_001": "train", "tumor_011": "train"}
    assert sorted(v for k, v in split.items() if k.startswith("normal")) == ["test", "val"]
    for index, (slide_id, x, y) in enumerate(expected):
        item = dm.train_data[index]
        with openslide.OpenSlide(str(root / "slides" / f"{slide_id}.tif")) as handle:
            reference = np.asarray(handle.read_region((x, y), 0, (tile_px, tile_px)).convert("RGB"))
        assert np.array_equal(dm.train_data.read_image(index), reference), (slide_id, x, y)
        np.testing.assert_allclose(item.image.permute(1, 2, 0).numpy(), reference / 255.0, rtol=0, atol=1e-6)
        assert int(item.gt_label) == int(train.label_index.iloc[index])
    # the checkpoint's hyper-parameters keep the lists as plain strings
    assert dm.hparams["coordinates"] == [f"{root / 'train_good.txt'}:0", f"{root / 'train_bad.txt'}:1"]


def test_listed_patches_check_the_cohort_the_resolution_and_the_slide(camelyon_named, tmp_path: Path) -> None:
    root = camelyon_named["root"]
    extra = tmp_path / "extra.txt"
    extra.write_text("tumor_022,100,100\ntumor_034,100,100\n")
    with pytest.raises(
        WSIError, match=r"2 slides named in data\.coordinates are not in the cohort \(tumor_022, tumor_034\)"
    ):
        _module(root, tmp_path, mpp=0.5, tile_size_px=128, coordinates=[f"{extra}:0"]).setup()
    with pytest.raises(WSIError, match=r"read at level 0 \(0\.5 µm/px\) but data\.mpp is 1; set data\.mpp to 0\.5"):
        _module(root, tmp_path, mpp=1.0, tile_size_px=64, coordinates=str(root / "train_good.txt:0")).setup()
    outside = tmp_path / "outside.txt"
    outside.write_text("tumor_001,1000,500\n")
    with pytest.raises(WSIError, match=r"1 listed patches reach outside the 1024x1024 slide \(first: centre 1000,500"):
        _module(root, tmp_path, mpp=0.5, tile_size_px=128, coordinates=[f"{outside}:1"]).setup()
