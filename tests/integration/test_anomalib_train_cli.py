"""``anomalib train --config configs/rd_focal_demo.yaml`` (anomalib's own CLI) trains RDFocal on WSIDataModule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_anomalib_train_writes_a_checkpoint_that_loads(tmp_path: Path, hang_timeout_s: float | None) -> None:
    anomalib = Path(sys.executable).parent / "anomalib"
    command = [
        str(anomalib),
        "train",
        "--config",
        str(ROOT / "configs" / "rd_focal_demo.yaml"),
        "--trainer.max_epochs",
        "1",
        "--default_root_dir",
        str(tmp_path / "results"),
        # a smaller cohort than the demo's, synthesised by prepare_data because the folder is missing
        "--data.init_args.root",
        str(tmp_path / "cohort"),
        "--data.init_args.synthetic_slides",
        "6",
        "--data.init_args.synthetic_size_px",
        "2560",
        "--data.init_args.num_workers",
        "0",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=hang_timeout_s, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(list((tmp_path / "cohort" / "slides").glob("*.tif"))) == 6
    checkpoints = list((tmp_path / "results").rglob("*.ckpt"))
    assert checkpoints, "anomalib train wrote no checkpoint"

    from anomalib_wsi.inference import load_model
    from anomalib_wsi.models.rd_focal import RDFocal

    model, data_hparams = load_model(RDFocal, checkpoints[0])
    assert isinstance(model, RDFocal) and model.backbone == "resnet18"
    # the training resolution travels in the checkpoint, so prediction tiles slides the same way
    assert data_hparams["mpp"] == 1.0 and data_hparams["tile_size_px"] == 64
    tiles = torch.rand(4, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        scores = model.model(model.pre_processor(tiles)).pred_score.reshape(-1).numpy()
    assert scores.shape == (4,) and np.isfinite(scores).all()
