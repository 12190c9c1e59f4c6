"""``anomalib-wsi benchmark camelyon16``: the paper's Camelyon16 protocol on a Camelyon16 download.

He & Li (MIDL 2023) train RDFocal on tiles of 10 tumour slides (tumor_001, 011, 022, 034, 045, 057, 070, 082,
095, 108; about 500 normal and 122 tumour tiles per slide) and test on the 129 test slides: slide AUC 0.9036,
against 0.6068 for plain reverse distillation. This runner checks the layout, writes the training manifest,
trains with the settings of the packaged ``rd_focal_wsi.yaml`` (:func:`anomalib_wsi.configs.load_config`, the same
file as ``configs/rd_focal_wsi.yaml``; ``--config`` overrides them), predicts the test
slides and evaluates them with the Camelyon16 protocol.

Expected layout under ``--root`` (the names of the official download)::

    training/tumor/tumor_001.tif ...      training/normal/normal_001.tif ...
    testing/images/test_001.tif ...       lesion_annotations/tumor_001.xml, test_001.xml ...
    reference.csv                          (Test_001,Tumor,Macro,... ; Test_002,Normal)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from anomalib_wsi.errors import WSIError

__all__ = [
    "PAPER_RESULTS",
    "PAPER_TRAIN_SLIDES",
    "PREDICT_SETTINGS",
    "benchmark_command",
    "check_layout",
    "default_settings",
    "plan_camelyon16",
]

logger = logging.getLogger(__name__)

#: The 10 tumour slides the paper trains on.
PAPER_TRAIN_SLIDES = tuple(f"tumor_{n:03d}" for n in (1, 11, 22, 34, 45, 57, 70, 82, 95, 108))

#: Slide AUCs the paper reports on the Camelyon16 test set.
PAPER_RESULTS = {"RDFocal (FW-RD), 10 tumour slides": 0.9036, "plain RD": 0.6068}

#: Prediction settings of the runner (``anomalib train`` has no predict section; ``--config`` may override them).
PREDICT_SETTINGS: dict[str, Any] = {"batch_size": 64, "num_workers": 8, "precision": "bf16"}

#: Data settings the runner sets itself (the manifest it writes and the annotation folder of the download).
_RUNNER_DATA_KEYS = frozenset({"root", "annotations"})


def default_settings() -> dict[str, Any]:
    """The runner's settings: the packaged ``rd_focal_wsi.yaml`` (``model``, ``data``, ``trainer``) and prediction.

    Returns:
        ``{"model": ..., "data": ..., "trainer": ..., "predict": ...}``, the config's ``init_args`` flattened; the
        data paths the runner writes itself (``root``, ``annotations``) are left out.
    """
    from anomalib_wsi.configs import load_config

    config = load_config("rd_focal_wsi")
    data = {k: v for k, v in config["data"]["init_args"].items() if k not in _RUNNER_DATA_KEYS}
    return {
        "model": dict(config["model"]["init_args"]),
        "data": data,
        "trainer": dict(config["trainer"]),
        "predict": dict(PREDICT_SETTINGS),
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


def plan_camelyon16(root: str | Path, output: str | Path) -> dict[str, Any]:
    """Check the layout and write the training manifest and the test labels; returns the plan."""
    root, output = Path(root), Path(output)
    parts = check_layout(root)
    rows = []
    for slide_id in PAPER_TRAIN_SLIDES:
        slide = _find(parts["tumor"], slide_id)
        annotation = _find(parts["annotations"], slide_id)
        if slide is None or annotation is None:
            what = "slide" if slide is None else "annotation"
            msg = f"{root}: the paper's training {what} {slide_id} is missing; the protocol needs all ten"
            raise WSIError(msg)
        rows.append({"slide_path": str(slide), "annotation_path": str(annotation), "label": "tumor"})
    manifest = pd.DataFrame(rows)
    output.mkdir(parents=True, exist_ok=True)
    manifest_path = output / "train_manifest.csv"
    manifest.to_csv(manifest_path, index=False)

    reference = pd.read_csv(parts["reference"], header=None)
    test_slides = {p.stem.lower(): p for p in parts["test"].iterdir() if p.is_file()}
    labels = []
    for case, label in zip(reference[0], reference[1], strict=True):
        stem = str(case).strip().lower()
        if stem not in test_slides:
            msg = f"{parts['reference']}: {case} has no slide in {parts['test']}; complete the download"
            raise WSIError(msg)
        labels.append({"slide_id": test_slides[stem].stem, "label": str(label).strip().lower()})
    labels_path = output / "test_labels.csv"
    pd.DataFrame(labels).to_csv(labels_path, index=False)
    return {
        "manifest": manifest_path,
        "labels": labels_path,
        "train_slides": [r["slide_path"] for r in rows],
        "test_slides": [str(test_slides[r["slide_id"].lower()]) for r in labels],
        "annotations": parts["annotations"],
        "test_dir": parts["test"],
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
    for section in ("model", "data", "trainer", "predict"):
        values = loaded.get(section) or {}
        if isinstance(values, dict) and "init_args" in values:
            values = values["init_args"]
        settings[section].update(values)
    return settings


def benchmark_command(
    dataset: str, root: str, output: str = "camelyon16_run", config: str | None = None, dry_run: bool = False
) -> int:
    """``anomalib-wsi benchmark camelyon16``: train, predict and evaluate as the paper did; prints the comparison."""
    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.engine import WSIEngine, trained_checkpoint
    from anomalib_wsi.evaluation.report import evaluate_command
    from anomalib_wsi.models.rd_focal import RDFocal

    if dataset != "camelyon16":
        msg = f"unknown benchmark {dataset!r}; available: camelyon16"
        raise WSIError(msg)
    out = Path(output)
    plan = plan_camelyon16(root, out)
    settings = _settings(config)
    logger.info(
        "Camelyon16: %d training slides, %d test slides; manifest %s",
        len(plan["train_slides"]),
        len(plan["test_slides"]),
        plan["manifest"],
    )
    if dry_run:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in plan.items()}, indent=2))
        return 0
    timings = {}
    start = time.perf_counter()
    datamodule = WSIDataModule(root=plan["manifest"], cache_dir=out / "tile_cache", **settings["data"])
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
    evaluate_command(
        predictions=str(out / "predictions"),
        annotations=str(plan["annotations"]),
        labels=str(plan["labels"]),
        output=str(out / "evaluation"),
        slides=str(plan["test_dir"]),
    )
    report = json.loads((out / "evaluation" / "report.json").read_text())
    comparison = {
        "slide_auc": report.get("slide_auc"),
        "slide_auc_ci95": report.get("slide_auc_ci"),
        "froc": report.get("froc_score"),
        "paper": PAPER_RESULTS,
        "checkpoint": str(ckpt),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "benchmark.json").write_text(json.dumps(comparison, indent=2, default=str))
    auc = comparison["slide_auc"]
    paper = ", ".join(f"{name} {value}" for name, value in PAPER_RESULTS.items())
    print(f"slide AUC {auc}  (paper: {paper})")  # the command's result, not progress
    print(f"FROC {comparison['froc']}; report: {out / 'evaluation' / 'report.md'}")
    return 0
