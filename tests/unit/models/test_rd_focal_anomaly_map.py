"""Tests of anomalib_wsi/models/rd_focal/anomaly_map.py against He & Li's own evaluation (FW-RD ``test.py``).

FW-RD scores a test patch as follows: ``cal_anomaly_map(inputs, outputs, 256, amap_mode='a')`` (per layer one
minus the cosine similarity, bilinear up-sampling with aligned corners, added), then
``scipy.ndimage.gaussian_filter(map, sigma=4)``, and the mean and max of the blurred map (``auroc_sp_mean``,
``auroc_sp_max``). The reference below is that computation, in numpy and scipy as FW-RD writes it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode, AnomalyMapGenerator
from scipy.ndimage import gaussian_filter
from torch.nn import functional as F

from anomalib_wsi.models.rd_focal import RDFocal, RDFocalConfigError, tile_score
from anomalib_wsi.models.rd_focal.anomaly_map import Float32AnomalyMapGenerator

SIZE = 64
RADIUS = 16  # the blur kernel's radius at sigma 4: 2 * int(4 * 4 + 0.5) + 1 = 33 taps


def _features(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher and student features of two tiles, shaped like resnet18's layer1-3 at 64 px."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    teacher = [torch.randn(shape, generator=generator) for shape in shapes]
    student = [t + 0.8 * torch.randn(t.shape, generator=generator) for t in teacher]
    return teacher, student


def _fwrd_map(teacher: list[torch.Tensor], student: list[torch.Tensor], index: int) -> np.ndarray:
    """FW-RD's ``cal_anomaly_map(..., amap_mode='a')`` then ``gaussian_filter(sigma=4)`` for one tile."""
    anomaly_map = np.zeros([SIZE, SIZE])
    for fs, ft in zip(teacher, student, strict=True):
        a_map = 1 - F.cosine_similarity(fs[index : index + 1], ft[index : index + 1])
        a_map = F.interpolate(torch.unsqueeze(a_map, dim=1), size=SIZE, mode="bilinear", align_corners=True)
        anomaly_map += a_map[0, 0].numpy()
    return gaussian_filter(anomaly_map, sigma=4)


def test_symmetric_border_gives_fwrd_maps_and_both_tile_scores() -> None:
    teacher, student = _features()
    generator = Float32AnomalyMapGenerator((SIZE, SIZE), sigma=4, mode=AnomalyMapGenerationMode.ADD, border="symmetric")
    ours = generator(teacher, student)
    assert ours.shape == (2, 1, SIZE, SIZE) and ours.dtype == torch.float32
    for index in range(2):
        reference = _fwrd_map(teacher, student, index)
        np.testing.assert_allclose(ours[index, 0].numpy(), reference, rtol=0, atol=1e-5)
        # the two patch scores FW-RD reports (auroc_sp_mean, auroc_sp_max)
        assert tile_score(ours, "mean")[index, 0].item() == pytest.approx(reference.mean(), abs=1e-6)
        assert tile_score(ours, "max")[index, 0].item() == pytest.approx(reference.max(), abs=1e-6)


def test_anomalibs_reflect_border_equals_fwrd_inside_the_tile_and_is_anomalibs_map() -> None:
    teacher, student = _features(seed=1)
    ours = Float32AnomalyMapGenerator((SIZE, SIZE), mode=AnomalyMapGenerationMode.ADD)(teacher, student)
    anomalib = AnomalyMapGenerator((SIZE, SIZE), mode=AnomalyMapGenerationMode.ADD)(teacher, student)
    assert torch.equal(ours, anomalib)  # the default is anomalib's map, bit for bit
    reference = _fwrd_map(teacher, student, 0)
    inside = slice(RADIUS, SIZE - RADIUS)
    np.testing.assert_allclose(ours[0, 0, inside, inside].numpy(), reference[inside, inside], rtol=0, atol=1e-5)
    border_gap = np.abs(ours[0, 0].numpy() - reference).max()
    assert border_gap > 1e-4  # the borders differ: the reason for border="symmetric"


def test_tile_score_is_the_mean_or_max_and_names_the_choices() -> None:
    maps = torch.arange(8.0).reshape(2, 1, 2, 2)
    assert tile_score(maps, "mean").flatten().tolist() == [1.5, 5.5]
    assert tile_score(maps, "max").flatten().tolist() == [3.0, 7.0]
    with pytest.raises(ValueError, match="tile score must be one of mean, max, got 'median'"):
        tile_score(maps, "median")


def test_rdfocal_passes_the_blur_options_to_its_network() -> None:
    model = RDFocal(backbone="resnet18", pre_trained=False, image_size=64, blur_sigma=2, blur_border="symmetric")
    generator = model.model.anomaly_map_generator
    assert (generator.sigma, generator.kernel_size, generator.border) == (2, 17, "symmetric")
    assert (model.hparams["blur_sigma"], model.hparams["blur_border"]) == (2, "symmetric")
    with pytest.raises(RDFocalConfigError, match=r"blur_border must be 'reflect' .* got 'wrap'"):
        RDFocal(backbone="resnet18", pre_trained=False, blur_border="wrap")
    with pytest.raises(RDFocalConfigError, match="blur_sigma must be positive"):
        RDFocal(backbone="resnet18", pre_trained=False, blur_sigma=0)
