"""``wsi_model`` and ``model_class``: any anomalib model by name, with the slide post-processor and offline weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from anomalib.models import Padim, Patchcore, ReverseDistillation, Stfpm

from anomalib_wsi import WSIPostProcessor
from anomalib_wsi.models.anomalib_models import ModelError, model_class, trains_on_normal_only, wsi_model
from anomalib_wsi.models.rd_focal import RDFocal
from anomalib_wsi.models.rd_focal.weights import BackboneWeightsError


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Padim", Padim),
        ("patchcore", Patchcore),
        ("reverse_distillation", ReverseDistillation),
        ("RDFocal", RDFocal),
        ("anomalib.models.Stfpm", Stfpm),
        (Padim, Padim),
    ],
)
def test_model_class_by_name_or_path(name: str | type, cls: type) -> None:
    assert model_class(name) is cls


def test_unknown_model_is_one_line_listing_the_choices() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'Padimm'; use RDFocal, an anomalib model \(.*Padim.*\)"):
        model_class("Padimm")
    with pytest.raises(ModelError, match=r"not an anomalib model"):
        model_class("torch.nn.Linear")


def test_wsi_model_has_the_slide_post_processor_and_the_tile_size() -> None:
    model = wsi_model("Padim", backbone="resnet18", pre_trained=False, image_size=64)
    assert isinstance(model.post_processor, WSIPostProcessor)
    assert tuple(model.input_size) == (64, 64)
    assert trains_on_normal_only(model)
    assert not trains_on_normal_only(RDFocal(backbone="resnet18", pre_trained=False))  # focal: tumour tiles too
    with pytest.raises(ModelError, match=r"Padim: post_processor must be a WSIPostProcessor"):
        wsi_model("Padim", backbone="resnet18", pre_trained=False, post_processor=torch.nn.Identity())
    with pytest.raises(ModelError, match=r"Padim: .*unexpected keyword argument 'coreset_sampling_ratio'"):
        wsi_model("Padim", backbone="resnet18", pre_trained=False, coreset_sampling_ratio=0.1)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local resnet18 state dict (the full classifier, as torchvision and timm save it), seeded."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def test_backbone_weights_come_from_a_local_file(resnet18_file: Path) -> None:
    expected = torch.load(resnet18_file, weights_only=True)["conv1.weight"]
    padim = wsi_model("Padim", backbone="resnet18", weights_path=resnet18_file, image_size=64)
    torch.testing.assert_close(padim.model.feature_extractor.feature_extractor.conv1.weight, expected)
    # STFPM (no pre_trained argument): the teacher is filled from the file, the student stays random
    stfpm = wsi_model("Stfpm", backbone="resnet18", weights_path=resnet18_file, image_size=64)
    torch.testing.assert_close(stfpm.model.teacher_model.feature_extractor.conv1.weight, expected)
    assert not torch.equal(stfpm.model.student_model.feature_extractor.conv1.weight, expected)


def test_weights_of_another_backbone_or_no_file_fail_in_one_line(resnet18_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match=r"do not fit backbone 'resnet34'.*missing") as info:
        wsi_model("Patchcore", backbone="resnet34", layers=["layer2", "layer3"], weights_path=resnet18_file)
    assert "\n" not in str(info.value)
    with pytest.raises(BackboneWeightsError, match=r"backbone weights file not found: .*nothing.pth"):
        wsi_model("Padim", backbone="resnet18", weights_path=tmp_path / "nothing.pth")


def test_offline_without_a_weights_file_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the hub client refuses to connect
    fix = r"pass weights_path=<local .safetensors or .pth of resnet18>, or pre_trained=False"
    with pytest.raises(
        BackboneWeightsError, match=r"Stfpm: cannot download the pre-trained 'resnet18' backbone.*" + fix
    ):
        wsi_model("Stfpm", backbone="resnet18")
