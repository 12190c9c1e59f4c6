"""``anomalib-wsi benchmark camelyon16``: the paper's Camelyon16 protocol on a Camelyon16 download.

He & Li (MIDL 2023) train RDFocal on tiles of 10 tumour slides (tumor_001, 011, 022, 034, 045, 057, 070, 082,
095, 108; 500 normal and up to 122 tumour tiles per slide) and test on the 129 test slides: slide AUC 0.9036,
against 0.6068 for plain reverse distillation. This runner checks the layout, writes the manifest (the 10 slides
train; two more annotated tumour slides and two normal slides of the training set validate, which sets the score
thresholds), trains with the settings of the packaged ``rd_focal_wsi.yaml`` (:func:`anomalib_wsi.configs.load_config`,
the same file as ``configs/rd_focal_wsi.yaml``; ``--config`` overrides them), predicts the test slides and
evaluates them with the Camelyon16 protocol.

With ``paper_patches`` (``--paper-patches DIR``, FW-RD's ``preprocess/coords`` folder) it trains on the paper's own
6,001 patches (``train_good.txt``, ``train_bad.txt``) instead of sampling tiles, and also runs the patch-level test of
the paper's code (FW-RD ``test.py``, ``evaluation_camelyon16``): the AUROC of the mean and of the max of each patch's
anomaly map over the 20,698 patches of ``test_good.txt`` and ``test_bad.txt``.

Expected layout under ``--root`` (the names of the official download)::

    training/tumor/tumor_001.tif ...      training/normal/normal_001.tif ...
    testing/images/test_001.tif ...       lesion_annotations/tumor_001.xml, test_001.xml ...
    reference.csv                          (Test_001,Tumor,Macro,... ; Test_002,Normal)

Over 500 lines on purpose: the layout checks, the plan, the run and the comparison with the paper's figures are one
protocol; the training, prediction and evaluation it calls live elsewhere.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from anomalib_wsi.errors import WSIError

__all__ = [
    "PAPER_PATCH_FILES",
    "PAPER_RESULTS",
    "PAPER_TRAIN_SLIDES",
    "PREDICT_SETTINGS",
    "VAL_SLIDES_PER_CLASS",
    "benchmark_command",
    "check_layout",
    "default_settings",
    "missing_message",
    "patch_level_test",
    "plan_camelyon16",
    "read_paper_patches",
    "score_patches",
]

logger = logging.getLogger(__name__)

#: The 10 tumour slides the paper trains on.
PAPER_TRAIN_SLIDES = tuple(f"tumor_{n:03d}" for n in (1, 11, 22, 34, 45, 57, 70, 82, 95, 108))

#: Slide AUCs the paper reports on the Camelyon16 test set.
PAPER_RESULTS = {"RDFocal (FW-RD), 10 tumour slides": 0.9036, "plain RD": 0.6068}

#: FW-RD's coordinate lists (``preprocess/coords``): file name -> (what it holds, patch label).
PAPER_PATCH_FILES: dict[str, tuple[str, int]] = {
    "train_good.txt": ("train", 0),
    "train_bad.txt": ("train", 1),
    "test_good.txt": ("test", 0),
    "test_bad.txt": ("test", 1),
}

#: Validation slides per class, from the Camelyon16 training slides that the paper does not train on.
VAL_SLIDES_PER_CLASS = 2

#: Prediction settings of the runner (``anomalib train`` has no predict section; ``--config`` may override them).
PREDICT_SETTINGS: dict[str, Any] = {"batch_size": 64, "num_workers": 8, "precision": "bf16"}

#: Data settings the runner sets itself (the manifest it writes and the annotation folder of the download).
_RUNNER_DATA_KEYS = frozenset({"root", "annotations"})


def default_settings() -> dict[str, Any]:
    """The runner's settings: the packaged ``rd_focal_wsi.yaml`` (``model``, ``data``, ``trainer``) and prediction.

    Returns:
        ``{"model": ..., "data": ..., "trainer": ..., "predict": ..., "seed_everything": ...}``, the config's
        ``init_args`` flattened; the data paths the runner writes itself (``root``, ``annotations``) are left out.
    """
    from anomalib_wsi.configs import load_config

    config = load_config("rd_focal_wsi")
    data = {k: v for k, v in config["data"]["init_args"].items() if k not in _RUNNER_DATA_KEYS}
    return {
        "model": dict(config["model"]["init_args"]),
        "data": data,
        "trainer": dict(config["trainer"]),
        "predict": dict(PREDICT_SETTINGS),
        "seed_everything": config.get("seed_everything"),
    }


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in sorted(folder.glob(f"{stem}.*")):
        if candidate.is_file():
            return candidate
    return None


def check_layout(root: Path) -> dict[str, Path]:
    """The Camelyon16 folders under ``root``; a missing one is a one-line error naming it."""
    parts = {
        "tumor": root / "training" / "tumor",
        "normal": root / "training" / "normal",
        "test": root / "testing" / "images",
        "annotations": root / "lesion_annotations",
        "reference": root / "reference.csv",
    }
    for name, path in parts.items():
        if not path.exists():
            msg = (
                f"{path}: missing from the Camelyon16 folder ({name}); expected training/tumor, training/normal, "
                "testing/images, lesion_annotations and reference.csv under --root"
            )
            raise WSIError(msg)
    return parts


def read_paper_patches(folder: str | Path) -> dict[str, pd.DataFrame]:
    """FW-RD's coordinate lists in ``folder``: ``{"train": ..., "test": ...}`` tables of patch centres and labels.

    Raises:
        WSIError: the folder or one of the four files of :data:`PAPER_PATCH_FILES` is missing, or a line is bad.
    """
    from anomalib_wsi.data.coordinates import read_coordinate_file

    folder = Path(folder)
    missing = [name for name in PAPER_PATCH_FILES if not (folder / name).is_file()]
    if missing:
        msg = (
            f"{folder}: --paper-patches needs FW-RD's coordinate lists ({', '.join(PAPER_PATCH_FILES)}); "
            f"missing {', '.join(missing)}"
        )
        raise WSIError(msg)
    tables: dict[str, list[pd.DataFrame]] = {"train": [], "test": []}
    for name, (part, label) in PAPER_PATCH_FILES.items():
        tables[part].append(read_coordinate_file(folder / name, label))
    return {part: pd.concat(frames, ignore_index=True) for part, frames in tables.items()}


def _patch_summary(patches: dict[str, pd.DataFrame]) -> dict[str, int]:
    train, test = patches["train"], patches["test"]
    return {
        "train_slides": int(train.slide_id.nunique()),
        "train_patches": len(train),
        "train_normal": int((train.label == 0).sum()),
        "train_tumour": int((train.label == 1).sum()),
        "test_slides": int(test.slide_id.nunique()),
        "test_patches": len(test),
        "test_normal": int((test.label == 0).sum()),
        "test_tumour": int((test.label == 1).sum()),
    }


def _validation_rows(parts: dict[str, Path], exclude: set[str]) -> list[dict[str, str]]:
    """The first annotated tumour slides and normal slides of the training set that do not train (validation)."""
    rows = []
    tumour = [
        p
        for p in sorted(parts["tumor"].iterdir())
        if p.is_file() and p.stem.lower() not in exclude and _find(parts["annotations"], p.stem) is not None
    ]
    for slide in tumour[:VAL_SLIDES_PER_CLASS]:
        annotation = _find(parts["annotations"], slide.stem)
        rows.append({"slide_path": str(slide), "annotation_path": str(annotation), "label": "tumor", "split": "val"})
    normal = [p for p in sorted(parts["normal"].iterdir()) if p.is_file()]
    for slide in normal[:VAL_SLIDES_PER_CLASS]:
        rows.append({"slide_path": str(slide), "annotation_path": "", "label": "normal", "split": "val"})
    return rows


def plan_camelyon16(root: str | Path, output: str | Path, paper_patches: str | Path | None = None) -> dict[str, Any]:
    """Check the download and write the manifest and the test labels; returns the plan.

    Args:
        root: the Camelyon16 folder (layout in the module docstring).
        output: where the manifest (``train_manifest.csv``) and ``test_labels.csv`` go.
        paper_patches: FW-RD's coordinate folder: its training lists name the training slides, and their slides
            and those of its test lists must be in the download.

    Returns:
        The plan: file paths, the training, validation and test slides, ``missing`` (the slides the protocol needs
        that the download lacks, by folder; see :func:`missing_message`) and, with ``paper_patches``, the patch
        counts of the lists.

    Raises:
        WSIError: a folder of the layout is missing, or the coordinate lists are.
    """
    root, output = Path(root), Path(output)
    parts = check_layout(root)
    patches = read_paper_patches(paper_patches) if paper_patches is not None else None
    missing: dict[str, list[str]] = {}
    train_ids = list(dict.fromkeys(patches["train"].slide_id)) if patches is not None else list(PAPER_TRAIN_SLIDES)
    rows = []
    for slide_id in train_ids:
        slide = _find(parts["tumor"], slide_id)
        annotation = _find(parts["annotations"], slide_id)
        if slide is None:
            missing.setdefault("training/tumor", []).append(slide_id)
        if annotation is None and patches is None:  # listed patches carry their labels; sampling needs the XML
            missing.setdefault("lesion_annotations", []).append(slide_id)
        if slide is not None and (annotation is not None or patches is not None):
            rows.append(
                {
                    "slide_path": str(slide),
                    "annotation_path": str(annotation or ""),
                    "label": "tumor",
                    "split": "train",
                }
            )
    validation = _validation_rows(parts, {slide_id.lower() for slide_id in train_ids})
    if not any(row["label"] == "tumor" for row in validation):
        missing.setdefault("training/tumor", []).append("an annotated tumour slide besides the training ones")
    output.mkdir(parents=True, exist_ok=True)
    manifest_path = output / "train_manifest.csv"
    pd.DataFrame(rows + validation, columns=["slide_path", "annotation_path", "label", "split"]).to_csv(
        manifest_path, index=False
    )

    reference = pd.read_csv(parts["reference"], header=None)
    test_slides = {p.stem.lower(): p for p in parts["test"].iterdir() if p.is_file()}
    labels = []
    for case, label in zip(reference[0], reference[1], strict=True):
        stem = str(case).strip().lower()
        if stem not in test_slides:
            missing.setdefault("testing/images", []).append(str(case).strip())
            continue
        labels.append({"slide_id": test_slides[stem].stem, "label": str(label).strip().lower()})
    if patches is not None:
        named = {case.lower() for case in missing.get("testing/images", [])}
        for slide_id in dict.fromkeys(patches["test"].slide_id):
            if slide_id.lower() not in test_slides and slide_id.lower() not in named:
                missing.setdefault("testing/images", []).append(slide_id)
    labels_path = output / "test_labels.csv"
    pd.DataFrame(labels, columns=["slide_id", "label"]).to_csv(labels_path, index=False)
    plan: dict[str, Any] = {
        "manifest": manifest_path,
        "labels": labels_path,
        "train_slides": [r["slide_path"] for r in rows],
        "val_slides": [r["slide_path"] for r in validation],
        "test_slides": [str(test_slides[r["slide_id"].lower()]) for r in labels],
        "annotations": parts["annotations"],
        "test_dir": parts["test"],
        "missing": missing,
    }
    if patches is not None:
        plan["paper_patches"] = {"folder": str(paper_patches), **_patch_summary(patches)}
    return plan


def missing_message(plan: dict[str, Any], root: str | Path) -> str | None:
    """One line naming every slide the protocol needs that the download lacks; None when nothing is missing."""
    from anomalib_wsi.data.coordinates import name_list

    missing = plan.get("missing") or {}
    if not missing:
        return None
    total = sum(len(names) for names in missing.values())
    groups = "; ".join(f"{folder}: {name_list(names)}" for folder, names in missing.items())
    return f"{root}: {total} slides the protocol needs are missing ({groups}); complete the download"


class _PatchImages(Dataset[tuple[torch.Tensor, int]]):
    """Listed patches as ``(uint8 HWC image, label)`` pairs for a DataLoader (each worker opens its own slides)."""

    def __init__(self, samples: pd.DataFrame, mpp: float) -> None:
        from anomalib_wsi.data.dataset import WSITileDataset

        self.tiles = WSITileDataset(samples, mpp, with_masks=False)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.tiles.read_image(index)), int(self.tiles.samples.label_index.iloc[index])


def score_patches(
    model: Any,
    samples: pd.DataFrame,
    mpp: float,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | None = None,
) -> pd.DataFrame:
    """The mean and the max of each listed patch's anomaly map, as FW-RD's ``evaluation_camelyon16`` scores them.

    The raw anomaly map of each patch (no normalisation), in float32 without autocast: its mean is FW-RD's
    ``pr_list_sp_mean`` and its maximum ``pr_list_sp_max``.

    Args:
        model: a trained :class:`~anomalib_wsi.models.rd_focal.RDFocal`.
        samples: tile rows of the patches (:func:`anomalib_wsi.data.coordinates.patch_samples`) with ``label_index``.
        mpp: the resolution the tiles are read at (the training data's).
        batch_size: patches per forward pass.
        num_workers: DataLoader workers reading patches.
        device: torch device (default: CUDA when available).

    Returns:
        ``samples`` with ``mean_score`` and ``max_score`` columns.
    """
    from anomalib_wsi.models.rd_focal import tile_score

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(target).eval()
    loader = DataLoader(_PatchImages(samples, mpp), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    means, maxima = [], []
    with torch.no_grad():
        for images, _ in loader:
            batch = images.to(target).permute(0, 3, 1, 2).float().div_(255.0)
            if model.pre_processor is not None:
                batch = model.pre_processor(batch)
            anomaly_map = model.model(batch).anomaly_map
            means.append(tile_score(anomaly_map, "mean").flatten().cpu())
            maxima.append(tile_score(anomaly_map, "max").flatten().cpu())
    scores = samples.reset_index(drop=True).copy()
    scores["mean_score"] = torch.cat(means).numpy() if means else np.zeros(0, dtype=np.float32)
    scores["max_score"] = torch.cat(maxima).numpy() if maxima else np.zeros(0, dtype=np.float32)
    return scores


def patch_level_test(scores: pd.DataFrame) -> dict[str, Any]:
    """The paper code's patch-level test: AUROC of the mean and of the max tile scores against the patch labels.

    Args:
        scores: a table from :func:`score_patches` (``label_index``, ``mean_score``, ``max_score``).

    Returns:
        ``{"auroc_mean", "auroc_max", "patches", "normal", "tumour"}``; an AUROC is None when one class is absent.
    """
    from sklearn.metrics import roc_auc_score

    truth = scores["label_index"].to_numpy().astype(int)
    both = len(np.unique(truth)) == 2

    def auroc(column: str) -> float | None:
        return round(float(roc_auc_score(truth, scores[column].to_numpy())), 4) if both else None

    return {
        "auroc_mean": auroc("mean_score"),
        "auroc_max": auroc("max_score"),
        "patches": len(truth),
        "normal": int((truth == 0).sum()),
        "tumour": int((truth == 1).sum()),
    }


def _settings(config: str | Path | None) -> dict[str, Any]:
    settings = default_settings()
    if config is None:
        return settings
    path = Path(config)
    if not path.is_file():
        msg = f"{path}: config not found; pass a YAML with model/data/trainer/predict sections"
        raise WSIError(msg)
    loaded = yaml.safe_load(path.read_text()) or {}
    if "seed_everything" in loaded:
        settings["seed_everything"] = loaded["seed_everything"]
    for section in ("model", "data", "trainer", "predict"):
        values = loaded.get(section) or {}
        if isinstance(values, dict) and "init_args" in values:
            values = values["init_args"]
        settings[section].update(values)
    return settings


def _printable(plan: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in plan.items()}


def benchmark_command(
    dataset: str,
    root: str,
    output: str = "camelyon16_run",
    config: str | None = None,
    dry_run: bool = False,
    paper_patches: str | None = None,
) -> int:
    """``anomalib-wsi benchmark camelyon16``: train, predict and evaluate as the paper did; prints the comparison.

    Args:
        dataset: ``"camelyon16"``.
        root: the Camelyon16 download.
        output: folder of the run (manifest, checkpoint, predictions, evaluation, ``benchmark.json``).
        config: a YAML whose ``model``, ``data``, ``trainer``, ``predict`` sections override the packaged settings.
        dry_run: check the download and print the plan; train nothing.
        paper_patches: FW-RD's coordinate folder: train on its 6,001 patches and add the patch-level test.

    Raises:
        WSIError: an unknown benchmark, a layout or list that is missing, or slides missing from the download
            (named, also after a dry run's plan).
    """
    if dataset != "camelyon16":
        msg = f"unknown benchmark {dataset!r}; available: camelyon16"
        raise WSIError(msg)
    out = Path(output)
    plan = plan_camelyon16(root, out, paper_patches)
    settings = _settings(config)
    logger.info(
        "Camelyon16: %d training slides, %d validation slides, %d test slides; manifest %s",
        len(plan["train_slides"]),
        len(plan["val_slides"]),
        len(plan["test_slides"]),
        plan["manifest"],
    )
    if dry_run:
        print(json.dumps(_printable(plan), indent=2))  # the command's result: the plan
    problem = missing_message(plan, root)
    if problem is not None:
        raise WSIError(problem)
    if dry_run:
        return 0
    comparison = _run(plan, settings, out, paper_patches)
    (out / "benchmark.json").write_text(json.dumps(comparison, indent=2, default=str))
    paper = ", ".join(f"{name} {value}" for name, value in PAPER_RESULTS.items())
    print(f"slide AUC {comparison['slide_auc']}  (paper: {paper})")  # the command's result, not progress
    print(f"FROC {comparison['froc']}; report: {out / 'evaluation' / 'report.md'}")
    patch = comparison.get("patch_level")
    if patch is not None:
        print(f"patch AUROC mean {patch['auroc_mean']}, max {patch['auroc_max']} ({patch['patches']} test patches)")
    return 0


def _run(plan: dict[str, Any], settings: dict[str, Any], out: Path, paper_patches: str | None) -> dict[str, Any]:
    """Train, predict, evaluate (and with ``paper_patches`` the patch-level test); returns the comparison."""
    from anomalib_wsi.data.coordinates import patch_samples
    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.evaluation.report import evaluate, write_report
    from anomalib_wsi.inference import WSIEngine, trained_checkpoint
    from anomalib_wsi.models.rd_focal import RDFocal

    if settings.get("seed_everything") is not None:
        from lightning.pytorch import seed_everything

        seed_everything(int(settings["seed_everything"]), workers=True)
    data = dict(settings["data"])
    if paper_patches is not None:
        folder = Path(paper_patches)
        data["coordinates"] = [
            f"{folder / name}:{label}" for name, (part, label) in PAPER_PATCH_FILES.items() if part == "train"
        ]
    timings = {}
    start = time.perf_counter()
    datamodule = WSIDataModule(root=plan["manifest"], cache_dir=out / "tile_cache", **data)
    model = RDFocal(**settings["model"])
    engine = WSIEngine(default_root_dir=out / "results", **settings["trainer"])
    engine.fit(model=model, datamodule=datamodule)
    ckpt = trained_checkpoint(engine, out / "model.ckpt")
    timings["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    predict = settings["predict"]
    predictor = WSIEngine(
        batch_size=int(predict["batch_size"]),
        num_workers=int(predict["num_workers"]),
        precision=str(predict["precision"]),
    )
    predictor.predict(model=RDFocal, ckpt_path=ckpt, slides=plan["test_slides"], output_dir=out / "predictions")
    timings["predict_s"] = time.perf_counter() - start
    evaluation = evaluate(
        predictions=out / "predictions",
        annotations=plan["annotations"],
        labels=plan["labels"],
        slides=plan["test_dir"],
    )
    write_report(evaluation, out / "evaluation")
    report = evaluation.to_dict()
    comparison: dict[str, Any] = {
        "slide_auc": report.get("slide_auc"),
        "slide_auc_ci95": report.get("slide_auc_ci"),
        "froc": report.get("froc_score"),
        "paper": PAPER_RESULTS,
        "checkpoint": str(ckpt),
    }
    if paper_patches is not None:
        start = time.perf_counter()
        test = read_paper_patches(paper_patches)["test"]
        slides = {Path(p).stem.lower(): Path(p) for p in plan["test_slides"]}
        samples = patch_samples(test, {s: slides[s.lower()] for s in test.slide_id.unique()}, datamodule.tile_size_px)
        trained = RDFocal.load_from_checkpoint(ckpt)
        scores = score_patches(
            trained,
            samples,
            datamodule.mpp,
            batch_size=int(predict["batch_size"]),
            num_workers=int(predict["num_workers"]),
        )
        columns = ["slide_id", "x_center", "y_center", "label_index", "mean_score", "max_score"]
        scores[columns].rename(columns={"label_index": "label"}).to_csv(out / "patch_scores.csv", index=False)
        comparison["patch_level"] = patch_level_test(scores)
        comparison["patch_scores"] = str(out / "patch_scores.csv")
        timings["patch_test_s"] = time.perf_counter() - start
    comparison["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return comparison
