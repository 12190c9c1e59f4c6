"""More than one process: Lightning DDP training (2 CPU processes, gloo) on the WSIDataModule."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes(tmp_path: Path) -> None:
    """Plain ``strategy=ddp`` (no unused-parameter search) trains the demo model for one epoch on 2 processes."""
    from anomalib_wsi.data.synthetic import synthesize_cohort

    synthesize_cohort(tmp_path / "cohort", n_slides=6, seed=1, size_px=2560, mpp=0.5)
    anomalib = Path(sys.executable).parent / "anomalib"
    command = [
        str(anomalib),
        "train",
        "--config",
        str(ROOT / "configs" / "rd_focal_demo.yaml"),
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--default_root_dir",
        str(tmp_path / "results"),
        "--data.init_args.root",
        str(tmp_path / "cohort"),
        "--data.init_args.num_workers",
        "0",
    ]
    with socket.socket() as probe:  # a free port, so parallel runs never share a rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1500, check=False, env=env)
    log = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    assert "parameters that were not used in producing the loss" not in log
    checkpoints = list((tmp_path / "results").rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints

    from anomalib_wsi.engine import load_model
    from anomalib_wsi.models.rd_focal import RDFocal

    model, data_hparams = load_model(RDFocal, checkpoints[0])
    assert isinstance(model, RDFocal) and data_hparams["tile_size_px"] == 64
