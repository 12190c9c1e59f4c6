"""Tests of anomalib_wsi/models/rd_focal/loss.py: the focal cosine loss of He & Li (MIDL 2023)."""

from __future__ import annotations

import math

import pytest
import torch
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

from anomalib_wsi.models.rd_focal.loss import FocalCosineLoss, focal_cosine_loss, tile_cosine_similarity


def _maps(*vectors: tuple[float, ...]) -> torch.Tensor:
    """One (B, 1, 1, W) map per tile: the cosine must be taken over the flattened map, not per pixel."""
    return torch.tensor(vectors, dtype=torch.float32).reshape(len(vectors), 1, 1, -1)


# Layer 1: tile 0 (normal) encoder (1, 0) vs decoder (1, 1): s = 1/sqrt(2);
#          tile 1 (tumour) encoder (3, 4) vs decoder (4, 3): s = 24/25.
ENCODER_1 = _maps((1.0, 0.0), (3.0, 4.0))
DECODER_1 = _maps((1.0, 1.0), (4.0, 3.0))
# Layer 2: the decoder copies the encoder, s = 1 for both tiles (tumour p_t = 0: the clamp at 1e-6 applies).
ENCODER_2 = _maps((0.5, 2.0, 1.0), (1.0, 1.0, 3.0))
DECODER_2 = ENCODER_2.clone()
LABELS = torch.tensor([0, 1])


def _focal(p_t: float, alpha: float, gamma: float = 2.0) -> float:
    p_t = max(p_t, 1e-6)
    return -alpha * (1.0 - p_t) ** gamma * math.log(p_t)


def test_similarity_is_one_value_per_tile_and_layer_over_the_flattened_map() -> None:
    similarity = tile_cosine_similarity([ENCODER_1, ENCODER_2], [DECODER_1, DECODER_2])
    assert similarity.shape == (2, 2)
    expected = torch.tensor([[1 / math.sqrt(2), 1.0], [24 / 25, 1.0]])
    torch.testing.assert_close(similarity, expected, rtol=0, atol=1e-6)


def test_loss_matches_hand_computed_focal_values() -> None:
    s_normal, s_tumour = 1 / math.sqrt(2), 24 / 25
    layer_1 = (_focal(s_normal, 0.1) + _focal(1 - s_tumour, 0.9)) / 2  # (0.0029733 + 2.6699) / 2
    layer_2 = (_focal(1.0, 0.1) + _focal(0.0, 0.9)) / 2  # (0 + 0.9 * ln(1e6)) / 2 = 6.2170
    loss = focal_cosine_loss([ENCODER_1, ENCODER_2], [DECODER_1, DECODER_2], LABELS)
    assert loss.item() == pytest.approx(layer_1 + layer_2, rel=1e-5)
    assert loss.item() == pytest.approx(1.33642 + 6.21698, rel=1e-4)


def test_module_uses_its_weights_and_gamma() -> None:
    criterion = FocalCosineLoss(alpha_normal=0.5, alpha_tumour=0.25, gamma=0.0)
    loss = criterion([ENCODER_1], [DECODER_1], LABELS)
    expected = (-0.5 * math.log(1 / math.sqrt(2)) - 0.25 * math.log(1 - 24 / 25)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ignored_tiles_do_not_change_the_loss() -> None:
    with_ignored = focal_cosine_loss(
        [torch.cat([ENCODER_1, _maps((7.0, -2.0))])],
        [torch.cat([DECODER_1, _maps((-1.0, 5.0))])],
        torch.tensor([0, 1, -1]),
    )
    assert with_ignored.item() == pytest.approx(focal_cosine_loss([ENCODER_1], [DECODER_1], LABELS).item(), rel=1e-6)
    only_ignored = focal_cosine_loss([ENCODER_1], [DECODER_1], torch.tensor([-1, -1]))
    assert only_ignored.item() == 0.0


def test_boolean_labels_equal_integer_labels() -> None:
    as_int = focal_cosine_loss([ENCODER_1], [DECODER_1], LABELS)
    as_bool = focal_cosine_loss([ENCODER_1], [DECODER_1], LABELS.bool())
    assert as_bool.item() == as_int.item()


def test_one_gradient_step_raises_normal_similarity_and_lowers_tumour_similarity() -> None:
    generator = torch.Generator().manual_seed(0)
    encoder = [torch.rand(4, 8, 4, 4, generator=generator), torch.rand(4, 16, 2, 2, generator=generator)]
    student = [torch.rand(e.shape, generator=generator).requires_grad_(True) for e in encoder]
    labels = torch.tensor([0, 1, 0, 1])
    before = tile_cosine_similarity(encoder, student).detach()  # about 0.75 for every tile

    optimizer = torch.optim.SGD(student, lr=1.0)
    focal_cosine_loss(encoder, student, labels).backward()
    optimizer.step()
    after = tile_cosine_similarity(encoder, student).detach()

    change = after - before  # (tiles, layers)
    assert bool((change[labels == 0] > 1e-5).all()), change
    assert bool((change[labels == 1] < -1e-3).all()), change
    # alpha_tumour = 0.9 vs alpha_normal = 0.1: tumour tiles move many times more than normal ones.
    assert change[labels == 1].abs().min() > 10 * change[labels == 0].abs().max()


def test_cosine_baseline_is_anomalib_reverse_distillation_loss() -> None:
    generator = torch.Generator().manual_seed(1)
    encoder = [torch.rand(3, 8, 6, 6, generator=generator), torch.rand(3, 16, 3, 3, generator=generator)]
    decoder = [torch.rand(e.shape, generator=generator) for e in encoder]
    ours = (1 - tile_cosine_similarity(encoder, decoder)).mean(dim=0).sum()
    anomalib = ReverseDistillationLoss()(encoder, decoder)
    assert ours.item() == pytest.approx(float(anomalib), rel=1e-6)


def test_low_precision_features_give_the_float32_loss() -> None:
    generator = torch.Generator().manual_seed(2)
    encoder = [torch.rand(4, 32, 8, 8, generator=generator)]
    decoder = [e + 0.3 * torch.rand(e.shape, generator=generator) for e in encoder]
    labels = torch.tensor([0, 0, 1, 0])
    full = focal_cosine_loss(encoder, decoder, labels)
    half = focal_cosine_loss([e.bfloat16() for e in encoder], [d.bfloat16() for d in decoder], labels)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.02)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha_normal": 1.5}, "alpha_normal must lie in"),
        ({"alpha_tumour": -0.1}, "alpha_tumour must lie in"),
        ({"alpha_normal": 0.0, "alpha_tumour": 0.0}, "cannot both be 0"),
        ({"gamma": -1.0}, "gamma must be at least 0"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FocalCosineLoss(**kwargs)


def test_invalid_labels_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="must be 0 \\(normal\\), 1 \\(tumour\\) or -1"):
        focal_cosine_loss([ENCODER_1], [DECODER_1], torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="one label per tile \\(2 tiles\\), got 3"):
        focal_cosine_loss([ENCODER_1], [DECODER_1], torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="differ in shape"):
        focal_cosine_loss([ENCODER_1], [ENCODER_2], LABELS)
