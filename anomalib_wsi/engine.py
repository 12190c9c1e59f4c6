"""``WSIEngine``: anomalib's Engine plus slide-level prediction.

``WSIEngine().predict(model=..., ckpt_path=..., slides=[...], output_dir=...)`` tiles each slide, streams the
tiles of all slides through one DataLoader (workers hold their own slide handles, read whole batches into a
ring of shared uint8 slots and hand over batch numbers; conversion and normalisation happen on the model's
device), stitches tile scores into slide heatmaps and lets the model's
:class:`~anomalib_wsi.post_processing.WSIPostProcessor` turn them into lesions, detection points and a slide
score. Without ``slides`` it behaves as anomalib's ``Engine.predict``.

Per slide it writes (atomically) ``heatmap.npy``, ``heatmap.png``, ``lesions.geojson``, ``detections.csv`` and
``summary.json`` into ``<output_dir>/<slide_id>/``; for the run ``summary.csv`` and ``failures.csv``. A slide
whose ``summary.json`` holds the same fingerprint (checkpoint, settings and slide file) is skipped (resume); a
slide that fails is recorded, its outputs of earlier runs are removed, and the others go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.engine import Engine
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from anomalib_wsi.errors import WSIError
from anomalib_wsi.io import atomic_path, atomic_save_npy, atomic_write_text
from anomalib_wsi.slide.reader import ReadPlan, Slide, list_slides

__all__ = [
    "PredictionSettings",
    "SlidePrediction",
    "WSIEngine",
    "default_num_workers",
    "distributed_rank",
    "load_model",
    "predict_command",
    "trained_checkpoint",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionSettings:
    """What decides a slide's outputs besides the checkpoint (part of the resume fingerprint).

    Attributes:
        mpp: tile resolution in µm/px (default: the training data's, from the checkpoint).
        tile_size_px: tile side (default: the training data's).
        stride_px: step between tiles at ``mpp`` (None: the tile size).
        min_tissue: minimum tissue fraction of a tile.
        slide_mpp: level-0 mpp for slides that record none.
        precision: "32", "bf16" or "16" (autocast).
    """

    mpp: float = 0.5
    tile_size_px: int = 256
    stride_px: int | None = None
    min_tissue: float = 0.25
    slide_mpp: float | None = None
    precision: str = "32"

    def __post_init__(self) -> None:
        if self.precision not in {"32", "bf16", "16", "bf16-mixed", "16-mixed", "32-true"}:
            msg = f"precision must be 32, bf16 or 16, got {self.precision!r}"
            raise WSIError(msg)
        if self.stride_px is not None and self.stride_px <= 0:
            msg = f"stride must be a positive number of pixels, got {self.stride_px}"
            raise WSIError(msg)


@dataclass
class SlidePrediction:
    """The prediction of one slide (what ``WSIEngine.predict`` returns, one per slide).

    Attributes:
        slide_id: slide file stem.
        slide_path: slide file.
        slide_score: slide-level score (normalised, 0.5 = the learnt threshold).
        heatmap: normalised heatmap (``values`` (H, W) float32, NaN off tissue) with its ``downsample``.
        lesions: lesion polygons in level-0 px with ``max_score``, ``mean_score``, ``area_um2``.
        detections: (N, 3) ``confidence, x, y`` points for the Camelyon16 FROC (level-0 px).
        paths: files written, by name (``heatmap_npy``, ``heatmap_png``, ``geojson``, ``detections``, ``summary``).
        n_tiles: tiles scored.
        mpp: level-0 mpp used.
        timings: seconds spent, by stage.
        skipped: True when the outputs already existed for the same checkpoint and settings.
    """

    slide_id: str
    slide_path: Path
    slide_score: float
    heatmap: Any
    lesions: list[Any]
    detections: np.ndarray
    paths: dict[str, Path] = field(default_factory=dict)
    n_tiles: int = 0
    mpp: float = math.nan
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False

    @property
    def geojson_path(self) -> Path:
        """The QuPath GeoJSON of the lesions."""
        return self.paths["geojson"]


# -- files -------------------------------------------------------------------------------------------------------
def _fingerprint(ckpt_path: Path | None, settings: PredictionSettings, post: dict[str, Any]) -> str:
    ckpt = ""
    if ckpt_path is not None and ckpt_path.exists():
        stat = ckpt_path.stat()
        ckpt = f"{ckpt_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    blob = json.dumps({"ckpt": ckpt, "settings": settings.__dict__, "post": post}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _slide_fingerprint(run_fingerprint: str, slide_path: Path, slide_mpp: float | None) -> str:
    """The run's fingerprint plus what identifies the slide: its file (path, size, time) and a manifest mpp."""
    try:
        stat = slide_path.stat()
        file_key = f"{slide_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        file_key = str(slide_path)
    blob = json.dumps({"run": run_fingerprint, "slide": file_key, "slide_mpp": slide_mpp}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _clear_outputs(slide_dir: Path) -> None:
    """Remove a slide's outputs of an earlier run, so that a slide that now fails leaves none behind."""
    for name in ("summary.json", *(n for k, n in _FILES.items() if k != "summary")):  # summary.json first
        (slide_dir / name).unlink(missing_ok=True)


def _load_done(slide_dir: Path, fingerprint: str, slide_path: Path) -> SlidePrediction | None:
    """A finished prediction with the same fingerprint, read back from its files (resume); None to recompute."""
    summary_path = slide_dir / "summary.json"
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(summary, dict) or summary.get("fingerprint") != fingerprint:
        return None
    paths = {key: slide_dir / name for key, name in _FILES.items()}
    if not all(p.exists() for p in paths.values()):
        return None
    from anomalib_wsi.post_processing import Heatmap

    try:  # a damaged or edited file means: compute the slide again
        values = np.load(paths["heatmap_npy"])
        heatmap = Heatmap(
            values=values,
            downsample=float(summary["heatmap_downsample"]),
            slide_id=summary["slide_id"],
            slide_size_lv0=tuple(summary["slide_size_lv0"]),  # type: ignore[arg-type]
        )
        text = paths["detections"].read_text().strip()
        detections = np.loadtxt(paths["detections"], delimiter=",", ndmin=2) if text else np.zeros((0, 3))
        lesions = _read_lesions(paths["geojson"])
        slide_score, n_tiles, mpp = float(summary["slide_score"]), int(summary["n_tiles"]), float(summary["mpp"])
        timings = {str(k): float(v) for k, v in dict(summary.get("timings", {})).items()}
    except Exception as err:  # whatever is wrong with them, the slide is predicted again
        logger.warning("%s: outputs of an earlier run are unreadable (%s); predicting it again", slide_dir, err)
        return None
    return SlidePrediction(
        slide_id=summary["slide_id"],
        slide_path=slide_path,
        slide_score=slide_score,
        heatmap=heatmap,
        lesions=lesions,
        detections=detections,
        paths=paths,
        n_tiles=n_tiles,
        mpp=mpp,
        timings=timings,
        skipped=True,
    )


def _read_lesions(path: Path) -> list[Any]:
    from shapely.geometry import shape

    from anomalib_wsi.post_processing.lesions import Lesion

    data = json.loads(path.read_text())
    lesions = []
    for feature in data.get("features", []):
        measurements = feature.get("properties", {}).get("measurements", {})
        lesions.append(
            Lesion(
                polygon=shape(feature["geometry"]),
                max_score=float(measurements.get("max_score", math.nan)),
                mean_score=float(measurements.get("mean_score", math.nan)),
                area_um2=float(measurements.get("area_um2", math.nan)),
            )
        )
    return lesions


_FILES = {
    "heatmap_npy": "heatmap.npy",
    "heatmap_png": "heatmap.png",
    "geojson": "lesions.geojson",
    "detections": "detections.csv",
    "summary": "summary.json",
}


# -- tiles ------------------------------------------------------------------------------------------------------
class _TileRing:
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


class _PredictBatches(Dataset):
    """All tiles of all slides in batches: item ``b`` is batch ``b``, read into slot ``b`` of a :class:`_TileRing`.

    A worker reads a whole batch into its slot and returns the batch number with two small index arrays and the
    error messages, so the main process receives no pixels and collates nothing. Tiles stay channels-last
    (H, W, 3) as read; on the device a permute makes them the (N, 3, H, W) channels-last tensor the network wants.
    """

    def __init__(self, jobs: list[_SlideJob], batch_size: int, ring: _TileRing | None = None) -> None:
        self.slides = [(str(j.slide_path), j.slide_mpp, j.plan) for j in jobs]
        self.batch_size = int(batch_size)
        self.tile_size_px = jobs[0].plan.tile_size_px if jobs else 0
        counts = [len(j.table) for j in jobs]
        orders = [_read_order(j) for j in jobs]
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
        self.ring = ring
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
        for row, index in enumerate(range(start, stop)):
            error = self._read_into(pixels[row], index)
            if error:
                errors[row] = error
        if self.ring is not None:
            self.ring.stamps[self.ring.slot(batch)] = batch  # after the pixels: the slot now holds this batch
        return {
            "batch": batch,
            "count": stop - start,
            "image": None if self.ring is not None else images,
            "slide": self.slide_of[start:stop].copy(),  # numpy: pickled inline, not handed over as shared memory
            "index": self.index_in_slide[start:stop].copy(),
            "error": errors,
        }

    def _read_into(self, out: np.ndarray, index: int) -> str:
        """Read tile ``index`` into ``out``; zeros and the error message when it cannot be read."""
        slide_index = int(self.slide_of[index])
        path, mpp, plan = self.slides[slide_index]
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        try:
            if slide_index not in self._handles:
                for handle in self._handles.values():
                    handle.close()
                self._handles = {slide_index: Slide(path, mpp=mpp)}  # one open slide per worker at a time
            out[...] = self._handles[slide_index].read_tile(int(self.xs[index]), int(self.ys[index]), plan)
        except WSIError as err:
            out[...] = 0
            return str(err)
        except Exception as err:  # anything else a worker meets fails this slide, not the whole run
            out[...] = 0
            where = f"({self.xs[index]}, {self.ys[index]})"
            return f"{path}: cannot read the tile at {where} ({type(err).__name__}: {err}); the file may be corrupt"
        return ""


def _read_order(job: _SlideJob) -> np.ndarray:
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


def _stored_tile_lv0(slide: Slide, level: int) -> float:
    """Height in level-0 px of the stored (TIFF) tiles of a level, as openslide reports it; 0 when unknown."""
    try:
        height = float(slide.properties.get(f"openslide.level[{level}].tile-height", "0"))
    except ValueError:
        return 0.0
    return height * slide.level_downsamples[level] if height > 0 else 0.0


def _as_is(item: Any) -> Any:
    """The DataLoader's collate function for items that are batches already (numpy stays numpy: no shared memory)."""
    return item


@dataclass
class _SlideJob:
    slide_path: Path
    slide_id: str
    slide_mpp: float | None
    out_dir: Path
    plan: ReadPlan
    table: pd.DataFrame
    slide_size_lv0: tuple[int, int]
    mpp: float
    stride_lv0: float
    thumbnail: np.ndarray
    thumbnail_downsample: float
    stored_tile_lv0: float = 0.0  # height of the file's own tiles at the level read, level-0 px (0: unknown)
    fingerprint: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    accumulator: Any = None
    done: int = 0
    error: str = ""
    started: float = field(default_factory=time.perf_counter)


# -- engine -----------------------------------------------------------------------------------------------------
class WSIEngine(Engine):
    """anomalib's ``Engine`` with whole-slide prediction.

    Args:
        batch_size: tiles per forward pass.
        num_workers: DataLoader workers reading tiles (each with its own slide handles); None:
            :func:`default_num_workers`.
        device: "auto" (CUDA when available), "cpu" or "cuda[:N]".
        precision: "32", "bf16" or "16"; autocast on the device.
        compile_model: wrap the torch model in ``torch.compile`` (GPU; the first batches are slower).
        progress: show progress bars.
        channels_last: run the network channels-last (faster convolutions on GPUs); None: the model's setting.
        **kwargs: passed to anomalib's ``Engine`` (and Lightning's Trainer) for training and tile-level use.

    Example:
        >>> from anomalib_wsi import RDFocal, WSIEngine                              # doctest: +SKIP
        >>> results = WSIEngine().predict(model=RDFocal, ckpt_path="model.ckpt", slides=["a.svs"], output_dir="out")
        >>> results[0].slide_score, results[0].geojson_path
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int | None = None,
        device: str = "auto",
        precision: str = "32",
        compile_model: bool = False,
        progress: bool = True,
        channels_last: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.device_name = device
        self.precision = precision
        self.compile_model = compile_model
        self.channels_last = channels_last
        self.progress = progress

    # anomalib's Engine.predict has a different signature; slides=None falls back to it.
    def predict(  # type: ignore[override]
        self,
        model: Any = None,
        ckpt_path: str | Path | None = None,
        slides: str | Path | Sequence[str | Path] | None = None,
        output_dir: str | Path = "wsi_predictions",
        mpp: float | None = None,
        tile_size_px: int | None = None,
        stride_px: int | None = None,
        min_tissue: float = 0.25,
        slide_mpp: float | None = None,
        lesion_threshold: float | None = None,
        **kwargs: Any,
    ) -> list[SlidePrediction] | Any:
        """Predict whole slides (or, without ``slides``, anything anomalib's ``Engine.predict`` takes).

        Args:
            model: an ``RDFocal`` (class or instance) or any anomalib module; with ``ckpt_path`` its class loads
                the checkpoint (backbone weights come from the checkpoint, nothing is downloaded).
            ckpt_path: checkpoint written by training.
            slides: slide files, folders of slides, or a CSV manifest with a ``slide_path`` column.
            output_dir: one sub-folder per slide plus ``summary.csv`` and ``failures.csv``.
            mpp: tile resolution; default the training data's (from the checkpoint), else 0.5.
            tile_size_px: tile side; default the training data's, else 256.
            stride_px: step between tiles at ``mpp`` (default: the tile size; smaller = overlapping tiles).
            min_tissue: minimum tissue fraction of a scored tile.
            slide_mpp: level-0 mpp for slides that record none.
            lesion_threshold: override the post-processor's lesion threshold (normalised score, 0-1).
            **kwargs: with ``slides=None``, passed to anomalib's ``Engine.predict``.

        Returns:
            One :class:`SlidePrediction` per slide that succeeded (failures are in ``failures.csv``).
        """
        if slides is None:
            return super().predict(model=model, ckpt_path=ckpt_path, **kwargs)
        module, data_hparams = load_model(model, ckpt_path)
        if lesion_threshold is not None:
            module.post_processor.lesion_threshold = float(lesion_threshold)
        settings = PredictionSettings(
            mpp=float(mpp if mpp is not None else data_hparams.get("mpp", 0.5)),
            tile_size_px=int(tile_size_px if tile_size_px is not None else data_hparams.get("tile_size_px", 256)),
            stride_px=stride_px,
            min_tissue=min_tissue,
            slide_mpp=slide_mpp,
            precision=self.precision,
        )
        paths = _resolve_slides(slides)
        self.last_failures: list[dict[str, str]] = []
        self.last_stage_seconds: dict[str, float] = {}
        return self._predict_slides(module, Path(ckpt_path) if ckpt_path else None, paths, Path(output_dir), settings)

    # -- internals ------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.device_name in {"auto", "cuda"} and torch.cuda.is_available():
            _, world, local_rank = distributed_rank()
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if world > 1 else "cuda")
        if self.device_name == "auto":
            return torch.device("cpu")
        return torch.device(self.device_name)

    def _predict_slides(
        self,
        module: Any,
        ckpt_path: Path | None,
        slide_paths: list[tuple[Path, float | None]],
        output_dir: Path,
        settings: PredictionSettings,
    ) -> list[SlidePrediction]:
        output_dir.mkdir(parents=True, exist_ok=True)
        # several processes (torchrun, SLURM): each rank owns whole slides, so no tile crosses ranks
        rank, world, _ = distributed_rank()
        all_ids = [path.stem for path, _ in slide_paths]
        if world > 1:
            slide_paths = slide_paths[rank::world]
            logger.info("rank %d of %d: %d of the slides", rank, world, len(slide_paths))
        post = module.post_processor
        fingerprint = _fingerprint(ckpt_path, settings, _post_settings(post))
        results: list[SlidePrediction] = []
        failures: list[dict[str, str]] = []
        jobs: list[_SlideJob] = []
        seen: dict[str, Path] = {}
        bar = tqdm(slide_paths, desc="tiling", unit="slide", disable=not self.progress, leave=False)
        for slide_path, manifest_mpp in bar:
            slide_id = slide_path.stem
            if slide_id in seen:  # both would write <output>/<slide_id>/
                if seen[slide_id].resolve() != slide_path.resolve():
                    msg = (
                        f"{slide_path}: another slide of this run has the same name ({seen[slide_id]}) and its "
                        "outputs would overwrite it; rename one or predict them into different output folders"
                    )
                    failures.append(_failure(slide_path, "tiling", msg))
                continue
            seen[slide_id] = slide_path
            out_dir = output_dir / slide_id
            slide_fingerprint = _slide_fingerprint(fingerprint, slide_path, manifest_mpp)
            done = _load_done(out_dir, slide_fingerprint, slide_path)
            if done is not None:
                logger.info("%s: outputs exist for this checkpoint and settings; skipped", slide_id)
                results.append(done)
                continue
            _clear_outputs(out_dir)
            try:
                job = self._prepare(slide_path, manifest_mpp, out_dir, settings)
            except WSIError as err:
                failures.append(_failure(slide_path, "tiling", str(err)))
            except Exception as err:  # one bad slide must not stop the batch
                failures.append(_failure(slide_path, "tiling", f"{type(err).__name__}: {err}"))
            else:
                job.fingerprint = slide_fingerprint
                jobs.append(job)
        results.extend(self._run(module, jobs, settings, ckpt_path, failures))
        order = {slide_id: rank for rank, slide_id in enumerate(seen)}
        results.sort(key=lambda r: order.get(r.slide_id, len(order)))  # the order the slides were given in
        _write_run_tables(output_dir, results, failures, all_ids, rank, world)
        self.last_failures = failures
        for failure in failures:
            logger.error("%s failed (%s): %s", failure["slide_id"], failure["stage"], failure["error"])
        return results

    def _prepare(
        self, slide_path: Path, manifest_mpp: float | None, out_dir: Path, settings: PredictionSettings
    ) -> _SlideJob:
        from anomalib_wsi.slide.tiling import TilingConfig, load_or_tile

        start = time.perf_counter()
        slide_mpp = manifest_mpp if manifest_mpp is not None else settings.slide_mpp
        slide = Slide(slide_path, mpp=slide_mpp)
        plan = slide.plan_read(settings.mpp, settings.tile_size_px)
        config = TilingConfig(
            mpp=settings.mpp,
            tile_size_px=settings.tile_size_px,
            stride_px=settings.stride_px,
            min_tissue=settings.min_tissue,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        table, tissue = load_or_tile(slide_path, config, out_dir, slide_mpp=slide_mpp)
        if tissue is not None:
            thumbnail, thumb_ds = tissue.thumbnail, tissue.downsample
        else:
            thumbnail, thumb_ds = slide.read_thumbnail(target_mpp=8.0)
        stride_px = settings.stride_px or settings.tile_size_px
        job = _SlideJob(
            slide_path=slide_path,
            slide_id=slide.slide_id,
            slide_mpp=slide_mpp,
            out_dir=out_dir,
            plan=plan,
            table=table.reset_index(drop=True),
            slide_size_lv0=slide.dimensions,
            mpp=slide.mpp,
            stride_lv0=stride_px * plan.tile_size_lv0 / settings.tile_size_px,
            thumbnail=thumbnail,
            thumbnail_downsample=thumb_ds,
            stored_tile_lv0=_stored_tile_lv0(slide, plan.level),
        )
        job.timings["tiling_s"] = time.perf_counter() - start
        slide.close()
        return job

    def _run(
        self,
        module: Any,
        jobs: list[_SlideJob],
        settings: PredictionSettings,
        ckpt_path: Path | None,
        failures: list[dict[str, str]],
    ) -> Iterator[SlidePrediction]:
        from anomalib_wsi.post_processing import HeatmapAccumulator

        if not jobs:
            return
        device = self._device()
        cells = int(getattr(module.post_processor, "heatmap_cells_per_tile", 1) or 1)
        for job in jobs:
            job.accumulator = HeatmapAccumulator(job.slide_size_lv0, job.plan.tile_size_lv0, job.stride_lv0, cells)
            job.started = time.perf_counter()
        map_cells = max(job.accumulator.cells_per_tile_side for job in jobs) if cells > 1 else 0
        forward = _TileForward(
            module, device, settings.precision, self.compile_model, self.channels_last, self.batch_size, map_cells
        )
        prefetch = 2
        n_batches = -(-sum(len(job.table) for job in jobs) // self.batch_size)
        n_slots = min(n_batches, prefetch * max(1, self.num_workers) + 2)
        tile_side = jobs[0].plan.tile_size_px
        ring = _TileRing(max(1, n_slots), self.batch_size, tile_side)
        dataset = _PredictBatches(jobs, self.batch_size, ring)
        loader = DataLoader(
            dataset,
            batch_size=None,  # the dataset's items are whole batches
            collate_fn=_as_is,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=False,  # the ring's slots are page-locked instead
            persistent_workers=False,
            prefetch_factor=prefetch if self.num_workers > 0 else None,
        )
        pending = {i for i, job in enumerate(jobs) if len(job.table) > 0}
        for job in jobs:  # slides without tissue tiles finish at once
            if len(job.table) == 0:
                yield from self._finish(module, job, settings, ckpt_path, failures)
        total_tiles = dataset.n_tiles
        bar = tqdm(total=total_tiles, desc="predicting", unit="tile", disable=not self.progress)
        start = time.perf_counter()
        # where the main process spends the streaming time (benchmarks print it): waiting for tiles from the
        # workers, queueing the network on the device, waiting for its scores, stitching, writing slide outputs
        stages = dict.fromkeys(("wait_tiles", "launch", "wait_device", "stitch", "outputs"), 0.0)
        self.last_stage_seconds = stages

        def consume(batch: dict[str, Any], launched: _Launched) -> Iterator[SlidePrediction]:
            slide_ids = batch["slide"]
            indices = batch["index"]
            errors = batch["error"]
            clock = time.perf_counter()
            scores, maps = launched.result()
            stages["wait_device"] += time.perf_counter() - clock
            clock = time.perf_counter()
            for slide_index in np.unique(slide_ids):
                job = jobs[int(slide_index)]
                sel = slide_ids == slide_index
                bad = [message for row, message in sorted(errors.items()) if sel[row]]
                if bad and not job.error:
                    job.error = bad[0]
                rows = job.table.iloc[indices[sel]]
                if not job.error:
                    job.accumulator.add(
                        rows.x.to_numpy(), rows.y.to_numpy(), scores[sel], maps[sel] if maps is not None else None
                    )
                job.done += int(sel.sum())
                if job.done >= len(job.table) and int(slide_index) in pending:
                    pending.discard(int(slide_index))
                    job.timings["predict_s"] = time.perf_counter() - job.started
                    stages["stitch"] += time.perf_counter() - clock
                    clock = time.perf_counter()
                    yield from self._finish(module, job, settings, ckpt_path, failures)
                    stages["outputs"] += time.perf_counter() - clock
                    clock = time.perf_counter()
            stages["stitch"] += time.perf_counter() - clock
            bar.update(len(slide_ids))
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                slides=f"{len(jobs) - len(pending)}/{len(jobs)}", tiles_s=f"{bar.n / max(elapsed, 1e-9):.0f}"
            )

        # one batch in flight: batch k+1 is queued on the device before the scores of batch k are collected
        previous: tuple[dict[str, Any], _Launched] | None = None
        batches = iter(loader)  # the workers start here; the ring is page-locked after the fork
        ring.register(device)
        try:
            while True:
                clock = time.perf_counter()
                batch = next(batches, None)
                stages["wait_tiles"] += time.perf_counter() - clock
                if batch is None:
                    break
                clock = time.perf_counter()
                launched = forward.launch(ring.receive(batch["batch"], batch["count"]))
                stages["launch"] += time.perf_counter() - clock
                if previous is not None:
                    yield from consume(*previous)
                previous = (batch, launched)
            if previous is not None:
                yield from consume(*previous)
        finally:
            del batches
            if ring.registered:
                torch.cuda.synchronize(device)  # no copy may still be reading a slot when it is unregistered
            ring.unregister()
        bar.close()
        self.last_tiles_per_second = total_tiles / max(time.perf_counter() - start, 1e-9)

    def _finish(
        self,
        module: Any,
        job: _SlideJob,
        settings: PredictionSettings,
        ckpt_path: Path | None,
        failures: list[dict[str, str]],
    ) -> Iterator[SlidePrediction]:
        if job.error:
            failures.append(_failure(job.slide_path, "reading", job.error))
            job.accumulator = None
            return
        try:
            yield self._write_outputs(module, job, settings, ckpt_path)
        except WSIError as err:
            failures.append(_failure(job.slide_path, "writing", str(err)))
        except Exception as err:  # one bad slide must not stop the batch
            logger.exception("%s: unexpected error while writing outputs", job.slide_id)
            failures.append(_failure(job.slide_path, "writing", f"{type(err).__name__}: {err}"))
        finally:
            job.accumulator = None  # free the heatmap of a finished slide

    def _write_outputs(
        self, module: Any, job: _SlideJob, settings: PredictionSettings, ckpt_path: Path | None
    ) -> SlidePrediction:
        from anomalib_wsi.annotations.geojson import write_geojson
        from anomalib_wsi.post_processing.lesions import write_detections_csv
        from anomalib_wsi.post_processing.render import render_heatmap_png

        start = time.perf_counter()
        raw = job.accumulator.result()
        raw.slide_id = job.slide_id
        result = module.post_processor.process_slide(raw, job.mpp)
        heatmap = result.heatmap
        out = job.out_dir
        out.mkdir(parents=True, exist_ok=True)
        paths = {key: out / name for key, name in _FILES.items()}
        # summary.json last: its presence with the fingerprint marks the slide done
        paths["summary"].unlink(missing_ok=True)
        atomic_save_npy(paths["heatmap_npy"], heatmap.values.astype(np.float32))
        write_geojson(
            paths["geojson"],
            [lesion.polygon for lesion in result.lesions],
            classification="Tumor",
            color=(200, 0, 0),
            measurements=[
                {"max_score": le.max_score, "mean_score": le.mean_score, "area_um2": le.area_um2}
                for le in result.lesions
            ],
            names=[f"lesion {i + 1}" for i in range(len(result.lesions))],
        )
        write_detections_csv(paths["detections"], result.detections)
        render_heatmap_png(
            paths["heatmap_png"],
            heatmap,
            job.thumbnail,
            job.thumbnail_downsample,
            lesions=result.lesions,
            title=f"{job.slide_id}  slide score {result.slide_score:.3f}",
        )
        job.timings["post_s"] = time.perf_counter() - start
        summary = {
            "slide_id": job.slide_id,
            "slide_path": str(job.slide_path),
            "slide_score": float(result.slide_score),
            "n_tiles": len(job.table),
            "n_lesions": len(result.lesions),
            "n_detections": len(result.detections),
            "mpp": job.mpp,
            "tile_mpp": settings.mpp,
            "tile_size_px": settings.tile_size_px,
            "stride_px": settings.stride_px or settings.tile_size_px,
            "heatmap_downsample": float(heatmap.downsample),
            "heatmap_shape": list(heatmap.values.shape),
            "slide_size_lv0": list(job.slide_size_lv0),
            "timings": {k: round(v, 4) for k, v in job.timings.items()},
            "checkpoint": str(ckpt_path) if ckpt_path else None,
            "settings": {**settings.__dict__, **_post_settings(module.post_processor)},
            "fingerprint": job.fingerprint,
        }
        atomic_write_text(paths["summary"], json.dumps(summary, indent=2, default=float))
        return SlidePrediction(
            slide_id=job.slide_id,
            slide_path=job.slide_path,
            slide_score=float(result.slide_score),
            heatmap=heatmap,
            lesions=list(result.lesions),
            detections=np.asarray(result.detections),
            paths=paths,
            n_tiles=len(job.table),
            mpp=job.mpp,
            timings=dict(job.timings),
        )


@dataclass
class _Launched:
    """One batch whose forward pass was queued on the device; ``result`` waits for its scores to reach the host."""

    scores: torch.Tensor
    maps: torch.Tensor | None
    event: Any = None

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.event is not None:
            self.event.synchronize()
        return self.scores.numpy(), None if self.maps is None else self.maps.numpy()


class _TileForward:
    """uint8 tiles (N, H, W, 3) -> raw tile scores (and pooled anomaly maps) on the model's device.

    Conversion to float and normalisation run on the device; autocast (bf16/fp16) and channels_last as asked;
    with ``torch.compile`` the last, smaller batch is padded to the batch size so the compiled graph is reused
    (no recompilation, no new cuDNN tuning). Results come back through pinned memory without blocking, so the
    host prepares the next batch while the device computes (:meth:`launch`, then :meth:`_Launched.result`).
    """

    def __init__(
        self,
        module: Any,
        device: torch.device,
        precision: str,
        compile_model: bool,
        channels_last: bool | None = None,
        batch_size: int | None = None,
        map_cells: int = 0,
    ) -> None:
        self.module = module.to(device).eval()
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16, "16": torch.float16}.get(precision)
        if channels_last is None:
            channels_last = bool(getattr(module, "channels_last", False))
        self.channels_last = channels_last
        if self.channels_last:
            self.module.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.module.model, dynamic=False) if compile_model else self.module.model
        self.pad_to = batch_size if compile_model else None
        self.map_cells = int(map_cells)

    @torch.inference_mode()
    def launch(self, images_u8: torch.Tensor) -> _Launched:
        count = int(images_u8.shape[0])
        if self.pad_to is not None and count < self.pad_to:
            padding = images_u8.new_zeros((self.pad_to - count, *images_u8.shape[1:]))
            images_u8 = torch.cat([images_u8, padding])
        if self.device.type == "cuda" and images_u8.device.type == "cpu" and not images_u8.is_pinned():
            images_u8 = images_u8.pin_memory()  # an asynchronous copy needs page-locked memory
        # (N, H, W, 3) as read -> (N, 3, H, W) laid out channels-last: the permute is free, any copy runs on the device
        images = images_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if self.module.pre_processor is not None:
            images = self.module.pre_processor(images)
        images = images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            output = self.net(images)
        scores = output.pred_score.float().reshape(-1)[:count]
        maps = None
        if self.map_cells > 0 and output.anomaly_map is not None:
            full = output.anomaly_map.float().reshape(-1, 1, *output.anomaly_map.shape[-2:])[:count]
            maps = torch.nn.functional.adaptive_avg_pool2d(full, self.map_cells)[:, 0]  # pooled on the device
        if self.device.type != "cuda":
            return _Launched(scores.cpu(), None if maps is None else maps.cpu())
        host_scores = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
        host_scores.copy_(scores, non_blocking=True)
        host_maps = None
        if maps is not None:
            host_maps = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
            host_maps.copy_(maps, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return _Launched(host_scores, host_maps, event)

    def __call__(self, images_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and maps) of one batch, waiting for them."""
        return self.launch(images_u8).result()


def _post_settings(post: Any) -> dict[str, Any]:
    keys = ("lesion_threshold", "min_lesion_area_um2", "simplify_tolerance_px_lv0", "nms_radius_um", "slide_score")
    return {k: getattr(post, k, None) for k in keys if not callable(getattr(post, k, None))}


def _failure(slide_path: Path, stage: str, error: str) -> dict[str, str]:
    return {"slide_path": str(slide_path), "slide_id": slide_path.stem, "stage": stage, "error": error}


_SUMMARY_COLUMNS = ["slide_id", "slide_path", "slide_score", "n_tiles", "n_lesions", "mpp", "status"]
_FAILURE_COLUMNS = ["slide_path", "slide_id", "stage", "error"]


def default_num_workers() -> int:
    """Tile-reading workers when none are asked for: half the CPUs this process may use, at most 8.

    "May use" counts CPU affinity (a SLURM allocation or ``taskset``), not the machine's cores, and is shared by
    the prediction processes of one node under torchrun (``LOCAL_WORLD_SIZE``). With direct TIFF decoding 8
    workers read well over the 3,000-5,000 tiles/s a large GPU scores.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(1, min(8, cpus // 2 // local_processes))


def distributed_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process: torch.distributed, torchrun or SLURM, else (0, 1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        return dist.get_rank(), dist.get_world_size(), local
    for rank_key, world_key, local_key in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[world_key]), int(os.environ.get(local_key, "0"))
    return 0, 1, 0


def _process_group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _write_run_tables(
    output_dir: Path,
    results: list[SlidePrediction],
    failures: list[dict[str, str]],
    order: list[str],
    rank: int = 0,
    world: int = 1,
) -> None:
    """Write ``summary.csv`` and ``failures.csv`` for the run (slides in the order given).

    With several ranks each one writes its part to ``.ranks/``. With a process group (torchrun, Lightning) the
    ranks wait for each other and rank 0 merges every part; without one (plain SLURM tasks) each rank merges the
    parts it finds, so the rank that finishes last writes tables that cover the whole run.
    """
    rows = [
        {
            "slide_id": r.slide_id,
            "slide_path": str(r.slide_path),
            "slide_score": r.slide_score,
            "n_tiles": r.n_tiles,
            "n_lesions": len(r.lesions),
            "mpp": r.mpp,
            "status": "skipped (done before)" if r.skipped else "done",
        }
        for r in results
    ]
    position = {slide_id: i for i, slide_id in enumerate(order)}

    def write(summary_rows: list[dict[str, Any]], failure_rows: list[dict[str, str]]) -> None:
        summary = pd.DataFrame(summary_rows, columns=_SUMMARY_COLUMNS)
        summary = summary.sort_values("slide_id", key=lambda c: c.map(lambda v: position.get(v, len(position))))
        with atomic_path(output_dir / "summary.csv", suffix=".csv") as tmp:
            summary.to_csv(tmp, index=False)
        with atomic_path(output_dir / "failures.csv", suffix=".csv") as tmp:
            pd.DataFrame(failure_rows, columns=_FAILURE_COLUMNS).to_csv(tmp, index=False)

    if world <= 1:
        write(rows, failures)
        return
    parts = output_dir / ".ranks"
    part = {"rank": rank, "world": world, "summary": rows, "failures": failures}
    atomic_write_text(parts / f"rank{rank}-of-{world}.json", json.dumps(part, default=float))
    if _process_group_ready():
        import torch.distributed as dist

        dist.barrier()  # every part is written: rank 0 writes the complete tables
        if rank != 0:
            return
    # Without a process group (plain SLURM tasks) every rank merges the parts it finds. Reading the parts again
    # after writing, and writing again when more appeared, makes the last write cover every part written before
    # it: a rank that wrote partial tables and then sees no new part knows that any later part's rank reads (and
    # writes) after that.
    seen = -1
    while True:
        found = [json.loads(p.read_text()) for p in sorted(parts.glob(f"rank*-of-{world}.json"))]
        if len(found) == seen:
            break
        seen = len(found)
        write([row for f in found for row in f["summary"]], [row for f in found for row in f["failures"]])
    if seen < world:
        logger.info("rank %d of %d done; the run tables are complete once every rank is", rank, world)


def _resolve_slides(slides: str | Path | Sequence[str | Path]) -> list[tuple[Path, float | None]]:
    items = [slides] if isinstance(slides, str | Path) else list(slides)
    resolved: list[tuple[Path, float | None]] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".csv" and path.is_file():
            from anomalib_wsi.data.datamodule import read_manifest

            resolved.extend((r.slide_path, r.mpp) for r in read_manifest(path))
        elif path.is_dir():
            found = list_slides(path)
            if not found:
                msg = f"{path}: no slides found in this folder; pass slide files, a folder of slides or a manifest CSV"
                raise WSIError(msg)
            resolved.extend((p, None) for p in found)
        else:
            resolved.append((path, None))
    return resolved


def trained_checkpoint(engine: Engine, fallback: Path) -> Path:
    """The checkpoint a finished ``engine.fit`` wrote (best, else last); saved to ``fallback`` when there is none."""
    callback: Any = engine.trainer.checkpoint_callback
    path = Path(getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "") or "")
    if not path.is_file():
        path = fallback
        engine.trainer.save_checkpoint(path)
    return path


def load_model(model: Any, ckpt_path: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """The model to predict with, and the training data's hyper-parameters stored in the checkpoint.

    ``model`` may be a class or an instance; with a checkpoint the class loads it with ``pre_trained=False``
    (the weights are in the checkpoint, so nothing is downloaded).

    Raises:
        WSIError: the checkpoint is missing or unreadable, or neither model nor checkpoint is given.
    """
    data_hparams: dict[str, Any] = {}
    if ckpt_path is None:
        if model is None or isinstance(model, type):
            msg = "predicting slides needs a checkpoint: pass ckpt_path (anomalib-wsi predict --ckpt MODEL.ckpt)"
            raise WSIError(msg)
        return model, data_hparams
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        msg = f"{ckpt}: checkpoint not found; pass the .ckpt written by training (results/.../weights/lightning)"
        raise WSIError(msg)
    if model is None:
        from anomalib_wsi.models.rd_focal import RDFocal

        model = RDFocal
    cls = model if isinstance(model, type) else type(model)
    from anomalib.utils.serialization import anomalib_safe_globals

    # tensors, plain types and the model's own allow-listed enums (e.g. AnomalyMapGenerationMode) only
    extra = cls.checkpoint_safe_globals() if hasattr(cls, "checkpoint_safe_globals") else ()
    try:
        with anomalib_safe_globals(extra=extra):
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user error here
        msg = f"{ckpt}: not a readable checkpoint ({type(err).__name__}); pass the .ckpt written by training"
        raise WSIError(msg) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        msg = f"{ckpt}: not a Lightning checkpoint (no state_dict); pass the .ckpt written by training"
        raise WSIError(msg)
    data_hparams = dict(state.get("datamodule_hyper_parameters") or {})
    overrides: dict[str, Any] = {}
    hparams = state.get("hyper_parameters", {})
    if "pre_trained" in hparams:
        overrides["pre_trained"] = False
    if "weights_path" in hparams:
        overrides["weights_path"] = None
    module = cls.load_from_checkpoint(ckpt, map_location="cpu", **overrides)  # type: ignore[attr-defined]
    return module, data_hparams


def predict_command(
    slides: list[str],
    ckpt: str,
    output: str,
    batch_size: int = 32,
    num_workers: int | None = None,
    precision: str = "32",
    stride: int | None = None,
    slide_mpp: float | None = None,
    device: str = "auto",
    threshold: float | None = None,
    min_tissue: float = 0.25,
    channels_last: bool = False,
    compile: bool = False,
) -> int:
    """``anomalib-wsi predict``: returns 0 when every slide succeeded, 1 when any failed (on any rank)."""
    import torch.distributed as dist

    _, world, _ = distributed_rank()
    if world > 1 and "MASTER_ADDR" in os.environ and not dist.is_initialized():
        # torchrun: a CPU process group only to wait for each other at the end (so no rank is stopped early
        # by a rank that exits with failures) and to agree on the exit status
        dist.init_process_group("gloo")
    engine = WSIEngine(
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
        compile_model=compile,
        channels_last=True if channels_last else None,
    )
    results = engine.predict(
        model=None,
        ckpt_path=ckpt,
        slides=slides,
        output_dir=output,
        stride_px=stride,
        slide_mpp=slide_mpp,
        lesion_threshold=threshold,
        min_tissue=min_tissue,
    )
    failures = engine.last_failures
    logger.info(
        "%d slides predicted (%d skipped as done), %d failed; summary in %s",
        len(results),
        sum(r.skipped for r in results),
        len(failures),
        Path(output) / "summary.csv",
    )
    failed = len(failures)
    if dist.is_available() and dist.is_initialized():
        total = torch.tensor([failed])
        dist.all_reduce(total)
        failed = int(total.item())
    return 1 if failed else 0
