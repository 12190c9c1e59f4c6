"""The demo runs what configs/rd_focal_demo.yaml trains, and both configs name real classes and arguments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from anomalib_wsi.benchmark import PREDICT_SETTINGS, default_settings
from anomalib_wsi.demo import DEMO_DATA, DEMO_MODEL, DEMO_TRAINER

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_demo_uses_the_demo_config_settings() -> None:
    config = yaml.safe_load((CONFIGS / "rd_focal_demo.yaml").read_text())
    assert config["model"]["init_args"] == DEMO_MODEL
    assert config["data"]["init_args"] == DEMO_DATA
    assert config["trainer"] == DEMO_TRAINER


def test_camelyon16_runner_uses_the_paper_config_settings() -> None:
    config = yaml.safe_load((CONFIGS / "rd_focal_wsi.yaml").read_text())
    data = {k: v for k, v in config["data"]["init_args"].items() if k not in {"root", "annotations"}}
    settings = default_settings()
    assert settings["model"] == config["model"]["init_args"]
    assert settings["data"] == data  # the runner writes its own manifest and annotation paths
    assert settings["trainer"] == config["trainer"]
    assert settings["predict"] == PREDICT_SETTINGS


@pytest.mark.parametrize("name", ["rd_focal_demo.yaml", "rd_focal_wsi.yaml"])
def test_config_class_paths_and_arguments_exist(name: str) -> None:
    import importlib

    config = yaml.safe_load((CONFIGS / name).read_text())
    for section in ("model", "data"):
        module_name, _, class_name = config[section]["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        unknown = set(config[section]["init_args"]) - accepted
        assert not unknown, f"{name}: {section} arguments {unknown} are not arguments of {cls.__name__}"


def test_paper_config_holds_the_paper_setting() -> None:
    config = yaml.safe_load((CONFIGS / "rd_focal_wsi.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert model["backbone"] == "wide_resnet50_2" and model["loss"] == "focal"
    assert (model["alpha_normal"], model["alpha_tumour"], model["gamma"]) == (0.1, 0.9, 2.0)
    assert model["betas"] == [0.5, 0.999]
    assert (data["tile_size_px"], data["mpp"]) == (256, 0.25)
    assert (data["normal_tiles_per_slide"], data["tumour_tiles_per_slide"]) == (500, 122)
