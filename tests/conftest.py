"""Shared fixtures: the real data in ../shared/data (skipped when absent) and small synthetic slides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANOMALIB_WSI_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real slides and annotations); the test is skipped with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set ANOMALIB_WSI_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Six synthetic 3072 px slides at 0.5 µm/px (three with tumour and ASAP XML), written once per session."""
    from anomalib_wsi.data.synthetic import synthesize_cohort

    return synthesize_cohort(tmp_path_factory.mktemp("cohort"), n_slides=6, seed=0, size_px=3072, mpp=0.5)
