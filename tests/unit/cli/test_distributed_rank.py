"""Which share of the slides a prediction process takes: torchrun and SLURM environments."""

from __future__ import annotations

import pytest

from anomalib_wsi.engine import distributed_rank

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
