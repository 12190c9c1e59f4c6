"""The prediction tile loader: slide jobs, the order their tiles are read in, and a ring of shared batch slots.

One :class:`SlideJob` per slide holds its read plan and tile table. :class:`TileBatches` serves all tiles of all
slides as whole batches: a DataLoader worker reads batch ``b`` into slot ``b`` of a :class:`TileRing` (shared
memory, page-locked on CUDA) and hands back only the batch number and two index arrays, so the main process
receives no pixels and collates nothing. :func:`make_tile_loader` builds the three together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from anomalib_wsi.data.stain import StainNormalizer, StainReference, sample_rows
from anomalib_wsi.errors import WSIError
from anomalib_wsi.slide.reader import ReadPlan, Slide

__all__ = ["SlideJob", "TileBatches", "TileRing", "make_tile_loader", "pass_through", "read_order", "stored_tile_lv0"]

logger = logging.getLogger(__name__)

#: Batches each worker reads ahead (the DataLoader's prefetch factor).
PREFETCH = 2
#: What :meth:`TileBatches._read` gives for a tile it could not read.
_NO_TILE = np.zeros((0, 0, 3), np.uint8)


class TileRing:
    """Reusable batch slots in shared memory that the loader workers read tiles into.

    Batch ``b`` goes to slot ``b % n_slots``; a worker fills it and the main process gets back only the batch
    number, so no batch is allocated, handed over as a file, freed or copied into pinned memory on the way (each of
    those costs the main process milliseconds per 25 MB batch). The DataLoader hands out batch ``b + in_flight``
    only once batch ``b`` has reached the main process, which by then still reads slots ``b`` and ``b - 1`` (one
    batch in flight on the device): ``in_flight + 2`` slots never overwrite a slot in use. Each slot carries the
    number of the batch last written into it, checked on receipt.

    On CUDA the slots are page-locked with ``cudaHostRegister`` once the workers have started (registered pages are
    not inherited across a fork), so the copies to the device run asynchronously; where that fails they are copied
    through pinned memory instead.
    """

    def __init__(self, n_slots: int, batch_size: int, tile_size_px: int) -> None:
        self.n_slots = n_slots
        shape = (n_slots, batch_size, tile_size_px, tile_size_px, 3)
        try:
            self.pixels = torch.empty(shape, dtype=torch.uint8).share_memory_()
        except RuntimeError as err:
            gib = math.prod(shape) / 2**30
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            msg = (
                f"cannot allocate {gib:.1f} GiB of shared memory for the tile loader ({reason}); "
                "lower --batch-size or --num-workers, or give the machine more shared memory (docker: --shm-size)"
            )
            raise WSIError(msg) from None
        self.stamps = torch.full((n_slots,), -1, dtype=torch.int64).share_memory_()
        self.registered = False

    def slot(self, batch: int) -> int:
        return batch % self.n_slots

    def receive(self, batch: int, count: int) -> torch.Tensor:
        """The (count, H, W, 3) tiles of ``batch``, checked to be that batch's."""
        slot = self.slot(batch)
        if int(self.stamps[slot]) != batch:
            msg = f"tile loader: slot {slot} holds batch {int(self.stamps[slot])}, expected {batch} (ring overrun)"
            raise RuntimeError(msg)
        return self.pixels[slot, :count]

    def register(self, device: torch.device) -> None:
        """Page-lock the slots for asynchronous copies to a CUDA device (after the workers have started)."""
        if device.type != "cuda" or self.registered:
            return
        try:
            status = torch.cuda.cudart().cudaHostRegister(self.pixels.data_ptr(), self.pixels.nbytes, 0)
            self.registered = int(status) == 0 and self.pixels.is_pinned()
        except Exception as err:  # no cudart binding, or the driver refuses: pinned copies instead
            logger.debug("cudaHostRegister of the tile ring failed: %s", err)
        if not self.registered:
            logger.debug("tile ring not page-locked; batches are copied through pinned memory")

    def unregister(self) -> None:
        if self.registered:
            with contextlib.suppress(Exception):
                torch.cuda.cudart().cudaHostUnregister(self.pixels.data_ptr())
            self.registered = False


class TileBatches(Dataset):
    """All tiles of all slides in batches: item ``b`` is batch ``b``, read into slot ``b`` of a :class:`TileRing`.

    A worker reads a whole batch into its slot and returns the batch number with two small index arrays and the
    error messages, so the main process receives no pixels and collates nothing. Tiles stay channels-last
    (H, W, 3) as read; on the device a permute makes them the (N, 3, H, W) channels-last tensor the network wants.

    With ``stain`` each tile is stain-normalised in the worker right after its read, with its slide's colour map
    (estimated by the worker from a few of the slide's tiles, see :class:`~anomalib_wsi.data.stain.StainNormalizer`);
    ``stain_unchanged`` in each batch marks the tiles left as they were (their slide's stain was ill-posed).
    With ``stain_on_device`` (Macenko only) the workers estimate each slide's map but leave the tiles as read:
    ``stain_od`` in each batch holds every tile's 3 x 3 map (NaN: left as it is) for the device to apply
    (:func:`~anomalib_wsi.data.stain.od_maps_on_device`), which keeps the workers' time per tile that of a read.
    """

    def __init__(
        self,
        jobs: list[SlideJob],
        batch_size: int,
        ring: TileRing | None = None,
        stain: StainReference | None = None,
        stain_on_device: bool = False,
    ) -> None:
        if stain_on_device and (stain is None or stain.method != "macenko"):
            msg = "stain normalisation on the device is Macenko's; Reinhard runs in the tile-reading workers"
            raise WSIError(msg)
        self.stain_on_device = stain_on_device
        self.slides = [(str(j.slide_path), j.slide_mpp, j.plan) for j in jobs]
        self.batch_size = int(batch_size)
        self.tile_size_px = jobs[0].plan.tile_size_px if jobs else 0
        counts = [len(j.table) for j in jobs]
        orders = [read_order(j) for j in jobs]
        empty = np.zeros(0, np.int64)
        self.slide_of = np.repeat(np.arange(len(jobs), dtype=np.int64), counts)
        self.index_in_slide = np.concatenate(orders or [empty])  # table row of each tile, in reading order
        self.xs = np.concatenate(
            [j.table.x.to_numpy(np.int64)[o] for j, o in zip(jobs, orders, strict=True)] or [empty]
        )
        self.ys = np.concatenate(
            [j.table.y.to_numpy(np.int64)[o] for j, o in zip(jobs, orders, strict=True)] or [empty]
        )
        self.n_tiles = int(sum(counts))
        self.slide_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.ring = ring
        # slide after slide: each slide's map becomes a colour table once it has mapped 256 tiles' pixels
        self.normalizer = StainNormalizer(stain, colour_table=True) if stain is not None else None
        self._handles: dict[int, Slide] = {}
        self._pid = -1

    def __len__(self) -> int:
        return -(-self.n_tiles // self.batch_size) if self.batch_size > 0 else 0

    def __getitem__(self, batch: int) -> dict[str, Any]:
        start, stop = batch * self.batch_size, min((batch + 1) * self.batch_size, self.n_tiles)
        if not 0 <= start < stop:
            raise IndexError(batch)
        side = self.tile_size_px
        if self.ring is not None:
            self.ring.stamps[self.ring.slot(batch)] = -1  # being written
            images = self.ring.pixels[self.ring.slot(batch), : stop - start]
        else:
            images = torch.empty((stop - start, side, side, 3), dtype=torch.uint8)
        pixels = images.numpy()
        errors = {}  # row -> message, for the tiles that could not be read
        unchanged = np.zeros(stop - start, dtype=bool)  # tiles the stain normalisation left as they were
        od_maps = np.full((stop - start, 3, 3), np.nan, np.float32) if self.stain_on_device else None
        for row, index in enumerate(range(start, stop)):
            tile, error = self._read(index)
            if error:
                pixels[row] = 0
                errors[row] = error
            elif od_maps is not None:
                pixels[row] = tile
                source = self._source_map(index)
                unchanged[row] = source is None or source.od_matrix is None
                if source is not None and source.od_matrix is not None:
                    od_maps[row] = source.od_matrix
            elif self.normalizer is not None:  # straight from the decoded tile into the slot
                unchanged[row] = not self.normalizer.apply(tile, self._source_map(index), out=pixels[row])[1]
            else:
                pixels[row] = tile
        if self.ring is not None:
            self.ring.stamps[self.ring.slot(batch)] = batch  # after the pixels: the slot now holds this batch
        return {
            "batch": batch,
            "count": stop - start,
            "image": None if self.ring is not None else images,
            "slide": self.slide_of[start:stop].copy(),  # numpy: pickled inline, not handed over as shared memory
            "index": self.index_in_slide[start:stop].copy(),
            "error": errors,
            "stain_unchanged": unchanged,
            "stain_od": od_maps,
        }

    def _source_map(self, index: int) -> Any:
        """The colour map of tile ``index``'s slide (estimated on first use); None when its stain is ill-posed."""
        assert self.normalizer is not None
        slide_index = int(self.slide_of[index])
        return self.normalizer.fit_slide(slide_index, lambda: self._source_tiles(slide_index))

    def _source_tiles(self, slide_index: int) -> list[np.ndarray]:
        """A few tiles spread over the slide, read as they are (its source stain is estimated from them)."""
        start, stop = int(self.slide_start[slide_index]), int(self.slide_start[slide_index + 1])
        _, _, plan = self.slides[slide_index]
        handle = self._handles[slide_index]  # opened by the read of the tile being normalised
        return [
            handle.read_tile(int(self.xs[start + i]), int(self.ys[start + i]), plan) for i in sample_rows(stop - start)
        ]

    def _read(self, index: int) -> tuple[np.ndarray, str]:
        """Tile ``index`` as read (uint8 RGB), or an empty array and the error message when it cannot be read."""
        slide_index = int(self.slide_of[index])
        path, mpp, plan = self.slides[slide_index]
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        side = self.tile_size_px
        try:
            if slide_index not in self._handles:
                for handle in self._handles.values():
                    handle.close()
                self._handles = {slide_index: Slide(path, mpp=mpp)}  # one open slide per worker at a time
            tile = self._handles[slide_index].read_tile(int(self.xs[index]), int(self.ys[index]), plan)
            if tile.shape != (side, side, 3):
                msg = f"read a {tile.shape} tile, expected ({side}, {side}, 3)"
                raise ValueError(msg)
        except WSIError as err:
            return _NO_TILE, str(err)
        except Exception as err:  # anything else a worker meets fails this slide, not the whole run
            where = f"({self.xs[index]}, {self.ys[index]})"
            msg = f"{path}: cannot read the tile at {where} ({type(err).__name__}: {err}); the file may be corrupt"
            return _NO_TILE, msg
        return tile, ""


def read_order(job: SlideJob) -> np.ndarray:
    """The order in which to read a slide's tiles: table rows, in bands one stored (TIFF) tile high.

    Within a band the tiles go column by column, so the tiles that share one stored tile follow each other and it
    is decoded once (Camelyon16's 512 px stored tiles hold four 256 px tiles: read row by row, the lower two come
    a whole row later, in another batch, and are decoded again). Table order when stored tiles are no taller than
    the tiles read (or unknown). Scores go back to table rows, so the order changes no output.
    """
    rows = np.arange(len(job.table), dtype=np.int64)
    if job.stored_tile_lv0 < 1.5 * job.plan.tile_size_lv0 or len(rows) == 0:
        return rows
    xs, ys = job.table.x.to_numpy(np.int64), job.table.y.to_numpy(np.int64)
    return rows[np.lexsort((ys, xs, ys // int(job.stored_tile_lv0)))]


def stored_tile_lv0(slide: Slide, level: int) -> float:
    """Height in level-0 px of the stored (TIFF) tiles of a level, as openslide reports it; 0 when unknown."""
    try:
        height = float(slide.properties.get(f"openslide.level[{level}].tile-height", "0"))
    except ValueError:
        return 0.0
    return height * slide.level_downsamples[level] if height > 0 else 0.0


def pass_through(item: Any) -> Any:
    """The DataLoader's collate function for items that are batches already (numpy stays numpy: no shared memory)."""
    return item


@dataclass
class SlideJob:
    """One slide of a prediction run: what to read (plan, tile table) and its state while it streams.

    ``accumulator`` (the heatmap being stitched), ``done`` (tiles scored) and ``error`` (the first unreadable tile)
    change as batches come back. The thumbnail waits PNG-encoded (a tenth of the pixels' memory); :meth:`release`
    drops the per-slide state once the slide's outputs are written, so a run's memory does not grow with its slides.
    """

    slide_path: Path
    slide_id: str
    slide_mpp: float | None
    out_dir: Path
    plan: ReadPlan
    table: pd.DataFrame
    slide_size_lv0: tuple[int, int]
    mpp: float
    stride_lv0: float
    thumbnail: bytes
    thumbnail_downsample: float
    stored_tile_lv0: float = 0.0  # height of the file's own tiles at the level read, level-0 px (0: unknown)
    fingerprint: str = ""
    stain_unchanged: int = 0  # tiles the stain normalisation left as they were (slide stain ill-posed)
    timings: dict[str, float] = field(default_factory=dict)
    accumulator: Any = None
    done: int = 0
    error: str = ""
    started: float = field(default_factory=time.perf_counter)

    def release(self) -> None:
        """Drop the heatmap, the thumbnail and the tile table of a finished slide."""
        self.accumulator = None
        self.thumbnail = b""
        self.table = self.table.iloc[:0]


def make_tile_loader(
    jobs: list[SlideJob],
    batch_size: int,
    num_workers: int,
    stain: StainReference | None = None,
    stain_on_device: bool = False,
) -> tuple[DataLoader, TileBatches, TileRing]:
    """The DataLoader over all tiles of ``jobs`` in batches, its dataset and the ring of slots it reads into.

    With ``stain`` the workers stain-normalise the tiles to that reference, or with ``stain_on_device`` only
    estimate each slide's map for the device to apply (see :class:`TileBatches`).

    The ring has ``PREFETCH * workers + 2`` slots (never more than there are batches), enough that no slot is
    overwritten while the main process or the device still reads it (see :class:`TileRing`).
    """
    n_batches = -(-sum(len(job.table) for job in jobs) // batch_size)
    n_slots = min(n_batches, PREFETCH * max(1, num_workers) + 2)
    ring = TileRing(max(1, n_slots), batch_size, jobs[0].plan.tile_size_px)
    dataset = TileBatches(jobs, batch_size, ring, stain=stain, stain_on_device=stain_on_device)
    loader = DataLoader(
        dataset,
        batch_size=None,  # the dataset's items are whole batches
        collate_fn=pass_through,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=False,  # the ring's slots are page-locked instead
        persistent_workers=False,
        prefetch_factor=PREFETCH if num_workers > 0 else None,
    )
    return loader, dataset, ring
