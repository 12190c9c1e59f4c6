"""More than one process: Lightning DDP training (2 CPU processes, gloo) on the WSIDataModule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes(tmp_path: Path, free_port: int, hang_timeout_s: float | None) -> None:
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
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port)}
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=hang_timeout_s, check=False, env=env
    )
    log = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    assert "parameters that were not used in producing the loss" not in log
    checkpoints = list((tmp_path / "results").rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints

    from anomalib_wsi.inference import load_model
    from anomalib_wsi.models.rd_focal import RDFocal

    model, data_hparams = load_model(RDFocal, checkpoints[0])
    assert isinstance(model, RDFocal) and data_hparams["tile_size_px"] == 64


_COSINE_DDP_SCRIPT = """
import sys, warnings
import lightning.pytorch as pl
import torch
from anomalib.data import ImageBatch, ImageItem
from torch.utils.data import DataLoader
from torchvision.tv_tensors import Image
from anomalib_wsi.models.rd_focal import RDFocal

warnings.filterwarnings("ignore")


class Tiles(pl.LightningDataModule):
    def train_dataloader(self):  # rank 0 gets normal tiles only, rank 1 tumour tiles only
        label = self.trainer.global_rank
        generator = torch.Generator().manual_seed(label)
        items = [
            ImageItem(image=Image(torch.rand(3, 32, 32, generator=generator)), gt_label=torch.tensor(label),
                      image_path=f"tile_{index}.png")
            for index in range(16)
        ]
        return DataLoader(items, batch_size=4, collate_fn=ImageBatch.collate)


torch.manual_seed(0)
model = RDFocal(backbone="resnet18", pre_trained=False, loss="cosine", evaluator=False, visualizer=False,
                pre_processor=RDFocal.configure_pre_processor(image_size=(32, 32)))
trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=3, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=sys.argv[1])
trainer.fit(model, datamodule=Tiles())
student = torch.cat([p.detach().flatten() for p in model.model.decoder.parameters()])
# one write of the whole line: two ranks share the pipe, and print's separate newline let lines run together
checksum = student.double().sum().item()
sys.stdout.write(f"rank {trainer.global_rank} steps {trainer.global_step} checksum {checksum:.10f}\\n")
sys.stdout.flush()
"""


@pytest.mark.slow
def test_cosine_ddp_rank_with_tumour_tiles_only_does_not_stall(
    tmp_path: Path, free_port: int, hang_timeout_s: float | None
) -> None:
    """Plain RD (cosine loss) under DDP where one rank's batches hold only tumour tiles: that rank returns a zero
    loss instead of skipping the step, so both ranks finish 3 steps with the same student weights. (Returning None
    there stopped the run: Lightning refuses a skipped training_step in distributed training.)"""
    script = tmp_path / "cosine_ddp.py"
    script.write_text(_COSINE_DDP_SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port), "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
            timeout=hang_timeout_s, check=False, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"DDP training with a tumour-only rank did not end in {hang_timeout_s:.0f} s: a rank waits for ever"
        )
    log = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert [line.split(" checksum")[0] for line in lines] == ["rank 0 steps 3", "rank 1 steps 3"], log
    assert lines[0].split("checksum ")[1] == lines[1].split("checksum ")[1]  # DDP kept the replicas equal
