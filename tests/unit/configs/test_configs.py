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
    assert (
        top_level
        == config_names()
        == ["padim_wsi", "patchcore_wsi", "rd_focal_demo", "rd_focal_wsi", "rd_focal_wsi_stain"]
    )
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


def test_the_stain_config_is_the_paper_config_plus_normalisation_and_h_and_e_augmentation(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.data.stain import HEDJitter, RandomRot90

    paper, stain = load_config("rd_focal_wsi"), load_config("rd_focal_wsi_stain")
    assert "stain_normalization" not in paper["data"]["init_args"]  # FW-RD: the tiles as scanned
    assert stain["model"] == paper["model"] and stain["trainer"] == paper["trainer"]
    extra = {k: v for k, v in stain["data"]["init_args"].items() if k not in paper["data"]["init_args"]}
    assert sorted(extra) == ["stain_normalization", "stain_reference", "train_augmentations"]
    assert {k: v for k, v in stain["data"]["init_args"].items() if k not in extra} == paper["data"]["init_args"]

    data = stain["data"]
    data["init_args"].update(root=str(tmp_path), annotations=None)
    parser = ArgumentParser()
    parser.add_subclass_arguments(WSIDataModule, "data")  # as anomalib train --config builds it
    datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
    assert datamodule.stain is not None and datamodule.stain.method == "macenko"
    kinds = [type(t) for t in datamodule.train_augmentations.transforms]
    assert HEDJitter in kinds and RandomRot90 in kinds
