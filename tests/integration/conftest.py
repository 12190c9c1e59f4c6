"""Fixtures of the end-to-end tests: a tiny RDFocal trained once per session on a small synthetic cohort.

The model is the demo's (``anomalib_wsi.cli.demo.DEMO_MODEL``: resnet18 without pre-trained weights, 64 px tiles at
1 µm/px, focal loss) trained for 2 epochs on 8 synthetic 3072 px slides at 0.5 µm/px with fewer sampled tiles
than the demo. Slides split by slide, 2 per class for training and 1 per class for validation and for testing, so
4 slides (2 tumour, 2 normal) are never trained on. About 25 s of training on two CPU cores.

The model trains on one torch thread, and prediction tests ask for the ``one_torch_thread`` fixture: on two CPU
cores shared with other processes, OpenMP's second thread spins instead of working (a forward pass of this model
measured 26 tiles/s on two threads against 136 on one).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_wsi.data.synthetic import SyntheticCohort, SyntheticSlide, synthesize_cohort, synthesize_slide

#: Epochs and tile counts of the test model (the demo trains 4 epochs on 300 normal / 120 tumour tiles per slide).
TEST_EPOCHS = 2
TEST_TILES = {"normal_tiles_per_slide": 120, "tumour_tiles_per_slide": 60, "eval_tiles_per_slide": 100}


@dataclass
class TrainedModel:
    """A checkpoint trained on a synthetic cohort, and which slides it was trained on.

    Attributes:
        ckpt_path: the Lightning checkpoint.
        cohort: the synthetic cohort (slides, ASAP XML, geometry in level-0 pixels).
        splits: ``train`` / ``val`` / ``test`` of every slide id.
    """

    ckpt_path: Path
    cohort: SyntheticCohort
    splits: dict[str, str] = field(default_factory=dict)

    @property
    def held_out_ids(self) -> list[str]:
        """Slides whose tiles were never trained on (validation and test splits), sorted."""
        return sorted(slide_id for slide_id, split in self.splits.items() if split != "train")

    def slide(self, slide_id: str) -> SyntheticSlide:
        """The synthetic slide ``slide_id``."""
        return self.cohort.slide_details[slide_id]

    def is_tumour(self, slide_id: str) -> bool:
        """Whether slide ``slide_id`` carries tumour."""
        return slide_id in self.cohort.tumour_slide_ids


#: Wall-clock limit of a test's subprocess, in seconds: only a guard against a process that never ends (a DDP
#: rank waiting for a rank that died), never a speed check, so it sits far above any run on a slow, shared machine.
#: ``ANOMALIB_WSI_TEST_HANG_S`` replaces it; ``0`` waits for ever.
HANG_TIMEOUT_S = 4 * 3600.0


@pytest.fixture
def hang_timeout_s() -> float | None:
    """The subprocess limit of this run (:data:`HANG_TIMEOUT_S` or ``ANOMALIB_WSI_TEST_HANG_S``; None: no limit)."""
    value = float(os.environ.get("ANOMALIB_WSI_TEST_HANG_S", HANG_TIMEOUT_S))
    return value if value > 0 else None


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now, so parallel runs never share a rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run a test with one torch thread (see the module docstring), then restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """Train the tiny RDFocal once per session; returns its checkpoint, the cohort and the split."""
    import lightning

    from anomalib_wsi.cli.demo import DEMO_DATA, DEMO_MODEL, DEMO_TRAINER
    from anomalib_wsi.data.datamodule import WSIDataModule
    from anomalib_wsi.inference import WSIEngine, trained_checkpoint
    from anomalib_wsi.models.rd_focal import RDFocal

    root = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lightning.seed_everything(0, workers=True, verbose=False)
        cohort = synthesize_cohort(root / "cohort", n_slides=8, seed=0, size_px=3072, mpp=0.5)
        data_args = {
            **DEMO_DATA,
            **TEST_TILES,
            "root": root / "cohort",
            "synthesize_if_missing": False,
            "val_ratio": 0.25,
            "test_ratio": 0.25,
            "num_workers": 0,
            "seed": 0,
        }
        datamodule = WSIDataModule(**data_args)
        trainer_args = {
            **DEMO_TRAINER,
            "max_epochs": TEST_EPOCHS,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "logger": False,
        }
        engine = WSIEngine(default_root_dir=root / "results", **trainer_args)
        engine.fit(model=RDFocal(**DEMO_MODEL), datamodule=datamodule)
        ckpt = trained_checkpoint(engine, root / "model.ckpt")
    finally:
        torch.set_num_threads(threads)
    splits = {record.slide_id: str(record.split) for record in datamodule.records}
    return TrainedModel(ckpt_path=ckpt, cohort=cohort, splits=splits)


@pytest.fixture(scope="session")
def small_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticSlide]:
    """Two small synthetic slides (1536 px at 0.5 µm/px, about 60 tiles each): ``tumour`` and ``normal``."""
    folder = tmp_path_factory.mktemp("small_slides")
    return {
        "tumour": synthesize_slide(folder / "small_tumour.tif", size_px=1536, mpp=0.5, seed=11, tumour=True),
        "normal": synthesize_slide(folder / "small_normal.tif", size_px=1536, mpp=0.5, seed=12, tumour=False),
    }


def write_blank_slide(path: Path, size_px: int = 1024, mpp: float = 0.5) -> Path:
    """Write an all-white tiled TIFF with a recorded mpp: a valid slide without tissue."""
    import tifffile

    image = np.full((size_px, size_px, 3), 242, dtype=np.uint8)
    tifffile.imwrite(
        path,
        image,
        bigtiff=True,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    return path


@pytest.fixture
def blank_slide(tmp_path: Path) -> Path:
    """An all-white 1024 px slide at 0.5 µm/px (no tissue, so no tile to score)."""
    (tmp_path / "blank").mkdir()
    return write_blank_slide(tmp_path / "blank" / "blank.tif")


@pytest.fixture
def truncated_slide(tmp_path: Path, small_slides: dict[str, SyntheticSlide]) -> Path:
    """A synthetic slide cut off after its first 40 % of bytes (a download that stopped half-way)."""
    data = small_slides["normal"].path.read_bytes()
    (tmp_path / "truncated").mkdir()
    path = tmp_path / "truncated" / "truncated.tif"
    path.write_bytes(data[: int(len(data) * 0.4)])
    return path


def write_corrupt_tiles_slide(path: Path) -> Path:
    """A 2048 px slide at 0.5 µm/px whose pixels fail to decode in one region of its 1 µm/px level.

    The slide opens, its tissue mask comes from the intact 512 px level and the probe read of the tiling (the
    middle tile) succeeds, so it is tiled; reading the tiles of the zeroed JPEG tile (the top-most tissue tiles)
    then fails inside the DataLoader, as a slide with a damaged region does.
    """
    import tifffile

    from anomalib_wsi.slide.reader import Slide
    from anomalib_wsi.slide.tiling import TilingConfig, tile_slide

    synthesize_slide(path, size_px=2048, mpp=0.5, seed=13, tumour=False, min_level_px=512)
    with Slide(path) as slide:  # the tiles prediction reads: 64 px at 1 µm/px from level 1, min tissue 0.25
        table = tile_slide(slide, TilingConfig(mpp=1.0, tile_size_px=64, min_tissue=0.25))
    first, middle = table.iloc[0], table.iloc[len(table) // 2]
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[1]  # level 1: 1024 px, 1 µm/px, 256 px JPEG tiles
        per_row = -(-page.shape[1] // 256)
        index = int(first.y) // 512 * per_row + int(first.x) // 512
        keep = {int(middle.y + dy) // 512 * per_row + int(middle.x + dx) // 512 for dy in (0, 127) for dx in (0, 127)}
        assert index not in keep, "the damaged JPEG tile must not hold the tiling's probe tile"
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * count)
    return path


@pytest.fixture
def damaged_slide(tmp_path: Path) -> Path:
    """A 2048 px slide that tiles but whose tiles in one region fail to decode (see write_corrupt_tiles_slide)."""
    (tmp_path / "damaged").mkdir()
    return write_corrupt_tiles_slide(tmp_path / "damaged" / "damaged.tif")
