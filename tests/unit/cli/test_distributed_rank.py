"""Which share of the slides (and of the CPUs) a prediction process takes: torchrun and SLURM environments."""

from __future__ import annotations

import os

import pytest

from anomalib_wsi.inference import WSIEngine, default_num_workers, distributed_rank

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_single_process_by_default(clean_env: pytest.MonkeyPatch) -> None:
    assert distributed_rank() == (0, 1, 0)


def test_torchrun_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "5")
    clean_env.setenv("WORLD_SIZE", "8")
    clean_env.setenv("LOCAL_RANK", "1")
    assert distributed_rank() == (5, 8, 1)


def test_slurm_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_LOCALID", "3")
    assert distributed_rank() == (3, 4, 3)
    # torchrun's variables win when both are set (torchrun inside a SLURM allocation)
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    assert distributed_rank()[:2] == (0, 2)


@pytest.mark.parametrize(
    ("cpus", "local_processes", "workers"),
    [(2, None, 1), (16, None, 8), (64, None, 8), (16, "4", 2), (4, "8", 1)],
)
def test_default_reader_workers_follow_the_usable_cpus(
    clean_env: pytest.MonkeyPatch, cpus: int, local_processes: str | None, workers: int
) -> None:
    """Without --num-workers: half the CPUs this process may use (its affinity, as SLURM or taskset set it), at
    most 8, shared by the torchrun processes of the node, at least 1."""
    clean_env.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)), raising=False)
    clean_env.delenv("LOCAL_WORLD_SIZE", raising=False)
    if local_processes is not None:
        clean_env.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert default_num_workers() == workers
    assert WSIEngine(progress=False).num_workers == workers
    assert WSIEngine(num_workers=0, progress=False).num_workers == 0
