"""Stain normalisation end to end: the data module normalises its tiles, the checkpoint stores the fitted reference,
prediction applies it with no option, and the reference is part of the resume fingerprint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_wsi.data.synthetic import synthesize_cohort


@pytest.mark.slow
def test_training_with_normalisation_stores_the_reference_and_prediction_applies_it(tmp_path: Path) -> None:
    import lightning

    from anomalib_wsi.cli.demo import DEMO_DATA, DEMO_MODEL, DEMO_TRAINER
    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.inference import WSIEngine, trained_checkpoint
    from anomalib_wsi.inference.resume import run_fingerprint
    from anomalib_wsi.inference.settings import PredictionSettings
    from anomalib_wsi.models.rd_focal import RDFocal

    lightning.seed_everything(0, workers=True, verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cohort = synthesize_cohort(tmp_path / "cohort", n_slides=4, seed=1, size_px=2048, mpp=0.5)
        datamodule = WSIDataModule(
            **{
                **DEMO_DATA,
                "root": tmp_path / "cohort",
                "normal_tiles_per_slide": 40,
                "tumour_tiles_per_slide": 20,
                "eval_tiles_per_slide": 40,
                "val_ratio": 0.25,
                "test_ratio": 0.25,
                "num_workers": 0,
                "stain_normalization": "macenko",
            }
        )
        datamodule.setup()
        raw = datamodule.train_data.read_image(0)
        normalised = datamodule.train_data[0].image.permute(1, 2, 0).numpy()
        assert np.abs(raw.astype(float) - normalised).mean() > 1  # the training tiles are normalised
        engine = WSIEngine(
            default_root_dir=tmp_path / "results",
            **{**DEMO_TRAINER, "max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False, "logger": False},
        )
        model = RDFocal(**DEMO_MODEL)
        engine.fit(model=model, datamodule=datamodule)
        ckpt = trained_checkpoint(engine, tmp_path / "model.ckpt")

        from anomalib.utils.serialization import anomalib_safe_globals

        with anomalib_safe_globals(extra=list(RDFocal.checkpoint_safe_globals())):  # the model's own enums
            stored = torch.load(ckpt, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
        assert datamodule.stain is not None
        assert stored["stain_normalization"] == "macenko"
        assert stored["stain_reference"] == datamodule.stain.as_dict()

        slide = cohort.slides[0]
        predictor = WSIEngine(batch_size=64, num_workers=1, device="cpu", progress=False)
        run = predictor.predict(model=RDFocal, ckpt_path=ckpt, slides=[slide], output_dir=tmp_path / "pred")
        assert not run.failures
        summary = json.loads(run[0].paths["summary"].read_text())
        assert summary["settings"]["stain_normalization"] == datamodule.stain.as_dict()
        assert summary["stain_unchanged_tiles"] == 0

        # Macenko applied on the device (here the CPU) instead of in the loader workers: the same heatmap
        on_device = WSIEngine(batch_size=64, num_workers=1, device="cpu", progress=False, stain_on="device")
        moved = on_device.predict(model=RDFocal, ckpt_path=ckpt, slides=[slide], output_dir=tmp_path / "on_device")
        assert not moved.failures
        workers_map, device_map = run[0].heatmap.values, moved[0].heatmap.values
        assert np.array_equal(np.isnan(workers_map), np.isnan(device_map))
        spread = float(np.nanmax(workers_map) - np.nanmin(workers_map))
        assert float(np.nanmax(np.abs(workers_map - device_map))) < 1e-3 * spread  # tiles within one grey level
        assert run[0].n_tiles == moved[0].n_tiles

        # the model straight from training, without its checkpoint, normalises too
        direct = predictor.predict(model=model, slides=[slide], output_dir=tmp_path / "direct")
        summary = json.loads(direct[0].paths["summary"].read_text())
        assert summary["settings"]["stain_normalization"] == datamodule.stain.as_dict()

        # an exported model carries the reference in its metadata.json, and predicts with it
        if importlib.util.find_spec("onnxruntime") is not None:
            from anomalib_wsi.inference.export import export_model, load_exported

            onnx = export_model(ckpt, "onnx", tmp_path / "export")
            assert load_exported(onnx)[1]["stain"] == datamodule.stain
            exported = predictor.predict(model=onnx, slides=[slide], output_dir=tmp_path / "onnx")
            summary = json.loads(exported[0].paths["summary"].read_text())
            assert summary["settings"]["stain_normalization"] == datamodule.stain.as_dict()

        # the same checkpoint without the reference is another run: no outputs are reused across the two
        with_stain = run_fingerprint(ckpt, model, PredictionSettings(stain=datamodule.stain))
        without = run_fingerprint(ckpt, model, PredictionSettings())
        assert with_stain != without
    finally:
        torch.set_num_threads(threads)
