"""``WSIEngine``: anomalib's Engine plus slide-level prediction.

``WSIEngine().predict(model=..., ckpt_path=..., slides=[...], output_dir=...)`` runs four steps:

1. **resolve**: slide files, folders and manifests become ``(path, mpp)`` pairs; under torchrun / SLURM each
   rank keeps its share (:mod:`~anomalib_wsi.inference.distributed`);
2. **plan**: per slide, a finished folder with the same fingerprint is read back (:mod:`~.resume`); otherwise
   the slide is tiled into a :class:`~anomalib_wsi.inference.loader.SlideJob`;
3. **stream**: the tiles of all slides go through one DataLoader (:mod:`~.loader`) and the device forward
   (:mod:`~.forward`), one batch in flight, scores stitched into each slide's heatmap as they return;
4. **finish**: as soon as a slide's last tile is scored, the model's
   :class:`~anomalib_wsi.post_processing.WSIPostProcessor` makes lesions, detections and the slide score, and
   :mod:`~anomalib_wsi.post_processing.outputs` writes its files; the run tables close the run.

It returns a :class:`~anomalib_wsi.inference.settings.PredictionRun`: the slides predicted, in the order given,
with the failures and the streaming figures. Without ``slides`` it behaves as anomalib's ``Engine.predict``.

Over 500 lines on purpose: the four steps share the per-run state (jobs, the run result, the stage clocks); the parts
that stand alone are the sibling modules named above.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.engine import Engine
from tqdm.auto import tqdm

from anomalib_wsi.cohort import resolve_slides
from anomalib_wsi.errors import WSIError
from anomalib_wsi.files import remove_stale_temporaries
from anomalib_wsi.inference.checkpoint import load_model
from anomalib_wsi.inference.distributed import RUN_TABLES, default_num_workers, distributed_rank, write_run_tables
from anomalib_wsi.inference.export import is_exported_model, load_exported
from anomalib_wsi.inference.forward import LaunchedBatch, TileForward
from anomalib_wsi.inference.loader import SlideJob, make_tile_loader, stored_tile_lv0
from anomalib_wsi.inference.resume import load_finished, post_processor_settings, run_fingerprint, slide_fingerprint
from anomalib_wsi.inference.settings import (
    PRECISIONS,
    PREDICT_MIN_TISSUE,
    PredictionRun,
    PredictionSettings,
    SlideFailure,
    SlidePrediction,
)
from anomalib_wsi.post_processing.outputs import OPTIONAL_FILES, OUTPUT_FILES, clear_slide_outputs, write_slide_outputs
from anomalib_wsi.post_processing.overlay import HEATMAP_TIFF_MODES
from anomalib_wsi.slide.ids import printable, slide_id_from_path, slide_output_dir
from anomalib_wsi.slide.reader import Slide
from anomalib_wsi.slide.tiling import TILES_CSV, TILES_JSON, TilingConfig, load_or_tile

__all__ = ["WSIEngine"]

#: The files a slide folder holds, and the run's tables (their leftover temporaries are cleared at the start).
SLIDE_FILES = (*OUTPUT_FILES.values(), *OPTIONAL_FILES.values(), TILES_CSV, TILES_JSON)

logger = logging.getLogger(__name__)

#: Where the main process spends the streaming time (benchmarks print it): waiting for tiles from the workers,
#: queueing the network on the device, waiting for its scores, stitching, writing slide outputs.
STAGES = ("wait_tiles", "launch", "wait_device", "stitch", "outputs")
#: Where Macenko stain normalisation may map the tiles (``WSIEngine(stain_on=...)``).
STAIN_PLACES = ("auto", "workers", "device")


class WSIEngine(Engine):
    """anomalib's ``Engine`` with whole-slide prediction.

    Args:
        batch_size: tiles per forward pass.
        num_workers: DataLoader workers reading tiles (each with its own slide handles); None:
            :func:`~anomalib_wsi.inference.distributed.default_num_workers`.
        device: "auto" (CUDA when available), "cpu" or "cuda[:N]".
        precision: "32", "bf16" or "16" (or Lightning's spellings); autocast on the device for prediction, and
            the Trainer's precision for training.
        compile_model: wrap the torch model in ``torch.compile`` (GPU; the first batches are slower).
        progress: show progress bars.
        channels_last: run the network channels-last (faster convolutions on GPUs); None: the model's setting.
        stain_on: where a model's Macenko stain normalisation maps the tiles: "workers" (the tile-reading
            processes), "device" (the loader workers only estimate each slide's map; the device applies it to the
            batch) or "auto": the device when it is a GPU. Reinhard always runs in the workers.
        **kwargs: passed to anomalib's ``Engine`` (and Lightning's Trainer) for training and tile-level use.

    Example:
        >>> from anomalib_wsi import RDFocal, WSIEngine                              # doctest: +SKIP
        >>> results = WSIEngine().predict(model=RDFocal, ckpt_path="model.ckpt", slides=["a.svs"], output_dir="out")
        >>> results[0].slide_score, results[0].geojson_path, results.failures
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int | None = None,
        device: str = "auto",
        precision: str | int = "32",
        compile_model: bool = False,
        progress: bool = True,
        channels_last: bool | None = None,
        stain_on: str = "auto",
        **kwargs: Any,
    ) -> None:
        precision = str(precision)
        if precision not in {"32", "32-true"}:  # training through this engine runs at the same precision
            kwargs.setdefault("precision", {"bf16": "bf16-mixed", "16": "16-mixed"}.get(precision, precision))
        super().__init__(**kwargs)
        _check_whole(batch_size, "batch size", "--batch-size", minimum=1)
        if num_workers is not None:
            _check_whole(num_workers, "number of tile-reading workers", "--num-workers", minimum=0)
        _check_device(device)
        if precision not in PRECISIONS:
            msg = f"precision must be 32, bf16 or 16, got {precision!r} (--precision)"
            raise WSIError(msg)
        if stain_on not in STAIN_PLACES:
            msg = f"stain_on must be one of {', '.join(STAIN_PLACES)}, got {stain_on!r} (--stain-on)"
            raise WSIError(msg)
        self.stain_on = stain_on
        self.batch_size = int(batch_size)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.device_name = device
        self.precision = precision
        self.compile_model = compile_model
        self.channels_last = channels_last
        self.progress = progress
        self.last_run = PredictionRun()

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
        min_tissue: float = PREDICT_MIN_TISSUE,
        slide_mpp: float | None = None,
        lesion_threshold: float | None = None,
        tile_objects: bool | None = None,
        heatmap_tiff: str | None = None,
        **kwargs: Any,
    ) -> PredictionRun | Any:
        """Predict whole slides (or, without ``slides``, anything anomalib's ``Engine.predict`` takes).

        Args:
            model: an ``RDFocal`` (class or instance) or any anomalib module; with ``ckpt_path`` its class loads
                the checkpoint (backbone weights come from the checkpoint, nothing is downloaded). Or the path of
                a model exported by ``anomalib-wsi export`` (``model.xml``: OpenVINO, ``model.onnx``: ONNX
                Runtime; CPU, no checkpoint).
            ckpt_path: checkpoint written by training.
            slides: slide files, folders of slides, or a CSV manifest with a ``slide_path`` column.
            output_dir: one sub-folder per slide plus ``summary.csv`` and ``failures.csv``.
            mpp: tile resolution; default the training data's (from the checkpoint), else 0.5.
            tile_size_px: tile side; default the training data's, else 256.
            stride_px: step between tiles at ``mpp`` (default: the tile size; smaller = overlapping tiles).
            min_tissue: minimum tissue fraction of a scored tile.
            slide_mpp: level-0 mpp for slides that record none.
            lesion_threshold: override the post-processor's lesion threshold (normalised score, 0-1).
            tile_objects: override the post-processor's ``tile_objects`` (write ``tiles.geojson.gz``).
            heatmap_tiff: override the post-processor's ``heatmap_tiff`` ("uint8", "float32", "rgba": write
                ``heatmap.tif``).
            **kwargs: with ``slides=None``, passed to anomalib's ``Engine.predict``.

        Returns:
            A :class:`~anomalib_wsi.inference.settings.PredictionRun`: one
            :class:`~anomalib_wsi.inference.settings.SlidePrediction` per slide that succeeded, ``failures``
            (also in ``failures.csv``), ``stage_seconds`` and ``tiles_per_second``.
        """
        if slides is None:
            return super().predict(model=model, ckpt_path=ckpt_path, **kwargs)
        output_dir = Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            msg = f"{output_dir}: exists and is not a folder; choose another output folder (--output)"
            raise WSIError(msg)
        if lesion_threshold is not None and not 0 <= lesion_threshold <= 1:
            msg = f"lesion threshold must be in 0-1 (a normalised score; 0.5 is the learnt one), got {lesion_threshold}"
            raise WSIError(msg)
        if not 0 <= min_tissue <= 1:
            msg = f"min_tissue must be a tissue fraction in 0-1, got {min_tissue} (--min-tissue)"
            raise WSIError(msg)
        if stride_px is not None:
            _check_whole(stride_px, "stride", "--stride", minimum=1)
        if slide_mpp is not None and not (math.isfinite(slide_mpp) and slide_mpp > 0):
            msg = f"slide mpp must be a positive number of µm per pixel, got {slide_mpp} (--slide-mpp)"
            raise WSIError(msg)
        if heatmap_tiff is not None and heatmap_tiff not in HEATMAP_TIFF_MODES:
            msg = f"heatmap TIFF mode must be one of {', '.join(HEATMAP_TIFF_MODES)}, got {heatmap_tiff!r}"
            raise WSIError(msg)
        if is_exported_model(model):  # an OpenVINO / ONNX export: its file is the model of the fingerprint
            module, data_settings = load_exported(model)
            ckpt_path = model
        else:
            module, data_settings = load_model(model, ckpt_path)
        post = module.post_processor
        if lesion_threshold is not None:
            post.lesion_threshold = float(lesion_threshold)
        if tile_objects is not None:
            post.tile_objects = bool(tile_objects)
        if heatmap_tiff is not None:
            post.heatmap_tiff = heatmap_tiff
        try:
            tiling = TilingConfig(
                mpp=float(mpp if mpp is not None else data_settings.get("mpp", 0.5)),
                tile_size_px=int(tile_size_px if tile_size_px is not None else data_settings.get("tile_size_px", 256)),
                stride_px=stride_px,
                min_tissue=min_tissue,
            )
        except ValueError as err:
            raise WSIError(str(err).replace("TilingConfig.", "")) from None
        settings = PredictionSettings(
            tiling=tiling, slide_mpp=slide_mpp, precision=self.precision, stain=data_settings.get("stain")
        )
        ckpt = Path(ckpt_path) if ckpt_path else None
        slide_paths, problems = resolve_slides(slides)
        self.last_run = self._predict_slides(module, ckpt, slide_paths, output_dir, settings, problems)
        return self.last_run

    # -- the four steps ---------------------------------------------------------------------------------------------
    def _predict_slides(
        self,
        module: Any,
        ckpt_path: Path | None,
        slide_paths: list[tuple[Path, float | None]],
        output_dir: Path,
        settings: PredictionSettings,
        problems: list[tuple[Path, str]] | None = None,
    ) -> PredictionRun:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = f"{output_dir}: cannot create the output folder ({err.strerror}); choose another one (--output)"
            raise WSIError(msg) from None
        remove_stale_temporaries(output_dir, RUN_TABLES)
        # several processes (torchrun, SLURM): each rank owns whole slides, so no tile crosses ranks
        rank, world, _ = distributed_rank()
        all_ids = [printable(path.stem) for path, _ in slide_paths]
        if world > 1:
            slide_paths = slide_paths[rank::world]
            logger.info("rank %d of %d: %d of the slides", rank, world, len(slide_paths))
        run = PredictionRun()
        if rank == 0:  # inputs that named no slide (an empty folder, a broken link): one failure each
            run.failures.extend(
                SlideFailure(path, printable(path.stem), "finding", error) for path, error in problems or []
            )
        fingerprint = run_fingerprint(ckpt_path, module, settings)
        jobs, order = self._plan(slide_paths, output_dir, settings, fingerprint, run)
        run.extend(self._stream(module, jobs, settings, ckpt_path, run))
        run.sort(key=lambda r: order.get(r.slide_id, len(order)))  # the order the slides were given in
        for failure in run.failures:  # before the tables: a folder that cannot take them must not hide these
            logger.error("%s failed (%s): %s", failure.slide_id, failure.stage, failure.error)
        try:
            write_run_tables(output_dir, list(run), run.failures, all_ids, rank, world)
        except OSError as err:
            run.tables_error = (
                f"{output_dir}: cannot write summary.csv / failures.csv ({err.strerror}); the slides' own folders "
                "hold what was written, and running the same command again resumes"
            )
            logger.error("%s", run.tables_error)
        return run

    def _plan(
        self,
        slide_paths: list[tuple[Path, float | None]],
        output_dir: Path,
        settings: PredictionSettings,
        fingerprint: str,
        run: PredictionRun,
    ) -> tuple[list[SlideJob], dict[str, int]]:
        """Finished slides go into ``run`` as they are; the others are tiled into jobs (failures into ``run``)."""
        jobs: list[SlideJob] = []
        seen: dict[str, Path] = {}
        bar = tqdm(slide_paths, desc="tiling", unit="slide", disable=not self.progress, leave=False)
        for slide_path, manifest_mpp in bar:
            try:  # an id that cannot name a folder, or a folder that would leave the output: refused
                slide_id = slide_id_from_path(slide_path)
                out_dir = slide_output_dir(output_dir, slide_id, source=slide_path)
            except WSIError as err:
                run.failures.append(SlideFailure(slide_path, printable(slide_path.stem), "finding", str(err)))
                continue
            if slide_id in seen:  # both would write <output>/<slide_id>/
                if seen[slide_id].resolve() != slide_path.resolve():
                    msg = (
                        f"{slide_path}: another slide of this run has the same name ({seen[slide_id]}) and its "
                        "outputs would overwrite it; rename one or predict them into different output folders"
                    )
                    run.failures.append(SlideFailure(slide_path, slide_id, "tiling", msg))
                continue
            seen[slide_id] = slide_path
            remove_stale_temporaries(out_dir, SLIDE_FILES)
            slide_key = slide_fingerprint(fingerprint, slide_path, manifest_mpp)
            done = load_finished(out_dir, slide_key, slide_path)
            if done is not None:
                logger.info("%s: outputs exist for this checkpoint and settings; skipped", slide_id)
                run.append(done)
                continue
            try:
                clear_slide_outputs(out_dir)
                job = self._tile(slide_path, manifest_mpp, out_dir, settings)
            except WSIError as err:
                run.failures.append(SlideFailure(slide_path, slide_id, "tiling", str(err)))
            except OSError as err:
                error = f"{out_dir}: cannot write the slide's tile table ({err.strerror}); check permissions and space"
                run.failures.append(SlideFailure(slide_path, slide_id, "tiling", error))
            except Exception as err:  # one bad slide must not stop the batch
                run.failures.append(SlideFailure(slide_path, slide_id, "tiling", f"{type(err).__name__}: {err}"))
            else:
                job.fingerprint = slide_key
                jobs.append(job)
        return jobs, {slide_id: i for i, slide_id in enumerate(seen)}

    def _tile(
        self, slide_path: Path, manifest_mpp: float | None, out_dir: Path, settings: PredictionSettings
    ) -> SlideJob:
        start = time.perf_counter()
        tiling = settings.tiling
        slide_mpp = manifest_mpp if manifest_mpp is not None else settings.slide_mpp
        slide = Slide(slide_path, mpp=slide_mpp)
        plan = slide.plan_read(tiling.mpp, tiling.tile_size_px)
        out_dir.mkdir(parents=True, exist_ok=True)
        table, tissue = load_or_tile(slide_path, tiling, out_dir, slide_mpp=slide_mpp)
        if tissue is not None:
            thumbnail, thumb_ds = tissue.thumbnail, tissue.downsample
        else:
            thumbnail, thumb_ds = slide.read_thumbnail(target_mpp=8.0)
        del tissue
        job = SlideJob(
            slide_path=slide_path,
            slide_id=slide.slide_id,
            slide_mpp=slide_mpp,
            out_dir=out_dir,
            plan=plan,
            table=table.reset_index(drop=True),
            slide_size_lv0=slide.dimensions,
            mpp=slide.mpp,
            stride_lv0=settings.stride_px * plan.tile_size_lv0 / tiling.tile_size_px,
            thumbnail=encode_thumbnail(thumbnail),
            thumbnail_downsample=thumb_ds,
            stored_tile_lv0=stored_tile_lv0(slide, plan.level),
        )
        job.timings["tiling_s"] = time.perf_counter() - start
        slide.close()
        return job

    def _stream(
        self,
        module: Any,
        jobs: list[SlideJob],
        settings: PredictionSettings,
        ckpt_path: Path | None,
        run: PredictionRun,
    ) -> Iterator[SlidePrediction]:
        """Score every tile of ``jobs``, finishing each slide as its last tile returns."""
        from anomalib_wsi.post_processing import HeatmapAccumulator

        if not jobs:
            return
        device = self._device()
        cells = int(getattr(module.post_processor, "heatmap_cells_per_tile", 1) or 1)
        for job in jobs:
            job.accumulator = HeatmapAccumulator(job.slide_size_lv0, job.plan.tile_size_lv0, job.stride_lv0, cells)
            job.started = time.perf_counter()
        map_cells = max(job.accumulator.cells_per_tile_side for job in jobs) if cells > 1 else 0
        forward = TileForward(
            module, device, settings.precision, self.compile_model, self.channels_last, self.batch_size, map_cells
        )
        stain = settings.stain
        on_device = stain is not None and stain.method == "macenko" and forward.backend.name == "torch"
        on_device = on_device and (self.stain_on == "device" or (self.stain_on == "auto" and device.type == "cuda"))
        loader, dataset, ring = make_tile_loader(jobs, self.batch_size, self.num_workers, stain, on_device)
        pending = {i for i, job in enumerate(jobs) if len(job.table) > 0}
        for job in jobs:  # slides without tissue tiles finish at once
            if len(job.table) == 0:
                yield from self._finish(module, job, settings, ckpt_path, run)
        bar = tqdm(total=dataset.n_tiles, desc="predicting", unit="tile", disable=not self.progress)
        start = time.perf_counter()
        stages = run.stage_seconds
        stages.update(dict.fromkeys(STAGES, 0.0))

        def consume(batch: dict[str, Any], launched: LaunchedBatch) -> Iterator[SlidePrediction]:
            slide_ids, indices, errors = batch["slide"], batch["index"], batch["error"]
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
                job.stain_unchanged += int(batch["stain_unchanged"][sel].sum())
                if job.done >= len(job.table) and int(slide_index) in pending:
                    pending.discard(int(slide_index))
                    job.timings["predict_s"] = time.perf_counter() - job.started
                    stages["stitch"] += time.perf_counter() - clock
                    clock = time.perf_counter()
                    yield from self._finish(module, job, settings, ckpt_path, run)
                    stages["outputs"] += time.perf_counter() - clock
                    clock = time.perf_counter()
            stages["stitch"] += time.perf_counter() - clock
            bar.update(len(slide_ids))
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                slides=f"{len(jobs) - len(pending)}/{len(jobs)}", tiles_s=f"{bar.n / max(elapsed, 1e-9):.0f}"
            )

        # one batch in flight: batch k+1 is queued on the device before the scores of batch k are collected
        previous: tuple[dict[str, Any], LaunchedBatch] | None = None
        batches = iter(loader)  # the workers start here; the ring is page-locked after the fork
        ring.register(forward.device)
        try:
            while True:
                clock = time.perf_counter()
                batch = next(batches, None)
                stages["wait_tiles"] += time.perf_counter() - clock
                if batch is None:
                    break
                clock = time.perf_counter()
                launched = forward.launch(ring.receive(batch["batch"], batch["count"]), batch["stain_od"])
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
        run.tiles_per_second = dataset.n_tiles / max(time.perf_counter() - start, 1e-9)

    def _finish(
        self,
        module: Any,
        job: SlideJob,
        settings: PredictionSettings,
        ckpt_path: Path | None,
        run: PredictionRun,
    ) -> Iterator[SlidePrediction]:
        """Post-process a slide whose tiles are all scored and write its files (or record why it failed)."""
        try:
            if job.error:
                run.failures.append(SlideFailure(job.slide_path, job.slide_id, "reading", job.error))
                return
            try:
                yield self._write(module, job, settings, ckpt_path)
            except WSIError as err:
                run.failures.append(SlideFailure(job.slide_path, job.slide_id, "writing", str(err)))
            except OSError as err:  # a full disk, a folder made read-only: this slide fails, the run goes on
                error = f"{job.out_dir}: cannot write the slide's outputs ({err.strerror}); check permissions and space"
                run.failures.append(SlideFailure(job.slide_path, job.slide_id, "writing", error))
            except Exception as err:  # one bad slide must not stop the batch
                logger.exception("%s: unexpected error while writing outputs", job.slide_id)
                error = f"{type(err).__name__}: {err}"
                run.failures.append(SlideFailure(job.slide_path, job.slide_id, "writing", error))
        finally:
            job.release()  # memory stays flat over a run of many slides

    def _write(
        self, module: Any, job: SlideJob, settings: PredictionSettings, ckpt_path: Path | None
    ) -> SlidePrediction:
        start = time.perf_counter()
        raw = job.accumulator.result()
        raw.slide_id = job.slide_id
        result = module.post_processor.process_slide(raw, job.mpp)
        heatmap = result.heatmap
        job.timings["post_s"] = time.perf_counter() - start
        summary = {
            "slide_id": job.slide_id,
            "slide_path": str(job.slide_path),
            "slide_score": float(result.slide_score),
            "n_tiles": len(job.table),
            "n_lesions": len(result.lesions),
            "n_detections": len(result.detections),
            "mpp": job.mpp,
            "tile_mpp": settings.tiling.mpp,
            "tile_size_px": settings.tiling.tile_size_px,
            "stride_px": settings.stride_px,
            "heatmap_downsample": float(heatmap.downsample),
            "heatmap_shape": list(heatmap.values.shape),
            "slide_size_lv0": list(job.slide_size_lv0),
            "timings": {k: round(v, 4) for k, v in job.timings.items()},
            "checkpoint": str(ckpt_path) if ckpt_path else None,
            "settings": {**settings.as_dict(), **post_processor_settings(module.post_processor)},
            "fingerprint": job.fingerprint,
        }
        if settings.stain is not None:  # tiles left as scanned: their slide's stain could not be estimated
            summary["stain_unchanged_tiles"] = job.stain_unchanged
        paths = write_slide_outputs(
            job.out_dir,
            heatmap,
            result.lesions,
            result.detections,
            summary,
            decode_thumbnail(job.thumbnail),
            job.thumbnail_downsample,
            post_processor=module.post_processor,
            raw_heatmap=raw,
        )
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

    def _device(self) -> torch.device:
        if self.device_name in {"auto", "cuda"} and torch.cuda.is_available():
            _, world, local_rank = distributed_rank()
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if world > 1 else "cuda")
        if self.device_name == "auto":
            return torch.device("cpu")
        return torch.device(self.device_name)


def encode_thumbnail(thumbnail: np.ndarray) -> bytes:
    """A thumbnail kept as PNG bytes (lossless, a tenth of the memory) while its slide waits for its tiles."""
    import cv2

    ok, data = cv2.imencode(".png", thumbnail, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        msg = "cannot encode the slide thumbnail"
        raise RuntimeError(msg)
    return data.tobytes()


def decode_thumbnail(data: bytes) -> np.ndarray:
    """The thumbnail of :func:`encode_thumbnail`, pixel for pixel."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:  # pragma: no cover - only bytes of encode_thumbnail reach here
        msg = "cannot decode the slide thumbnail"
        raise RuntimeError(msg)
    return np.asarray(image)


def _check_whole(value: object, what: str, option: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        msg = f"{what} must be a whole number of at least {minimum}, got {value!r} ({option})"
        raise WSIError(msg)


def _check_device(device: str) -> None:
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        msg = f"device must be auto, cpu, cuda or cuda:N, got {device!r} (--device)"
        raise WSIError(msg)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            msg = f"device {device} asked for, but no CUDA GPU is visible to this process; use --device cpu (or auto)"
            raise WSIError(msg)
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            msg = f"device {device} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
            raise WSIError(msg)
