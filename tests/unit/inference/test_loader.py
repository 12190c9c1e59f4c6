"""The prediction tile loader: whole batches read by workers into a ring of shared slots, batch numbers handed over."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from anomalib_wsi.data.synthetic import synthesize_slide
from anomalib_wsi.inference.loader import SlideJob, TileBatches, TileRing, pass_through, read_order, stored_tile_lv0
from anomalib_wsi.slide import Slide, TilingConfig, tile_slide


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> SlideJob:
    """The tiles of a 3072 px synthetic slide at 1 µm/px, 64 px (the tests' scale)."""
    path = synthesize_slide(tmp_path_factory.mktemp("loader") / "s.tif", size_px=3072, mpp=0.5, seed=5).path
    slide = Slide(path)
    plan = slide.plan_read(1.0, 64)
    table = tile_slide(slide, TilingConfig(mpp=1.0, tile_size_px=64)).reset_index(drop=True)
    return SlideJob(path, slide.slide_id, None, path.parent, plan, table, slide.dimensions, slide.mpp, 128.0,
                     np.zeros((1, 1, 3), np.uint8), 1.0)  # fmt: skip


def test_two_workers_deliver_every_tile_in_order_through_the_ring(job: SlideJob) -> None:
    """2 workers, 6 slots, 113 tiles in batches of 4 (29 batches: the ring goes round 4 times). Every batch holds
    exactly the tiles Slide.read_tile gives, in table order; the main process receives batch numbers and row
    indices, never pixels."""
    batch_size = 4
    ring = TileRing(2 * 2 + 2, batch_size, 64)
    dataset = TileBatches([job], batch_size, ring)
    loader = DataLoader(dataset, batch_size=None, collate_fn=pass_through, num_workers=2, prefetch_factor=2)
    slide = Slide(job.slide_path)
    seen = []
    for batch in loader:
        assert batch["image"] is None
        tiles = ring.receive(batch["batch"], batch["count"]).numpy()
        rows = job.table.iloc[batch["index"]]
        expected = np.stack([slide.read_tile(x, y, job.plan) for x, y in zip(rows.x, rows.y, strict=True)])
        assert np.array_equal(tiles, expected)
        assert batch["error"] == {}
        seen.extend(batch["index"].tolist())
    assert len(job.table) // batch_size >= 3 * ring.n_slots  # the ring went round several times
    assert seen == list(range(len(job.table)))


def test_a_slot_overwritten_too_early_is_refused(job: SlideJob) -> None:
    """If batch b + n_slots were written before batch b is received, receiving b raises instead of giving the
    wrong tiles."""
    ring = TileRing(3, 8, 64)
    dataset = TileBatches([job], 8, ring)
    dataset[0]
    first = ring.receive(0, 8).clone()
    dataset[3]  # same slot as batch 0
    with pytest.raises(RuntimeError, match="slot 0 holds batch 3, expected 0"):
        ring.receive(0, 8)
    assert not np.array_equal(ring.receive(3, 8).numpy(), first.numpy())


def test_tiles_sharing_a_stored_tile_are_read_one_after_another(job: SlideJob, tmp_path: Path) -> None:
    """Camelyon16 stores 512 px tiles; read as 256 px tiles row by row, the lower two of each come a whole row
    later (another batch, another worker) and the stored tile is decoded twice. The reading order goes in bands
    one stored tile high: the 4 tiles of every stored tile are consecutive, and every table row is read once."""
    import tifffile

    image = np.full((2048, 3072, 3), 230, np.uint8)
    image[::7] = 120  # some texture for the JPEG encoder
    path = tmp_path / "stored512.tif"
    tifffile.imwrite(path, image, tile=(512, 512), compression="jpeg", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # fmt: skip
    slide = Slide(path)
    plan = slide.plan_read(0.5, 256)
    stored = stored_tile_lv0(slide, plan.level)
    assert stored == 512.0
    table = tile_slide(slide, TilingConfig(mpp=0.5, tile_size_px=256, min_tissue=0.0)).reset_index(drop=True)
    assert len(table) == 8 * 12
    banded = SlideJob(path, "stored512", None, tmp_path, plan, table, slide.dimensions, slide.mpp, 256.0,
                       np.zeros((1, 1, 3), np.uint8), 1.0, stored_tile_lv0=stored)  # fmt: skip
    order = read_order(banded)
    assert sorted(order.tolist()) == list(range(len(table)))
    stored_index = (table.y.to_numpy()[order] // 512) * 100 + table.x.to_numpy()[order] // 512
    runs = [stored_index[i : i + 4] for i in range(0, len(order), 4)]
    assert all(len(set(run.tolist())) == 1 for run in runs)  # 24 stored tiles, each one run of 4 reads
    assert len({int(run[0]) for run in runs}) == 24
    unknown = dataclasses.replace(job, stored_tile_lv0=0.0)  # stored tile size unknown: table order
    assert read_order(unknown).tolist() == list(range(len(job.table)))
