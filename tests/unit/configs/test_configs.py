"""Tests of anomalib_wsi/configs: the packaged configs are the repository's configs/, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_wsi.configs import config_names, config_text, load_config
from anomalib_wsi.errors import WSIError

TOP_LEVEL = Path(__file__).resolve().parents[3] / "configs"
PACKAGED = Path(__file__).resolve().parents[3] / "anomalib_wsi" / "configs"


def test_every_top_level_config_is_packaged_byte_for_byte() -> None:
    top_level = sorted(p.stem for p in TOP_LEVEL.glob("*.yaml"))
    assert top_level == config_names() == ["padim_wsi", "patchcore_wsi", "rd_focal_demo", "rd_focal_wsi"]
    for name in top_level:
        packaged, copy = PACKAGED / f"{name}.yaml", TOP_LEVEL / f"{name}.yaml"
        assert copy.read_bytes() == packaged.read_bytes(), (
            f"configs/{name}.yaml differs from anomalib_wsi/configs/{name}.yaml (the source): edit the packaged file "
            f"and copy it: cp anomalib_wsi/configs/{name}.yaml configs/"
        )


def test_load_config_reads_a_packaged_config_by_stem_or_file_name() -> None:
    config = load_config("rd_focal_wsi")
    assert config == load_config("rd_focal_wsi.yaml")
    assert config["model"]["class_path"] == "anomalib_wsi.models.rd_focal.RDFocal"
    assert config["data"]["init_args"]["tile_size_px"] == 256
    config["trainer"]["max_epochs"] = -1  # each call returns a fresh copy
    assert load_config("rd_focal_wsi")["trainer"]["max_epochs"] > 0
    assert config_text("rd_focal_demo").startswith("# RDFocal on the synthetic demo cohort")


def test_an_unknown_config_names_the_packaged_ones() -> None:
    with pytest.raises(
        WSIError,
        match="no packaged config 'rd_focal_mvtec'; choose one of padim_wsi, patchcore_wsi, rd_focal_demo, rd_f",
    ):
        load_config("rd_focal_mvtec")


@pytest.mark.parametrize(("name", "model"), [("padim_wsi", "Padim"), ("patchcore_wsi", "Patchcore")])
def test_anomalib_model_configs_build_a_slide_model_and_a_one_class_data_module(name: str, model: str) -> None:
    from anomalib_wsi import WSIDataModule, WSIPostProcessor
    from anomalib_wsi.models.anomalib_models import model_class

    config = load_config(name)
    cls = model_class(config["model"]["class_path"])
    assert cls.__name__ == model
    init_args = dict(config["model"]["init_args"])
    post = init_args.pop("post_processor")
    assert post["class_path"] == "anomalib_wsi.WSIPostProcessor"
    built = cls(**{**init_args, "pre_trained": False}, post_processor=WSIPostProcessor(**post["init_args"]))
    assert tuple(built.input_size) == (256, 256) == (config["data"]["init_args"]["tile_size_px"],) * 2
    datamodule = WSIDataModule(**config["data"]["init_args"])
    assert datamodule.normal_only is None and datamodule.resolve_normal_only(built) is True
    assert config["trainer"]["max_epochs"] == 1
