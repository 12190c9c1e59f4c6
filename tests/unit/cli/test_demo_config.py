"""The Camelyon16 runner runs what configs/rd_focal_wsi.yaml trains, and the configs name real classes and arguments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from anomalib_wsi.reproduction import PREDICT_SETTINGS, default_settings

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_camelyon16_runner_uses_the_paper_config_settings() -> None:
    config = yaml.safe_load((CONFIGS / "rd_focal_wsi.yaml").read_text())
    data = {k: v for k, v in config["data"]["init_args"].items() if k not in {"root", "annotations"}}
    settings = default_settings()
    assert settings["model"] == config["model"]["init_args"]
    assert settings["data"] == data  # the runner writes its own manifest and annotation paths
    assert settings["trainer"] == config["trainer"]
    assert settings["predict"] == PREDICT_SETTINGS


@pytest.mark.parametrize("name", ["rd_focal_demo.yaml", "rd_focal_wsi.yaml", "rd_focal_wsi_stain.yaml"])
def test_config_class_paths_and_arguments_exist(name: str) -> None:
    import importlib

    config = yaml.safe_load((CONFIGS / name).read_text())
    for section in ("model", "data"):
        module_name, _, class_name = config[section]["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        unknown = set(config[section]["init_args"]) - accepted
        assert not unknown, f"{name}: {section} arguments {unknown} are not arguments of {cls.__name__}"


def test_paper_config_holds_fwrd_training_settings() -> None:
    """The values of He & Li's code (FW-RD main.py, test.py, patch_gen.py), each commented with its source."""
    config = yaml.safe_load((CONFIGS / "rd_focal_wsi.yaml").read_text())
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert (trainer["max_epochs"], trainer["precision"], config["seed_everything"]) == (10, 32, 111)
    assert model["backbone"] == "wide_resnet50_2" and model["loss"] == "focal"
    assert (model["lr"], model["betas"]) == (1e-6, [0.5, 0.999])
    assert (model["alpha_normal"], model["alpha_tumour"], model["gamma"]) == (0.1, 0.9, 2.0)
    assert (model["anomaly_map_mode"], model["blur_sigma"], model["blur_border"]) == ("add", 4, "symmetric")
    assert (model["tile_score"], model["image_size"]) == ("mean", 256)
    assert (data["tile_size_px"], data["mpp"], data["train_batch_size"]) == (256, 0.25, 32)
    assert (data["normal_tiles_per_slide"], data["tumour_tiles_per_slide"]) == (500, 122)
    lines = (CONFIGS / "rd_focal_wsi.yaml").read_text().splitlines()
    settings = [line for line in lines if ":" in line and not line.lstrip().startswith("#")]
    values = [line for line in settings if not line.rstrip().endswith(":") and "class_path" not in line]
    uncommented = [line.strip() for line in values if "#" not in line]
    assert uncommented == [], "every value of the paper config says where it comes from"
