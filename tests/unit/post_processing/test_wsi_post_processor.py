"""Tests of anomalib_wsi/post_processing/post_processor.py: WSIPostProcessor on top of anomalib's PostProcessor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.post_processing import PostProcessor

from anomalib_wsi.post_processing.post_processor import WSIPostProcessor
from anomalib_wsi.post_processing.stitch import Heatmap, HeatmapAccumulator

# Validation tile scores: normal 0.1-0.4, tumour 0.6-0.9. anomalib's F1 threshold is 0.6 (the lowest tumour score);
# ours moves it to the middle of the gap, 0.5. With min 0.1, max 0.9 a raw score s normalises to
# clip((s - 0.5) / 0.8 + 0.5, 0, 1).
VAL_SCORES = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
VAL_LABELS = [0, 0, 0, 0, 1, 1, 1, 1]


def _validation_batch(with_maps: bool = False) -> ImageBatch:
    scores = torch.tensor(VAL_SCORES)
    maps = None
    if with_maps:  # anomaly maps ranging 0.0-2.0, without ground-truth masks
        maps = torch.linspace(0.0, 2.0, 8 * 4 * 4).reshape(8, 1, 4, 4)
    return ImageBatch(
        image=torch.zeros(8, 3, 4, 4), pred_score=scores, gt_label=torch.tensor(VAL_LABELS), anomaly_map=maps
    )


def _validated(pp: PostProcessor, with_maps: bool = False) -> PostProcessor:
    """Run anomalib's validation hooks as Lightning does: one batch, then the epoch end."""
    pp.on_validation_batch_end(None, None, _validation_batch(with_maps))  # type: ignore[arg-type]
    pp.on_validation_epoch_end(None, None)  # type: ignore[arg-type]
    return pp


def test_learnt_threshold_normalises_to_one_half() -> None:
    pp = _validated(WSIPostProcessor())
    assert pp.image_threshold.item() == pytest.approx(0.5)
    normalised = pp.normalize_scores(np.array([0.1, 0.3, 0.5, 0.6, 0.9, 1.5, np.nan]))
    np.testing.assert_allclose(normalised[:6], [0.0, 0.25, 0.5, 0.625, 1.0, 1.0], atol=1e-6)
    assert np.isnan(normalised[6])  # unscored cells stay unscored
    assert normalised.dtype == np.float32


def test_threshold_sits_in_the_middle_of_the_validation_gap() -> None:
    """anomalib puts the F1 threshold on the lowest tumour score (0.6): a new tumour tile at 0.58 would be missed.
    The midpoint (0.5) labels the validation tiles the same way and keeps a margin on both sides."""
    plain = _validated(PostProcessor())
    ours = _validated(WSIPostProcessor())
    assert plain.image_threshold.item() == pytest.approx(0.6)
    assert ours.image_threshold.item() == pytest.approx(0.5)
    val = np.array(VAL_SCORES)
    assert ((val >= 0.5) == np.array(VAL_LABELS, dtype=bool)).all()
    batch = ImageBatch(image=torch.zeros(1, 3, 4, 4), pred_score=torch.tensor([0.58]))
    plain.normalize_batch(batch)
    assert float(batch.pred_score[0]) == pytest.approx(0.475)  # anomalib: below 0.5, called normal
    assert ours.normalize_scores(np.array([0.58]))[0] == pytest.approx(0.6)  # ours: tumour


def test_normalisation_matches_what_anomalib_does_to_pred_score() -> None:
    pp = _validated(WSIPostProcessor())
    raw = torch.tensor([0.05, 0.35, 0.55, 0.61, 0.95])
    batch = ImageBatch(image=torch.zeros(5, 3, 4, 4), pred_score=raw.clone())
    pp.normalize_batch(batch)
    np.testing.assert_allclose(pp.normalize_scores(raw), batch.pred_score.numpy(), atol=1e-7)


def test_map_heatmaps_use_the_pixel_statistics() -> None:
    pp = _validated(WSIPostProcessor(), with_maps=True)
    # pixel min/max 0-2 from the maps; no masks, so the pixel threshold is the image one (0.5)
    assert pp.normalize_scores(np.array([0.5, 1.5]), kind="pixel").tolist() == pytest.approx([0.5, 1.0])
    assert pp.normalize_scores(np.array([1.0]), kind="pixel")[0] == pytest.approx(0.75)  # (1.0 - 0.5) / 2 + 0.5
    assert pp.normalize_scores(np.array([0.7]), kind="image")[0] == pytest.approx(0.75)  # (0.7 - 0.5) / 0.8 + 0.5


def test_without_validation_scores_pass_through_unchanged() -> None:
    pp = WSIPostProcessor()
    assert not pp.has_normalization_stats
    np.testing.assert_array_equal(pp.normalize_scores(np.array([0.2, 3.0])), np.array([0.2, 3.0], dtype=np.float32))


def test_process_slide_normalises_then_finds_lesions_detections_and_score() -> None:
    pp = _validated(WSIPostProcessor(lesion_threshold=0.5, min_lesion_area_um2=0.0, nms_radius_um=300.0))
    raw = np.full((10, 10), 0.1, dtype=np.float32)  # normalises to 0: no detections there
    raw[2:5, 2:5] = 0.7  # normalised 0.75: a 3 x 3 lesion
    raw[3, 3] = 0.8  # normalised 0.875: its peak
    raw[8, 8] = 0.45  # normalised 0.4375: below the lesion threshold, still a detection
    raw[0, 9] = np.nan
    heatmap = Heatmap(raw, downsample=256.0, slide_id="tumor_001", slide_size_lv0=(2560, 2560))
    result = pp.process_slide(heatmap, mpp=0.5)
    assert result.heatmap.values[3, 3] == pytest.approx(0.875)
    assert np.isnan(result.heatmap.values[0, 9])
    assert len(result.lesions) == 1
    assert result.lesions[0].area_um2 == pytest.approx(9 * (256 * 0.5) ** 2)
    assert result.lesions[0].max_score == pytest.approx(0.875)
    assert result.slide_score == pytest.approx(0.875)
    np.testing.assert_allclose(result.detections, [[0.875, 896, 896], [0.4375, 2176, 2176]], rtol=1e-6)
    # an already-normalised heatmap (Lightning's on_predict_batch_end normalised the tiles) is used as is
    again = pp.process_slide(result.heatmap, mpp=0.5, normalized=True)
    assert again.slide_score == pytest.approx(0.875)


def test_map_heatmaps_from_the_accumulator_are_normalised_with_pixel_statistics() -> None:
    pp = _validated(WSIPostProcessor(heatmap_cells_per_tile=2), with_maps=True)
    acc = pp.new_accumulator((512, 512), tile_size_lv0=256, stride_lv0=256, slide_id="s")
    acc.add([0], [0], [0.0], maps=np.full((1, 8, 8), 1.0, dtype=np.float32))
    result = pp.process_slide(acc.result(), mpp=0.5)
    assert acc.downsample == 128
    assert result.heatmap.values[0, 0] == pytest.approx(0.75)  # pixel range 0-2, not the image range 0.1-0.9


def test_slide_score_setting_is_applied() -> None:
    pp = WSIPostProcessor(slide_score="mean_above", lesion_threshold=0.5)
    heatmap = Heatmap(np.array([[0.9, 0.7], [0.2, 0.1]], dtype=np.float32), 256.0, "s", (512, 512))
    assert pp.process_slide(heatmap, mpp=0.5).slide_score == pytest.approx(0.8)  # raw scores: nothing learnt


def test_learnt_statistics_and_settings_survive_a_checkpoint(tmp_path) -> None:
    from anomalib.models import ReverseDistillation

    pp = _validated(WSIPostProcessor(lesion_threshold=0.7, slide_score="topk", top_k=3, heatmap_cells_per_tile=4))
    model = ReverseDistillation(backbone="resnet18", pre_trained=False, post_processor=pp)
    checkpoint: dict = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"]["post_processor._image_threshold"].item() == pytest.approx(0.5)
    torch.save(checkpoint, tmp_path / "model.ckpt")

    loaded = torch.load(tmp_path / "model.ckpt", weights_only=True)  # plain data only
    fresh = ReverseDistillation(backbone="resnet18", pre_trained=False, post_processor=WSIPostProcessor())
    fresh.load_state_dict(loaded["state_dict"])
    fresh.on_load_checkpoint(loaded)
    restored = fresh.post_processor
    assert isinstance(restored, WSIPostProcessor)
    assert (restored.lesion_threshold, restored.slide_score, restored.top_k) == (0.7, "topk", 3)
    assert restored.heatmap_cells_per_tile == 4
    assert restored.normalize_scores(np.array([0.5, 0.6]))[0] == pytest.approx(0.5)


def test_from_post_processor_copies_anomalibs_learnt_statistics() -> None:
    plain = _validated(PostProcessor(image_sensitivity=0.4))
    pp = WSIPostProcessor.from_post_processor(plain, lesion_threshold=0.6)
    assert pp.image_sensitivity == 0.4
    assert pp.lesion_threshold == 0.6
    assert pp.normalize_scores(np.array([0.6, 0.9])).tolist() == pytest.approx([0.5, 0.875])
    assert pp.slide_settings()["image_threshold"] == pytest.approx(0.6)
    assert pp.slide_settings()["pixel_min"] is None


def test_invalid_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"slide_score='median' \(use one of max, topk, mean_above\)"):
        WSIPostProcessor(slide_score="median")


def test_a_heatmap_accumulator_is_what_new_accumulator_returns() -> None:
    acc = WSIPostProcessor().new_accumulator((1024, 512), 256.0, 128.0)
    assert isinstance(acc, HeatmapAccumulator)
    assert acc.shape == (4, 8)
