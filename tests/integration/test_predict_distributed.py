"""Prediction sharded over 2 processes (torchrun, CPU): each rank owns whole slides; the outputs equal one process's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from anomalib_wsi.inference import WSIEngine
from anomalib_wsi.models.rd_focal import RDFocal


@pytest.fixture(scope="module")
def single_run(trained_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """The held-out slides and one bad file in ``<root>/slides``, predicted by one process into ``<root>/single``
    (what the ranks must equal): returns the root and the predictions."""
    root = tmp_path_factory.mktemp("distributed")
    slides = root / "slides"
    slides.mkdir()
    for slide_id in trained_model.held_out_ids:
        shutil.copy(trained_model.slide(slide_id).path, slides / f"{slide_id}.tif")
    (slides / "broken.tif").write_bytes(b"not a slide")  # one bad slide: recorded once, by the rank that owns it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = WSIEngine(num_workers=0, progress=False).predict(
            model=RDFocal, ckpt_path=trained_model.ckpt_path, slides=slides, output_dir=root / "single"
        )
    finally:
        torch.set_num_threads(threads)
    return root, single


@pytest.mark.slow
def test_two_ranks_give_the_single_process_outputs(
    trained_model, single_run: tuple[Path, list[Any]], tmp_path: Path, free_port: int, hang_timeout_s: float | None
) -> None:
    root, single = single_run
    slides = root / "slides"
    assert len(single) == len(trained_model.held_out_ids)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port),
        str(Path(sys.executable).parent / "anomalib-wsi"),
        "predict",
        "--ckpt",
        str(trained_model.ckpt_path),
        str(slides),
        "--output",
        str(tmp_path / "ranks"),
        "--num-workers",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=hang_timeout_s, check=False, env=env)
    # the ranks wait for each other (torchrun stops the others when one exits non-zero), agree on the status
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("slides predicted") == 2, "both ranks must finish their slides"

    # every slide predicted once, by one rank, with the single process's numbers (same model, same tiles, CPU)
    for slide_id in trained_model.held_out_ids:
        a = np.load(root / "single" / slide_id / "heatmap.npy")
        b = np.load(tmp_path / "ranks" / slide_id / "heatmap.npy")
        np.testing.assert_allclose(a, b, atol=1e-6, equal_nan=True)
        score_a = json.loads((root / "single" / slide_id / "summary.json").read_text())["slide_score"]
        score_b = json.loads((tmp_path / "ranks" / slide_id / "summary.json").read_text())["slide_score"]
        assert abs(score_a - score_b) <= 1e-6
    summary = pd.read_csv(tmp_path / "ranks" / "summary.csv")
    assert sorted(summary.slide_id) == sorted(trained_model.held_out_ids)
    failures = pd.read_csv(tmp_path / "ranks" / "failures.csv")
    assert failures.slide_id.tolist() == ["broken"]


@pytest.mark.slow
def test_plain_slurm_tasks_write_complete_tables(
    trained_model, single_run: tuple[Path, list[Any]], tmp_path: Path, hang_timeout_s: float | None
) -> None:
    """Two processes started side by side as SLURM starts tasks (SLURM_PROCID / SLURM_NTASKS, no torchrun, no
    process group): each predicts its half of the slides, and the run tables written last cover every slide, with
    the single process's scores."""
    root, single = single_run
    slides = root / "slides"
    command = [
        str(Path(sys.executable).parent / "anomalib-wsi"), "predict", "--ckpt", str(trained_model.ckpt_path),
        str(slides), "--output", str(tmp_path / "tasks"), "--num-workers", "0",
    ]  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"}}
    slurm = [{"SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(r)} for r in (0, 1)]
    base["OMP_NUM_THREADS"] = "1"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    tasks = [subprocess.Popen(command, env={**base, **task_env}, **pipes) for task_env in slurm]
    outputs = [task.communicate(timeout=hang_timeout_s) for task in tasks]
    statuses = sorted(task.returncode for task in tasks)
    assert statuses == [0, 1], [err[-2000:] for _, err in outputs]  # only the rank that owns broken.tif fails
    summary = pd.read_csv(tmp_path / "tasks" / "summary.csv").set_index("slide_id")
    assert sorted(summary.index) == sorted(trained_model.held_out_ids)
    for result in single:
        assert abs(summary.loc[result.slide_id, "slide_score"] - result.slide_score) <= 1e-6
    failures = pd.read_csv(tmp_path / "tasks" / "failures.csv")
    assert failures.slide_id.tolist() == ["broken"]
