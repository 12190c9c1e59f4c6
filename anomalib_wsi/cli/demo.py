"""``anomalib-wsi demo``: synthetic cohort -> train RDFocal -> predict held-out slides -> evaluate, on CPU.

The settings are the packaged ``rd_focal_demo.yaml`` (the same file as ``configs/rd_focal_demo.yaml``), so the
demo shows what ``anomalib train --config configs/rd_focal_demo.yaml`` trains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from jsonargparse import ArgumentParser

from anomalib_wsi.configs import load_config

__all__ = ["DEMO_DATA", "DEMO_MODEL", "DEMO_TRAINER", "demo_command", "parser", "run", "run_demo"]

_CONFIG = load_config("rd_focal_demo")
#: ``model.init_args`` of the demo config.
DEMO_MODEL: dict[str, Any] = dict(_CONFIG["model"]["init_args"])
#: ``data.init_args`` of the demo config (``root`` is replaced by the demo's own folder).
DEMO_DATA: dict[str, Any] = dict(_CONFIG["data"]["init_args"])
#: ``trainer`` section of the demo config.
DEMO_TRAINER: dict[str, Any] = dict(_CONFIG["trainer"])


def parser() -> ArgumentParser:
    """The sub-command's options."""
    p = ArgumentParser(description="Synthetic cohort -> train RDFocal -> predict -> evaluate, on CPU in minutes.")
    p.add_argument("--output", default="demo_output", help="folder for the cohort, the model and the results")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(**options: Any) -> int:
    """Run the sub-command; returns the exit status."""
    return demo_command(**options)


def run_demo(output: str | Path = "demo_output", seed: int = 0, max_epochs: int | None = None) -> dict[str, Any]:
    """Run the whole demo and return its figures (also written to ``<output>/demo.json``).

    Args:
        output: folder for the cohort, the model, the predictions and the evaluation.
        seed: seed of the cohort, the split and the training.
        max_epochs: override the demo config's epochs (tests use fewer).

    Returns:
        ``slide_auc``, ``froc``, ``tiles_per_second``, ``train_seconds``, paths and the per-slide table.
    """
    import lightning

    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.evaluation.report import evaluate, write_report
    from anomalib_wsi.inference import WSIEngine, trained_checkpoint
    from anomalib_wsi.models.rd_focal import RDFocal
    from anomalib_wsi.slide import Slide

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    lightning.seed_everything(seed, workers=True, verbose=False)

    start = time.perf_counter()
    data_args = {**DEMO_DATA, "root": output / "cohort", "seed": seed}
    datamodule = WSIDataModule(**data_args)
    datamodule.prepare_data()
    timings["synthesis_s"] = time.perf_counter() - start

    start = time.perf_counter()
    model = RDFocal(**DEMO_MODEL)
    trainer_args = {**DEMO_TRAINER, "max_epochs": max_epochs or DEMO_TRAINER["max_epochs"], "accelerator": "cpu"}
    engine = WSIEngine(default_root_dir=output / "results", **trainer_args)
    engine.fit(model=model, datamodule=datamodule)
    ckpt = trained_checkpoint(engine, output / "model.ckpt")
    timings["train_s"] = time.perf_counter() - start

    test_records = [r for r in datamodule.records if r.split == "test"]
    start = time.perf_counter()
    predictor = WSIEngine(batch_size=64, num_workers=2, device="cpu")
    results = predictor.predict(
        model=RDFocal, ckpt_path=ckpt, slides=[r.slide_path for r in test_records], output_dir=output / "predictions"
    )
    timings["predict_s"] = time.perf_counter() - start

    labels_csv = output / "test_labels.csv"
    pd.DataFrame(
        {
            "slide_id": [r.slide_id for r in test_records],
            "label": ["tumor" if r.label else "normal" for r in test_records],
        }
    ).to_csv(labels_csv, index=False)
    evaluation = evaluate(
        predictions=output / "predictions",
        annotations=output / "cohort" / "annotations",
        labels=labels_csv,
        slides=output / "cohort" / "slides",
        mpp=Slide(test_records[0].slide_path).mpp,  # the FROC's 75/275 µm at the slides' own spacing
    )
    write_report(evaluation, output / "evaluation")
    report = evaluation.to_dict()
    figures = {
        "slide_auc": report.get("slide_auc"),
        "froc": report.get("froc_score"),
        "tiles_per_second": results.tiles_per_second,
        "checkpoint": str(ckpt),
        "predictions": str(output / "predictions"),
        "evaluation": str(output / "evaluation"),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "slides": [
            {
                "slide_id": r.slide_id,
                "label": next(rec.label for rec in test_records if rec.slide_id == r.slide_id),
                "slide_score": round(r.slide_score, 4),
                "lesions": len(r.lesions),
                "heatmap": str(r.paths.get("heatmap_png", "")),
            }
            for r in results
        ],
    }
    (output / "demo.json").write_text(json.dumps(figures, indent=2, default=str))
    return figures


def demo_command(output: str = "demo_output", seed: int = 0) -> int:
    """``anomalib-wsi demo``: run the demo and print a table of what it found and where the files are."""
    start = time.perf_counter()
    figures = run_demo(output, seed=seed)
    lines = [
        "",
        "anomalib-wsi demo: synthetic cohort -> RDFocal (resnet18, focal loss) -> held-out slides",
        "",
        f"{'slide':<12} {'truth':<7} {'slide score':>11} {'lesions':>8}",
    ]
    for row in figures["slides"]:
        truth = "tumour" if row["label"] else "normal"
        lines.append(f"{row['slide_id']:<12} {truth:<7} {row['slide_score']:>11.3f} {row['lesions']:>8}")
    auc, froc = figures["slide_auc"], figures["froc"]
    lines += [
        "",
        f"slide AUC         {auc:.3f}" if isinstance(auc, int | float) else f"slide AUC         {auc}",
        f"FROC (Camelyon16) {froc:.3f}" if isinstance(froc, int | float) else f"FROC (Camelyon16) {froc}",
        f"prediction speed  {figures['tiles_per_second']:.0f} tiles/s (CPU)",
        f"total time        {time.perf_counter() - start:.0f} s",
        "",
        f"heatmaps, QuPath GeoJSON, detections: {figures['predictions']}/<slide_id>/",
        f"evaluation report:                    {figures['evaluation']}/report.md",
        f"model checkpoint:                     {figures['checkpoint']}",
    ]
    print("\n".join(lines))  # the demo's result table is its output, not progress logging
    return 0
