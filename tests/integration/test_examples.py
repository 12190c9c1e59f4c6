"""The examples in examples/ run as the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_python_api_example(tmp_path: Path, hang_timeout_s: float | None) -> None:
    command = [sys.executable, str(ROOT / "examples" / "python_api.py"), "--output", str(tmp_path), "--epochs", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=hang_timeout_s, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "slide score" in line]
    assert len(lines) == 2, done.stdout  # 8 slides, a quarter held out for testing
    assert {"tumour", "normal"} == {line.split(":")[1].split()[0] for line in lines}
    for line in lines:
        assert Path(line.split("-> ")[1].split(" ")[0]).is_file()
