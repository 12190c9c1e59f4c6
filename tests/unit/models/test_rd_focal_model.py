"""Tests of anomalib_wsi/models/rd_focal (the Lightning module, network, maps, weights): training, checkpoints."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import pytest
import timm
import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.engine import Engine
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from torch.utils.data import DataLoader
from torchvision.tv_tensors import Image

from anomalib_wsi.models.rd_focal import (
    BackboneWeightsError,
    NoTumourTilesError,
    RDFocal,
    RDFocalConfigError,
    focal_cosine_loss,
)

TILE_PX = 32


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _tiles(count: int, tumour_every: int = 3, seed: int = 0) -> list[ImageItem]:
    """Pink, smooth 'normal' tiles; every ``tumour_every``-th tile noisy 'tumour' (label 1); 0 means none."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        tumour = tumour_every > 0 and index % tumour_every == 1
        colour = torch.tensor([0.85, 0.55, 0.75]).view(3, 1, 1) + 0.1 * torch.rand(3, 1, 1, generator=generator)
        image = colour + 0.05 * torch.randn(3, TILE_PX, TILE_PX, generator=generator)
        if tumour:
            image = image - 0.3 + 0.3 * torch.randn(3, TILE_PX, TILE_PX, generator=generator)
        label = torch.tensor(int(tumour))
        items.append(ImageItem(image=Image(image.clamp(0, 1)), gt_label=label, image_path=f"tile_{index}.png"))
    return items


def _loader(items: list[ImageItem], batch_size: int = 4) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, collate_fn=ImageBatch.collate)  # type: ignore[arg-type]


def _model(**kwargs: Any) -> RDFocal:
    options: dict[str, Any] = {
        "backbone": "resnet18",
        "pre_trained": False,
        "pre_processor": RDFocal.configure_pre_processor(image_size=(TILE_PX, TILE_PX)),
        "evaluator": False,
        "visualizer": False,
    }
    options.update(kwargs)
    return RDFocal(**options)


def _trainer(root: Path, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": root,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def _training_loss(model: RDFocal, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The focal loss of a set of tiles as training computes it (batch statistics), on a copy of the model."""
    network = copy.deepcopy(model.model).train()
    with torch.no_grad():
        return focal_cosine_loss(*network(images), labels).item()


def _normalised(model: RDFocal, items: list[ImageItem]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = ImageBatch.collate(items)
    assert model.pre_processor is not None
    return model.pre_processor.transform(batch.image), batch.gt_label


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two epochs (6 steps) of focal training on 12 tiles, 4 of them tumour; checkpoint written by Lightning."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("rd_focal_fit")
    items = _tiles(12)
    model = _model()
    images, labels = _normalised(model, items)
    loss_before = _training_loss(model, images, labels)
    trainer = _trainer(root, max_epochs=2)
    trainer.fit(model, train_dataloaders=_loader(items), val_dataloaders=_loader(items[:4]))
    loss_after = _training_loss(model, images, labels)
    checkpoints = sorted(root.rglob("*.ckpt"))
    return {
        "model": model,
        "items": items,
        "images": images,
        "checkpoint": checkpoints[-1] if checkpoints else None,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "predictions": trainer.predict(model, _loader(items)),
        "root": root,
    }


def _scores(predictions: Any) -> torch.Tensor:
    return torch.cat([batch.pred_score.reshape(-1) for batch in predictions])


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "l2"}, "loss must be 'focal'"),
        ({"tile_score": "median"}, "tile_score must be 'mean'"),
        ({"backbone": "vit_small_patch16_224"}, "has no reverse-distillation decoder"),
        ({"layers": ("layer1", "layer2")}, "three teacher layers"),
        ({"anomaly_map_mode": "sum"}, "anomaly_map_mode must be one of add, multiply"),
        ({"alpha_tumour": 2.0}, "alpha_tumour must lie in"),
        ({"gamma": -1.0}, "gamma must be at least 0"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"betas": (0.5, 1.5)}, "betas must be two numbers"),
        ({"pre_processor": False}, "needs a pre-processor that resizes"),
    ],
)
def test_invalid_options_raise_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RDFocalConfigError, match=message):
        _model(**kwargs)


def test_defaults_are_the_papers_and_only_the_student_trains() -> None:
    model = _model()
    assert {key: model.hparams[key] for key in ("loss", "alpha_normal", "alpha_tumour", "gamma", "tile_score")} == {
        "loss": "focal",
        "alpha_normal": 0.1,
        "alpha_tumour": 0.9,
        "gamma": 2.0,
        "tile_score": "mean",
    }
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["lr"] == 0.005
    assert optimizer.defaults["betas"] == (0.5, 0.999)
    trained_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained_ids for p in model.model.encoder.parameters())
    assert not any(id(p) in trained_ids for p in model.model.bottleneck.conv4.parameters())

    # Every parameter left trainable receives a gradient: plain DDP needs no find_unused_parameters.
    model.model.train()
    images, labels = _normalised(model, _tiles(4))
    focal_cosine_loss(*model.model(images), labels).backward()
    trainable = [(name, p) for name, p in model.model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(trained_ids)
    assert [name for name, p in trainable if p.grad is None] == []


def test_pred_score_is_the_mean_or_the_max_of_the_anomaly_map() -> None:
    torch.manual_seed(0)
    mean_model = _model(tile_score="mean").eval()
    max_model = _model(tile_score="max").eval()
    max_model.model.load_state_dict(mean_model.model.state_dict())
    images, _ = _normalised(mean_model, _tiles(4))
    with torch.no_grad():
        mean_output = mean_model.model(images)
        max_output = max_model.model(images)
    torch.testing.assert_close(mean_output.anomaly_map, max_output.anomaly_map)
    assert mean_output.anomaly_map.shape == (4, 1, TILE_PX, TILE_PX)
    assert mean_output.pred_score.shape == (4, 1)
    torch.testing.assert_close(mean_output.pred_score, mean_output.anomaly_map.mean(dim=(-2, -1)))
    torch.testing.assert_close(max_output.pred_score, max_output.anomaly_map.amax(dim=(-2, -1)))
    assert bool((mean_output.pred_score < max_output.pred_score).all())


# ---------------------------------------------------------------- backbone weights


def _timm_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).state_dict()


@pytest.mark.parametrize("layout", ["plain.pth", "nested.pt", "model.safetensors"])
def test_weights_path_fills_the_teacher(tmp_path: Path, layout: str) -> None:
    state = _timm_state("resnet18", seed=7)
    path = tmp_path / layout
    if layout == "plain.pth":
        torch.save(state, path)  # the full classifier: layer4 and fc are skipped
    elif layout == "nested.pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = _model(weights_path=str(path), pre_trained=True)  # the file wins: nothing is downloaded
    teacher = model.model.encoder.feature_extractor.state_dict()
    assert len(teacher) == 90
    for key in ("conv1.weight", "layer1.0.bn1.running_mean", "layer3.1.conv2.weight"):
        torch.testing.assert_close(teacher[key], state[key], rtol=0, atol=0)


def test_weights_path_missing_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(BackboneWeightsError, match=r"not found: .*nowhere/resnet18\.pth; pass an existing"):
        _model(weights_path=str(missing))


@pytest.mark.parametrize(
    ("architecture", "problem"),
    [
        ("resnet34", r"unexpected \(layer1\.2\.conv1\.weight"),  # same names as resnet18 plus extra blocks
        ("resnet50", r"of another shape \(layer1\.0\.conv1\.weight file 64x64x1x1 vs model 64x64x3x3"),
    ],
)
def test_weights_of_another_architecture_are_refused(tmp_path: Path, architecture: str, problem: str) -> None:
    path = tmp_path / f"{architecture}.pth"
    torch.save(_timm_state(architecture, seed=0), path)
    with pytest.raises(BackboneWeightsError, match=rf"{architecture}\.pth do not fit backbone 'resnet18': .*{problem}"):
        _model(weights_path=str(path))


def test_pre_trained_offline_says_to_pass_weights_path(monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cfg = timm.models.get_pretrained_cfg("resnet18")
    if cfg is not None and cfg.hf_hub_id and huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors"):
        pytest.skip("resnet18 weights are in the local hub cache: nothing to fail on")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneWeightsError, match=r"cannot download the pre-trained 'resnet18'.*pass weights_path="):
        _model(pre_trained=True)


# ---------------------------------------------------------------- training and checkpoints


def test_focal_training_lowers_the_loss_and_writes_a_checkpoint(trained: dict[str, Any]) -> None:
    assert trained["checkpoint"] is not None
    assert trained["checkpoint"].name == "epoch=1-step=6.ckpt"
    assert trained["loss_after"] < 0.75 * trained["loss_before"]  # about 0.20 -> 0.10
    scores = _scores(trained["predictions"])
    assert scores.shape == (12,)
    assert bool(torch.isfinite(scores).all())


def test_focal_training_scores_unseen_tumour_tiles_above_normal_ones(trained: dict[str, Any]) -> None:
    model = trained["model"]
    images, labels = _normalised(model, _tiles(12, seed=5))  # 4 tumour, 8 normal, not seen in training
    with torch.no_grad():
        scores = model.model.eval()(images).pred_score.reshape(-1)
    assert scores[labels].min() > scores[~labels].max()  # about 2.5 vs 1.5 at most


def test_checkpoint_reloads_with_identical_scores(trained: dict[str, Any], tmp_path: Path) -> None:
    reloaded = RDFocal.load_from_checkpoint(trained["checkpoint"])
    assert reloaded.hparams["loss"] == "focal"
    assert reloaded.model.tile_score == "mean"
    assert reloaded.model.anomaly_map_generator.image_size == (TILE_PX, TILE_PX)  # not the default 256
    original = trained["model"].model.eval()
    with torch.no_grad():
        expected = original(trained["images"]).pred_score
        actual = reloaded.model.eval()(trained["images"]).pred_score
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)

    predictions = _trainer(tmp_path).predict(reloaded, _loader(trained["items"]))
    torch.testing.assert_close(_scores(predictions), _scores(trained["predictions"]), rtol=0, atol=0)


def test_engine_predict_from_checkpoint_gives_identical_scores(trained: dict[str, Any], tmp_path: Path) -> None:
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, enable_progress_bar=False)
    fresh = RDFocal(backbone="resnet18", pre_trained=False, evaluator=False, visualizer=False)  # default 256 px
    predictions = engine.predict(
        model=fresh,
        dataloaders=_loader(trained["items"]),
        ckpt_path=trained["checkpoint"],
        return_predictions=True,
    )
    torch.testing.assert_close(_scores(predictions), _scores(trained["predictions"]), rtol=0, atol=0)


def test_focal_loss_without_tumour_tiles_stops_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoTumourTilesError, match=r"focal loss needs tumour tiles.*8 tiles of epoch 0.*loss='cosine'"):
        _trainer(tmp_path, limit_train_batches=2).fit(_model(), train_dataloaders=_loader(_tiles(8, tumour_every=0)))


class _NormalOnlyTiles(pl.LightningDataModule):
    """A datamodule whose sample table (anomalib's ``train_data.samples``) shows no tumour tile."""

    def __init__(self) -> None:
        super().__init__()
        self.train_data = SimpleNamespace(samples=pd.DataFrame({"label_index": [0, 0, 0, 0, 0]}))

    def train_dataloader(self) -> DataLoader:
        return _loader(_tiles(5, tumour_every=0))


def test_focal_loss_fails_before_training_when_the_sample_table_has_no_tumour(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(NoTumourTilesError, match=r"the 5 tiles of the training set hold none"):
        _trainer(tmp_path).fit(model, datamodule=_NormalOnlyTiles())
    assert model.global_step == 0


def test_cosine_baseline_drops_tumour_tiles_and_trains_on_normal_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(loss="cosine")
    items = _tiles(6, tumour_every=3)  # tiles 1 and 4 are tumour
    batch = ImageBatch.collate(items)
    assert model.pre_processor is not None
    batch = batch.update(image=model.pre_processor.transform(batch.image))
    model.model.train()
    step_loss = model.training_step(batch)["loss"]
    normal = batch.gt_label == 0
    expected = ReverseDistillationLoss()(*model.model(batch.image[normal]))
    assert step_loss.item() == pytest.approx(float(expected), rel=1e-6)

    _trainer(tmp_path, max_steps=2).fit(model, train_dataloaders=_loader(_tiles(8, tumour_every=0)))
    assert model.global_step == 2


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path: Path) -> None:
    model = _model(channels_last=True)
    assert model.model.decoder.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=2)
    trainer.fit(model, train_dataloaders=_loader(_tiles(8)))
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    images, _ = _normalised(model, _tiles(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.model.eval()(images)
    assert output.anomaly_map.dtype == torch.float32
    assert bool(torch.isfinite(output.pred_score).all())
