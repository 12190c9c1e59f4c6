"""anomalib's own image models on slides: each trains one epoch on normal tiles and predicts two held-out slides.

Padim, PatchCore, STFPM, reverse distillation and FastFlow (resnet18 without pre-trained weights, 64 px tiles) are
trained once per session on a 6-slide synthetic cohort through ``WSIEngine.fit`` with the slide post-processor
(:func:`anomalib_wsi.models.wsi_model`), then ``anomalib-wsi predict --ckpt`` (no ``--model``: the checkpoint
names its model) predicts the two test slides (one with tumour, one without; two more validate, two train), and the
outputs pass the checks RDFocal's pass. EfficientAd is not among them: it downloads its pre-trained teacher and the
Imagenette images, which no offline test can do.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from shapely.geometry import box

from anomalib_wsi.annotations import read_annotations
from anomalib_wsi.cli import main
from anomalib_wsi.data.synthetic import SyntheticCohort, synthesize_cohort

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: Each model's test arguments: resnet18, no download, small layers where the model allows.
MODELS: dict[str, dict[str, Any]] = {
    "Padim": {"backbone": "resnet18", "layers": ["layer1", "layer2"], "pre_trained": False},
    "Patchcore": {
        "backbone": "resnet18",
        "layers": ["layer2", "layer3"],
        "pre_trained": False,
        "coreset_sampling_ratio": 0.02,
    },
    "Stfpm": {"backbone": "resnet18", "pre_trained": False},
    "ReverseDistillation": {"backbone": "resnet18", "pre_trained": False},
    "Fastflow": {"backbone": "resnet18", "pre_trained": False, "flow_steps": 2},
}
DATA = {
    "mpp": 1.0,
    "tile_size_px": 64,
    "normal_tiles_per_slide": 40,
    "tumour_tiles_per_slide": 20,
    "eval_tiles_per_slide": 40,
    "val_ratio": 0.2,
    "test_ratio": 0.2,
    "num_workers": 0,
    "seed": 0,
    "synthesize_if_missing": False,
}
OUTPUT_FILES = ("heatmap.npy", "heatmap.png", "lesions.geojson", "detections.csv", "summary.json")


@dataclass
class Trained:
    """A model trained on the cohort: its checkpoint, the class it was, and what its training set held."""

    ckpt_path: Path
    class_name: str
    train_labels: dict[int, int]


@dataclass
class Zoo:
    """The synthetic cohort and the models trained on it so far (each trained once per session)."""

    root: Path
    cohort: SyntheticCohort
    splits: dict[str, str] = field(default_factory=dict)
    trained: dict[str, Trained] = field(default_factory=dict)

    @property
    def held_out(self) -> list[Path]:
        ids = sorted(slide_id for slide_id, split in self.splits.items() if split == "test")
        return [self.cohort.slide_details[slide_id].path for slide_id in ids]

    def datamodule(self, **kwargs: Any) -> Any:
        from anomalib_wsi import WSIDataModule

        return WSIDataModule(root=self.root / "cohort", **{**DATA, **kwargs})

    def train(self, name: str, **model_kwargs: Any) -> Trained:
        if name in self.trained and not model_kwargs:
            return self.trained[name]
        import lightning

        from anomalib_wsi.inference import WSIEngine, trained_checkpoint
        from anomalib_wsi.models import wsi_model

        lightning.seed_everything(0, workers=True, verbose=False)
        datamodule = self.datamodule()
        model = wsi_model(name, image_size=64, **{**MODELS.get(name, {}), **model_kwargs})
        folder = self.root / f"{name}{len(self.trained)}"
        engine = WSIEngine(
            default_root_dir=folder,
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        engine.fit(model=model, datamodule=datamodule)
        self.splits = {record.slide_id: str(record.split) for record in datamodule.records}
        labels = datamodule.train_data.samples["label_index"].value_counts().to_dict()
        trained = Trained(trained_checkpoint(engine, folder / "model.ckpt"), type(model).__name__, labels)
        if not model_kwargs:
            self.trained[name] = trained
        return trained


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """A 6-slide synthetic cohort (2048 px at 0.5 µm/px; 3 with tumour), models trained on it on demand."""
    root = tmp_path_factory.mktemp("zoo")
    cohort = synthesize_cohort(root / "cohort", n_slides=6, seed=0, size_px=2048, mpp=0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Zoo(root, cohort)
    finally:
        torch.set_num_threads(threads)


def _predict(ckpt: Path, slides: list[Path], output: Path, *extra: str) -> int:
    args = ["predict", "--ckpt", str(ckpt), *map(str, slides), "--output", str(output)]
    return main([*args, "--num-workers", "0", "--device", "cpu", *extra])


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return [line for line in captured.err.splitlines() if "error:" in line]


@pytest.mark.parametrize("name", list(MODELS))
def test_model_trains_on_normal_tiles_and_predicts_slides_through_the_cli(
    name: str, zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = zoo.train(name)
    # one-class models see normal tiles only, though the data module sampled tumour tiles for RDFocal too
    assert trained.train_labels.get(1, 0) == 0 and trained.train_labels[0] >= 40
    state = torch.load(trained.ckpt_path, map_location="cpu", weights_only=False)
    assert state["anomalib_wsi_model"]["class_path"].endswith(f".{name}")

    slides = zoo.held_out
    assert len(slides) == 2 and {p.stem in zoo.cohort.tumour_slide_ids for p in slides} == {True, False}
    output = tmp_path / "out"
    assert _predict(trained.ckpt_path, slides, output) == 0, capsys.readouterr().err[-2000:]
    assert _error_lines(capsys) == []

    table = pd.read_csv(output / "summary.csv")
    assert sorted(table.slide_id) == sorted(p.stem for p in slides) and set(table.status) == {"done"}
    assert pd.read_csv(output / "failures.csv").empty
    for path in slides:
        folder = output / path.stem
        for file_name in OUTPUT_FILES:
            assert (folder / file_name).is_file(), f"{name}: {path.stem}/{file_name}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["checkpoint"] == str(trained.ckpt_path)
        assert summary["tile_mpp"] == 1.0 and summary["tile_size_px"] == 64  # the training tiling, from the ckpt
        assert summary["n_tiles"] > 20 and 0.0 <= summary["slide_score"] <= 1.0
        width, height = summary["slide_size_lv0"]
        assert (width, height) == (2048, 2048)
        # QuPath GeoJSON: properties carry objectType and classification; polygons inside the slide
        data = json.loads((folder / "lesions.geojson").read_text())
        assert data["type"] == "FeatureCollection" and len(data["features"]) == summary["n_lesions"]
        for feature in data["features"]:
            props = feature["properties"]
            assert "objectType" not in feature and props["objectType"] == "annotation"
            assert props["classification"]["name"] == "Tumor"
            assert 0.5 <= props["measurements"]["mean_score"] <= props["measurements"]["max_score"] <= 1.0
        annotations = read_annotations(folder / "lesions.geojson", slide_size=(width, height))
        assert annotations.warnings == []
        if not annotations.region.is_empty:
            assert box(0, 0, width, height).contains(annotations.region)
        # Camelyon16 detections: no header, confidence,x,y with integer level-0 x, y inside the slide, best first
        with (folder / "detections.csv").open(newline="") as handle:
            rows = list(csv.reader(handle))
        assert len(rows) == summary["n_detections"]
        confidences = [float(row[0]) for row in rows]
        assert confidences == sorted(confidences, reverse=True)
        assert all(len(row) == 3 and row[1].isdigit() and row[2].isdigit() for row in rows)
        assert all(0 <= int(row[1]) < width and 0 <= int(row[2]) < height for row in rows)


def test_python_api_loads_the_named_class_and_refuses_another(zoo: Zoo, tmp_path: Path) -> None:
    from anomalib.models import Padim, Patchcore

    from anomalib_wsi import WSIEngine
    from anomalib_wsi.inference.checkpoint import CheckpointError

    trained = zoo.train("Padim")
    engine = WSIEngine(batch_size=64, num_workers=0, device="cpu", progress=False)
    run = engine.predict(model=Padim, ckpt_path=trained.ckpt_path, slides=zoo.held_out, output_dir=tmp_path / "o")
    assert len(run) == 2 and not run.failures
    assert all(result.paths["detections"].is_file() and result.n_tiles > 20 for result in run)
    with pytest.raises(CheckpointError, match=r"holds a Padim model, not Patchcore; pass model=Padim"):
        engine.predict(model=Patchcore, ckpt_path=trained.ckpt_path, slides=zoo.held_out, output_dir=tmp_path / "p")


def test_a_one_class_model_with_normal_only_false_is_refused(zoo: Zoo) -> None:
    from anomalib_wsi.errors import WSIError
    from anomalib_wsi.models import RDFocal, wsi_model

    padim = wsi_model("Padim", image_size=64, **MODELS["Padim"])
    with pytest.raises(WSIError, match=r"Padim learns from normal tiles only.*set data.normal_only: true"):
        zoo.datamodule(normal_only=False).resolve_normal_only(padim)
    assert zoo.datamodule().resolve_normal_only(padim) is True
    focal = RDFocal(backbone="resnet18", pre_trained=False, image_size=64)
    assert zoo.datamodule().resolve_normal_only(focal) is False  # the paper's labelled tumour tiles stay
    assert zoo.datamodule().resolve_normal_only(RDFocal(backbone="resnet18", pre_trained=False, loss="cosine"))


def test_a_checkpoint_the_plugin_cannot_predict_with_exits_2_with_one_line(
    zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anomalib_wsi import WSIPostProcessor

    # DFKDE scores tiles but draws no anomaly map, so a heatmap finer than its tiles cannot be made
    trained = zoo.train(
        "Dfkde", backbone="resnet18", pre_trained=False, post_processor=WSIPostProcessor(heatmap_cells_per_tile=2)
    )
    assert _predict(trained.ckpt_path, zoo.held_out[:1], tmp_path / "out") == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "Dfkde gives no anomaly map" in lines[0] and "heatmap_cells_per_tile" in lines[0]
    assert not (tmp_path / "out" / zoo.held_out[0].stem).exists()

    # a checkpoint naming a model that is not installed here
    state = torch.load(zoo.train("Padim").ckpt_path, map_location="cpu", weights_only=False)
    state["anomalib_wsi_model"] = {"class_path": "hospital_models.TumourNet"}
    ckpt = tmp_path / "other.ckpt"
    torch.save(state, ckpt)
    assert _predict(ckpt, zoo.held_out[:1], tmp_path / "out2") == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "hospital_models.TumourNet" in lines[0] and "cannot be imported" in lines[0]
