"""The paper's claim in small: with the same data and seed, the focal loss ranks held-out tumour tiles above normal
tiles better than plain reverse distillation's cosine loss."""

from __future__ import annotations

import lightning
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomalib_wsi.cli.demo import DEMO_DATA, DEMO_MODEL
from anomalib_wsi.data.datamodule import WSIDataModule
from anomalib_wsi.inference import WSIEngine
from anomalib_wsi.models.rd_focal import RDFocal


def _tile_auroc(loss: str, root, tmp_path) -> float:  # type: ignore[no-untyped-def]
    lightning.seed_everything(0, workers=True, verbose=False)
    data_args = {**DEMO_DATA, "root": root, "cache_dir": tmp_path / "cache", "synthesize_if_missing": False}
    data_args.update(normal_tiles_per_slide=120, tumour_tiles_per_slide=60, eval_tiles_per_slide=120, num_workers=0)
    data_args.update(val_ratio=0.25, test_ratio=0.25)
    datamodule = WSIDataModule(**data_args)
    model = RDFocal(**{**DEMO_MODEL, "loss": loss})
    engine = WSIEngine(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path / loss
    )
    engine.fit(model=model, datamodule=datamodule)
    model.eval()
    labels, scores = [], []
    with torch.inference_mode():
        for batch in datamodule.test_dataloader():  # tiles of held-out slides, never trained on
            output = model.model(model.pre_processor(batch.image))
            scores.append(output.pred_score.reshape(-1).numpy())
            labels.append(batch.gt_label.reshape(-1).numpy())
    y, s = np.concatenate(labels), np.concatenate(scores)
    assert 0 < y.sum() < len(y), "the held-out tiles need both classes"
    return float(roc_auc_score(y, s))


@pytest.mark.slow
def test_focal_loss_beats_plain_reverse_distillation(tmp_path, one_torch_thread) -> None:  # type: ignore[no-untyped-def]
    from anomalib_wsi.data.synthetic import synthesize_cohort

    cohort = synthesize_cohort(tmp_path / "cohort", n_slides=8, seed=2, size_px=3072, mpp=0.5)
    focal = _tile_auroc("focal", cohort.root, tmp_path)
    cosine = _tile_auroc("cosine", cohort.root, tmp_path)
    print(f"held-out tile AUROC: RDFocal (focal loss) {focal:.3f}, plain RD (cosine loss) {cosine:.3f}")
    assert focal >= 0.9
    assert focal > cosine
