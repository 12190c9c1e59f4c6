"""``anomalib-wsi benchmark models``: two models on one split of a tiny synthetic cohort, compared in one table.

RDFocal (focal loss: normal and tumour tiles) and Padim (one-class: normal tiles only) each train one epoch in a
fresh process on the 6-slide cohort of the anomalib-model tests (2048 px at 0.5 µm/px, 3 with tumour; resnet18
without pre-trained weights, 64 px tiles at 1 µm/px, 40 tiles per slide) and predict the same two held-out slides.
About 30 s on two CPU cores. The figures are checked for range and consistency, not quality (one epoch).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import SyntheticCohort, synthesize_cohort
from anomalib_wsi.model_comparison import COLUMNS, PEAK_MEMORY_NOTE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    """The 6-slide synthetic cohort of ``test_anomalib_models.py`` (same seed, size and spacing)."""
    return synthesize_cohort(
        tmp_path_factory.mktemp("comparison") / "cohort", n_slides=6, seed=0, size_px=2048, mpp=0.5
    )


def test_two_models_train_on_one_split_and_fill_one_table(
    cohort: SyntheticCohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["benchmark", "models", "--models", "RDFocal,padim", "--root", str(cohort.root), "--output", str(out)]
    assert main([*args, "--epochs", "1", "--tiles-per-slide", "40"]) == 0, capsys.readouterr().err[-2000:]
    printed = capsys.readouterr().out

    table = pd.read_csv(out / "models.csv", keep_default_na=False)
    assert tuple(table.columns) == COLUMNS
    assert list(table.model) == ["RDFocal", "Padim"]  # in the order given, class names
    assert set(table.note) == {""}
    for row in table.itertuples():
        for column in ("slide_auc", "slide_auc_ci_low", "slide_auc_ci_high", "froc", "tile_auroc"):
            assert 0.0 <= float(getattr(row, column)) <= 1.0, f"{row.model} {column}"
        assert row.slide_auc_ci_low <= row.slide_auc <= row.slide_auc_ci_high
        assert row.train_seconds > 0 and row.predict_tiles_per_second > 0
        assert 200 < row.peak_rss_mib < 16_000  # a process with torch and anomalib, nowhere near the machine's RAM
        assert math.isfinite(row.peak_rss_mib)
    rd, padim = table.iloc[0], table.iloc[1]
    # the same split and the same sampled tiles: Padim's are RDFocal's normal tiles, and the same test tiles
    assert rd.train_tumour_tiles > 0 and padim.train_tumour_tiles == 0
    assert rd.train_tiles - rd.train_tumour_tiles == padim.train_tiles >= 40
    assert rd.test_tiles == padim.test_tiles >= 40

    # each model predicted the same two held-out slides (one with tumour) and was evaluated on them
    held_out = pd.read_csv(out / "test_labels.csv")
    assert sorted(held_out.label) == ["normal", "tumor"]
    for name in ("RDFocal", "Padim"):
        summary = pd.read_csv(out / name / "predictions" / "summary.csv")
        assert sorted(summary.slide_id) == sorted(held_out.slide_id) and set(summary.status) == {"done"}
        report = json.loads((out / name / "evaluation" / "report.json").read_text())
        assert report["counts"]["auc_tumour"] == 1 and report["counts"]["auc_normal"] == 1
        row = table[table.model == name].iloc[0]
        assert report["slide_auc"] == pytest.approx(row.slide_auc, abs=1e-4)

    # the printed table is the Markdown file's table, one line per model
    markdown = (out / "models.md").read_text()
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(lines) == 4 and [line.split(" | ")[0] for line in lines[2:]] == ["| RDFocal", "| Padim"]
    assert "\n".join(lines) in markdown and PEAK_MEMORY_NOTE in markdown and PEAK_MEMORY_NOTE in printed
