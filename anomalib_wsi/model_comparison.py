"""``anomalib-wsi benchmark models``: anomalib image models trained on one split of one cohort, compared in one table.

Every model is built by :func:`~anomalib_wsi.models.anomalib_models.wsi_model` (the slide post-processor, tiles at
their own size, a resnet-family backbone), trained by :class:`~anomalib_wsi.inference.WSIEngine` on the same
:class:`~anomalib_wsi.data.datamodule.WSIDataModule` split (same settings, same seed: the same slides and the same
sampled tiles; one-class models get the normal ones only), then predicts the same held-out slides (the test split)
and is evaluated with the Camelyon16 protocol (:func:`~anomalib_wsi.evaluation.report.evaluate`, one report per
model). The table has one row per model:

- ``slide_auc`` with its 95% bootstrap interval (``slide_auc_ci_low``, ``slide_auc_ci_high``; 1,000 resamples)
  and the lesion ``froc`` of the held-out slides;
- ``tile_auroc``: AUROC of the raw tile scores over the data module's labelled test tiles (``test_tiles`` of
  them, scored as prediction scores them), empty when the test tiles lack a class;
- ``train_seconds`` (``engine.fit``, after the data module has tiled the slides), ``predict_tiles_per_second``
  (:attr:`~anomalib_wsi.inference.settings.PredictionRun.tiles_per_second`);
- ``peak_rss_mib``: the peak resident memory of the process that trained and predicted the model, from
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Each model runs in a fresh (spawned) process, so the figure is
  that model's own, including the 1.1 GB or so that torch and anomalib take once imported; on Linux that process
  hands freed blocks above 128 KiB back to the system at once (glibc ``mallopt``), so the figure is what the model
  holds, not what the allocator kept (see :func:`_return_large_blocks_to_the_system`);
- ``train_tiles`` and ``train_tumour_tiles``: what the model learnt from (0 tumour tiles for one-class models).

A model that fails (a backbone it cannot build offline, say) gets a row with the reason in ``note`` and the other
models still run.

By default the cohort is synthetic (:data:`SYNTHETIC_COHORT`: 10 slides, 3072 px at 0.5 µm/px, half with tumour,
written under the output folder) and the models are tiny (:data:`MODEL_SETTINGS`: resnet18 with random weights,
64 px tiles at 1 µm/px, 2 epochs), so the whole comparison runs in minutes on two CPU cores: it checks the wiring,
it says nothing about which model is better on real slides. ``root`` takes any cohort folder or manifest that
``WSIDataModule`` reads, and ``weights_path`` a local file of pre-trained backbone weights.

Over 500 lines on purpose: the split, the per-model subprocess, the tile AUROC and the table are one command's
protocol; training, prediction and evaluation it calls live elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from anomalib_wsi.errors import WSIError
from anomalib_wsi.files import atomic_write_csv, atomic_write_text

__all__ = [
    "COLUMNS",
    "DEFAULT_MODELS",
    "MODEL_SETTINGS",
    "PEAK_MEMORY_NOTE",
    "SPLIT",
    "SYNTHETIC_COHORT",
    "ModelRow",
    "compare_models",
    "markdown_table",
    "models_command",
    "parse_model_names",
]

logger = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter of the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3

#: The models compared when none are named.
DEFAULT_MODELS = ("RDFocal", "ReverseDistillation", "Padim", "Patchcore", "Stfpm")

#: Each model's own settings besides the backbone (keyed by class name): small layers, few flow steps, a coreset
#: small enough for CPU. Models not listed get their defaults.
MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    "RDFocal": {"layers": ["layer1", "layer2", "layer3"], "loss": "focal", "visualizer": False},
    "Padim": {"layers": ["layer1", "layer2"]},
    "Patchcore": {"layers": ["layer2", "layer3"], "coreset_sampling_ratio": 0.1},
    "Fastflow": {"flow_steps": 2},
}

#: The synthetic cohort of the default run (``synthesize_cohort`` arguments).
SYNTHETIC_COHORT: dict[str, Any] = {"n_slides": 10, "size_px": 3072, "mpp": 0.5}

#: Share of slides for validation (the post-processor's thresholds) and for the held-out test, per class.
SPLIT = {"val_ratio": 0.2, "test_ratio": 0.4}

#: How the peak memory is measured (printed and written under the table).
PEAK_MEMORY_NOTE = (
    "peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss of the fresh process that trained and predicted the model "
    "(the torch and anomalib imports included)"
)

#: Columns of ``models.csv``, in order.
COLUMNS = (
    "model",
    "slide_auc",
    "slide_auc_ci_low",
    "slide_auc_ci_high",
    "froc",
    "tile_auroc",
    "test_tiles",
    "train_seconds",
    "predict_tiles_per_second",
    "peak_rss_mib",
    "train_tiles",
    "train_tumour_tiles",
    "note",
)


@dataclass
class ModelRow:
    """One model's row of the comparison (see the module docstring for each figure)."""

    model: str
    slide_auc: float | None = None
    slide_auc_ci_low: float | None = None
    slide_auc_ci_high: float | None = None
    froc: float | None = None
    tile_auroc: float | None = None
    test_tiles: int = 0
    train_seconds: float | None = None
    predict_tiles_per_second: float | None = None
    peak_rss_mib: float | None = None
    train_tiles: int = 0
    train_tumour_tiles: int = 0
    note: str = ""
    folder: str = ""
    test_slides: list[str] = field(default_factory=list)

    def table_row(self) -> dict[str, Any]:
        """The row as ``models.csv`` holds it (numbers rounded, empty for missing)."""
        digits = {"train_seconds": 1, "predict_tiles_per_second": 1, "peak_rss_mib": 0}
        row: dict[str, Any] = {}
        for name in COLUMNS:
            value = getattr(self, name)
            if isinstance(value, float):
                value = "" if not math.isfinite(value) else round(value, digits.get(name, 4))
            row[name] = "" if value is None else value
        return row


def parse_model_names(models: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The anomalib class names of ``--models`` (comma-separated, any case: ``rdfocal,PatchCore,stfpm``).

    Raises:
        ModelError: a name that is no anomalib model (the message lists the known ones), or an empty list.
    """
    from anomalib_wsi.models.anomalib_models import ModelError, model_class

    if models is None:
        return list(DEFAULT_MODELS)
    names = models.split(",") if isinstance(models, str) else list(models)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        msg = f"--models {models!r}: no model named; pass e.g. --models {','.join(DEFAULT_MODELS)}"
        raise ModelError(msg)
    resolved = [model_class(name).__name__ for name in names]
    return list(dict.fromkeys(resolved))


def _model_kwargs(name: str, backbone: str, weights_path: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"backbone": backbone, **MODEL_SETTINGS.get(name, {})}
    if weights_path is None:
        kwargs["pre_trained"] = False
    return kwargs


# -- one model, in its own process --------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return float(peak) / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def _score_tiles(module: Any, dataset: Any, batch_size: int) -> tuple[list[float], list[int]]:
    """Raw scores of a tile dataset's tiles, as prediction computes them (the same torch forward)."""
    import numpy as np
    import torch

    from anomalib_wsi.inference.forward import TileForward

    forward = TileForward(module, torch.device("cuda" if torch.cuda.is_available() else "cpu"), "32", False)
    labels = [int(v) for v in dataset.samples["label_index"].tolist()]
    scores: list[float] = []
    for start in range(0, len(dataset), batch_size):
        images = np.stack([dataset.read_image(i) for i in range(start, min(start + batch_size, len(dataset)))])
        batch_scores, _ = forward(torch.from_numpy(images))
        scores.extend(float(s) for s in batch_scores)
    return scores, labels


def _return_large_blocks_to_the_system() -> None:
    """glibc only: serve every allocation above 128 KiB by its own mapping, released when freed.

    With glibc's default (a threshold that rises after the first large block is freed), anomalib's PatchCore
    coreset loop, which allocates a patches x features temporary per selected patch, now and then kept them all:
    2.6 GB instead of 1.1 GB peak for 4,800 patches in one of five identical runs, 13.8 GB in a comparison run.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model, predict the held-out slides, score the test tiles; runs in a fresh process."""
    _return_large_blocks_to_the_system()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _train_and_predict(job)
    except WSIError as err:
        return {"error": str(err)}


def _train_and_predict(job: dict[str, Any]) -> dict[str, Any]:
    import lightning
    import torch
    from lightning.pytorch.trainer.states import TrainerFn
    from sklearn.metrics import roc_auc_score

    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.inference import WSIEngine, load_model, trained_checkpoint
    from anomalib_wsi.models import wsi_model

    torch.set_num_threads(int(job["threads"]))
    folder = Path(job["folder"])
    lightning.seed_everything(int(job["seed"]), workers=True, verbose=False)
    datamodule = WSIDataModule(**job["data"])
    model = wsi_model(
        job["model"], image_size=job["data"]["tile_size_px"], weights_path=job["weights_path"], **job["model_kwargs"]
    )
    engine = WSIEngine(
        default_root_dir=folder / "results",
        max_epochs=int(job["epochs"]),
        accelerator="auto",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule.setup(TrainerFn.FITTING)  # tiling (cached for the next models) is not training time
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    ckpt = trained_checkpoint(engine, folder / "model.ckpt")
    test_slides = sorted(str(r.slide_path) for r in datamodule.records if r.split == "test")
    # what the model learnt from: fit's train_dataloader left the normal tiles only for a one-class model
    counts = datamodule.train_data.samples["label_index"].value_counts().to_dict()

    predictor = WSIEngine(batch_size=64, num_workers=int(job["num_workers"]), device="auto", progress=False)
    run = predictor.predict(model=type(model), ckpt_path=ckpt, slides=test_slides, output_dir=folder / "predictions")
    module, _ = load_model(type(model), ckpt)
    scores, labels = _score_tiles(module, datamodule.test_data, batch_size=64)
    tile_auroc = float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None
    return {
        "train_seconds": train_seconds,
        "predict_tiles_per_second": run.tiles_per_second,
        "peak_rss_mib": _peak_rss_mib(),
        "tile_auroc": tile_auroc,
        "test_tiles": len(labels),
        "train_tiles": int(sum(counts.values())),
        "train_tumour_tiles": int(counts.get(1, 0)),
        "test_slides": test_slides,
        "failures": [f"{f.slide_id}: {f.error}" for f in run.failures],
        "checkpoint": str(ckpt),
    }


def _in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(_run_one, job).result()
        except BrokenProcessPool:
            return {"error": "its process ended without a result (killed, e.g. out of memory)"}


# -- the comparison -----------------------------------------------------------------------------------------------


def _cohort(root: str | Path | None, output: Path, seed: int) -> Path:
    if root is not None:
        return Path(root)
    path = output / "cohort"
    if not (path / "labels.csv").is_file():  # written last: its presence means a complete cohort
        from anomalib_wsi.data.synthetic import synthesize_cohort

        logger.info("writing the synthetic cohort to %s", path)
        synthesize_cohort(path, seed=seed, **SYNTHETIC_COHORT)
    return path


def _ground_truth(records: list[Any], folder: Path) -> Path:
    """A folder of the test slides' annotation files named after the slides, as the evaluation looks them up."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for record in records:
        if record.annotation_path is not None:
            target = folder / f"{record.slide_id}{Path(record.annotation_path).suffix.lower()}"
            try:
                target.symlink_to(Path(record.annotation_path).resolve())
            except OSError:
                shutil.copyfile(record.annotation_path, target)
    return folder


def _slide_mpp(records: list[Any]) -> float:
    from anomalib_wsi.evaluation.froc import CAMELYON16_MPP
    from anomalib_wsi.slide import Slide

    for record in records:
        if record.mpp is not None:
            return float(record.mpp)
        try:
            slide = Slide(record.slide_path)
            mpp = slide.mpp
            slide.close()
        except WSIError:
            continue
        if mpp:
            return float(mpp)
    return CAMELYON16_MPP


def compare_models(
    models: str | list[str] | None = None,
    root: str | Path | None = None,
    output: str | Path = "model_comparison",
    epochs: int = 2,
    seed: int = 0,
    mpp: float = 1.0,
    tile_size_px: int = 64,
    tiles_per_slide: int = 100,
    backbone: str = "resnet18",
    weights_path: str | Path | None = None,
    num_workers: int = 0,
) -> list[ModelRow]:
    """Train, predict and evaluate each model on the same split; write ``models.csv``, ``models.md``, ``models.json``.

    Args:
        models: model names (see :func:`parse_model_names`); default :data:`DEFAULT_MODELS`.
        root: a cohort folder or manifest (``WSIDataModule``'s ``root``); default a synthetic cohort written to
            ``<output>/cohort``.
        output: the run's folder: one sub-folder per model (checkpoint, ``predictions/``, ``evaluation/``) and the
            tables.
        epochs: training epochs (memory-bank models such as Padim and PatchCore always take one).
        seed: seed of the synthetic cohort, the split, the tile sampling and the training.
        mpp: resolution tiles are read at, µm per pixel.
        tile_size_px: tile side (the models see tiles at this size; a multiple of 32).
        tiles_per_slide: normal training tiles per training slide, and labelled test tiles per test slide; tumour
            slides give half as many tumour tiles to the models that learn from them (RDFocal).
        backbone: every model's backbone (a torchvision/timm resnet name).
        weights_path: local pre-trained weights of that backbone (default: random weights).
        num_workers: DataLoader workers for training and prediction.

    Returns:
        One :class:`ModelRow` per model, in the order given.

    Raises:
        WSIError: an unknown model, an option out of range, a missing root or weights file, or a cohort without
            held-out slides.
    """
    import pandas as pd
    import torch

    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.evaluation.report import evaluate, write_report

    names = parse_model_names(models)
    if not isinstance(epochs, int) or epochs < 1:
        msg = f"--epochs {epochs}: pass a whole number of epochs, 1 or more"
        raise WSIError(msg)
    if not isinstance(tile_size_px, int) or tile_size_px < 32 or tile_size_px % 32:
        msg = f"--tile-size {tile_size_px}: the backbones need a multiple of 32 px; pass e.g. --tile-size 64"
        raise WSIError(msg)
    if not isinstance(tiles_per_slide, int) or tiles_per_slide < 1:
        msg = f"--tiles-per-slide {tiles_per_slide}: pass a whole number of tiles, 1 or more"
        raise WSIError(msg)
    if not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        msg = f"--mpp {mpp}: the tile resolution must be a positive number of µm per pixel; pass e.g. --mpp 0.5"
        raise WSIError(msg)
    if weights_path is not None and not Path(weights_path).is_file():
        msg = f"--weights-path {weights_path}: file not found; pass a local .pth or .safetensors of {backbone}"
        raise WSIError(msg)
    if root is not None and not Path(root).exists():
        msg = f"--root {root}: no such cohort folder or manifest; pass one, or leave --root out for a synthetic one"
        raise WSIError(msg)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cohort = _cohort(root, out, seed)
    data: dict[str, Any] = {
        "root": str(cohort),
        "cache_dir": str(out / "tile_cache"),
        "mpp": float(mpp),
        "tile_size_px": int(tile_size_px),
        "normal_tiles_per_slide": int(tiles_per_slide),
        "tumour_tiles_per_slide": max(1, int(tiles_per_slide) // 2),
        "eval_tiles_per_slide": int(tiles_per_slide),
        "num_workers": int(num_workers),
        "seed": int(seed),
        "synthesize_if_missing": False,
        **SPLIT,
    }
    records = [r for r in WSIDataModule(**data).discover() if r.split == "test"]
    if not records:
        msg = f"{cohort}: no slide is left for the held-out test (the split needs 3 or more slides); add slides"
        raise WSIError(msg)
    labels_csv = out / "test_labels.csv"
    labels = {"slide_id": [r.slide_id for r in records], "label": ["tumor" if r.label else "normal" for r in records]}
    atomic_write_csv(labels_csv, pd.DataFrame(labels))
    truth = _ground_truth(records, out / "ground_truth")
    slide_mpp = _slide_mpp(records)
    expected = sorted(str(r.slide_path) for r in records)
    logger.info("%d held-out slides (%d with tumour)", len(records), sum(bool(r.label) for r in records))

    rows = []
    for name in names:
        folder = out / name
        job = {
            "model": name,
            "model_kwargs": _model_kwargs(name, backbone, None if weights_path is None else str(weights_path)),
            "weights_path": None if weights_path is None else str(weights_path),
            "data": data,
            "folder": str(folder),
            "epochs": int(epochs),
            "seed": int(seed),
            "threads": torch.get_num_threads(),
            "num_workers": int(num_workers),
        }
        logger.info("%s: training and predicting %d held-out slides", name, len(records))
        result = _in_fresh_process(job)
        row = ModelRow(model=name, folder=str(folder))
        if "error" in result:
            row.note = f"failed: {result['error']}"
            logger.warning("%s failed: %s", name, result["error"])
            rows.append(row)
            continue
        if result["test_slides"] != expected:  # the split is drawn from the seed: a difference is a bug
            msg = f"{name} held out other slides than the comparison ({result['test_slides']} vs {expected})"
            raise RuntimeError(msg)
        for key in ("train_seconds", "predict_tiles_per_second", "peak_rss_mib", "tile_auroc"):
            setattr(row, key, result[key])
        row.test_tiles, row.train_tiles = result["test_tiles"], result["train_tiles"]
        row.train_tumour_tiles, row.test_slides = result["train_tumour_tiles"], result["test_slides"]
        if result["failures"]:
            row.note = f"{len(result['failures'])} slides failed: {'; '.join(result['failures'])[:300]}"
        if len(result["failures"]) < len(records):
            report = evaluate(
                predictions=folder / "predictions",
                annotations=truth,
                labels=labels_csv,
                mpp=slide_mpp,
                seed=int(seed),
            )
            write_report(report, folder / "evaluation")
            summary = report.to_dict()
            row.slide_auc, row.froc = summary["slide_auc"], summary["froc_score"]
            if summary["slide_auc_ci"] is not None:
                row.slide_auc_ci_low, row.slide_auc_ci_high = summary["slide_auc_ci"]
        rows.append(row)
    _write_tables(rows, out, {"cohort": str(cohort), "held_out_slides": len(records), "epochs": epochs})
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[ModelRow]) -> str:
    """The comparison as a Markdown table (the one ``models.md`` holds and the command prints)."""
    lines = [
        "| model | slide AUC (95% CI) | FROC | tile AUROC (tiles) | train s | predict tiles/s | peak RSS MiB "
        "| train tiles (tumour) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ci = (
            f" ({row.slide_auc_ci_low:.2f}-{row.slide_auc_ci_high:.2f})"
            if row.slide_auc_ci_low is not None and row.slide_auc_ci_high is not None
            else ""
        )
        cells = [
            row.model,
            _fmt(row.slide_auc) + ci,
            _fmt(row.froc),
            f"{_fmt(row.tile_auroc)} ({row.test_tiles})",
            _fmt(row.train_seconds, 1),
            _fmt(row.predict_tiles_per_second, 0),
            _fmt(row.peak_rss_mib, 0),
            f"{row.train_tiles} ({row.train_tumour_tiles})",
        ]
        if row.note:
            cells[0] += f" ({row.note})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_tables(rows: list[ModelRow], out: Path, settings: dict[str, Any]) -> None:
    import pandas as pd

    table = pd.DataFrame([row.table_row() for row in rows], columns=list(COLUMNS))
    atomic_write_csv(out / "models.csv", table, text_columns=("model", "note"))
    atomic_write_text(out / "models.md", markdown_table(rows) + "\n" + PEAK_MEMORY_NOTE + "\n")
    atomic_write_text(
        out / "models.json", json.dumps({**settings, "models": [asdict(r) for r in rows]}, indent=2) + "\n"
    )


def models_command(
    models: str | None = None,
    root: str | None = None,
    output: str = "model_comparison",
    epochs: int = 2,
    seed: int = 0,
    mpp: float = 1.0,
    tile_size: int = 64,
    tiles_per_slide: int = 100,
    backbone: str = "resnet18",
    weights_path: str | None = None,
    num_workers: int = 0,
) -> int:
    """``anomalib-wsi benchmark models``: run :func:`compare_models` and print its table; 1 when a model failed."""
    rows = compare_models(
        models,
        root=root,
        output=output,
        epochs=epochs,
        seed=seed,
        mpp=mpp,
        tile_size_px=tile_size,
        tiles_per_slide=tiles_per_slide,
        backbone=backbone,
        weights_path=weights_path,
        num_workers=num_workers,
    )
    held_out = len(rows[0].test_slides) if rows and rows[0].test_slides else "the"
    print(f"\n{len(rows)} models, {held_out} held-out slides; tables: {Path(output) / 'models.csv'}, models.md\n")
    print(markdown_table(rows))  # the command's result, not progress logging
    print(PEAK_MEMORY_NOTE)
    return 1 if any(row.note.startswith("failed") for row in rows) else 0
