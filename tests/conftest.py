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
