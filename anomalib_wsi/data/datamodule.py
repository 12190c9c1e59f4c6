"""``WSIDataModule``: slides -> tissue tiles -> labelled tiles -> anomalib train/val/test sets.

The data module tiles every slide (tables cached with their parameters), labels tiles from Camelyon16 ASAP XML or
QuPath GeoJSON annotations, splits by slide (seeded, no slide in two splits, the split written to ``split.csv``)
and samples training tiles as He & Li (MIDL 2023) did: up to ``normal_tiles_per_slide`` normal tiles from every
training slide and up to ``tumour_tiles_per_slide`` tumour tiles from each tumour slide.

With ``coordinates`` (patch lists like the paper's own, see :mod:`anomalib_wsi.data.coordinates`) the training
tiles are exactly the listed patches instead: level-0 squares of ``tile_size_px`` around the listed centres, with
the listed labels; the slides they name are the training slides, and the other slides go to validation and test.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform
from tqdm.auto import tqdm

from anomalib_wsi.cohort import ANNOTATION_EXTENSIONS, SlideRecord, find_annotation, read_manifest, read_slide_labels
from anomalib_wsi.cohort import SPLITS as _SPLITS
from anomalib_wsi.data.coordinates import (
    CoordinateSpec,
    coordinate_spec_strings,
    listed_patch_samples,
    read_coordinates,
    split_by_coordinates,
)
from anomalib_wsi.data.dataset import WSITileDataset
from anomalib_wsi.data.stain import StainReference, resolve_reference
from anomalib_wsi.errors import WSIError
from anomalib_wsi.files import atomic_path
from anomalib_wsi.slide.reader import SLIDE_EXTENSIONS, Slide, list_slides

__all__ = ["ANNOTATION_EXTENSIONS", "SlideRecord", "WSIDataModule", "assign_splits", "read_manifest"]

logger = logging.getLogger(__name__)


def assign_splits(records: list[SlideRecord], val_ratio: float, test_ratio: float, seed: int) -> list[SlideRecord]:
    """Split slides into train/val/test, stratified by slide label, keeping splits already given.

    Every split gets at least one slide when there are three or more; tumour slides are spread over the splits
    in the same proportions as normal slides. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    todo = [r for r in records if r.split is None]
    for label in (1, 0, None):
        group = [r for r in todo if r.label == label]
        order = rng.permutation(len(group))
        n = len(group)
        n_test = round(n * test_ratio)
        n_val = round(n * val_ratio)
        for rank, index in enumerate(order):
            group[index].split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    # with three or more slides make sure no split is empty (take from the largest)
    if len(records) >= 3:
        for split in _SPLITS:
            if not any(r.split == split for r in records):
                counts = {s: [r for r in todo if r.split == s] for s in _SPLITS}
                donor = max(counts, key=lambda s: len(counts[s]))
                if len(counts[donor]) > 1:
                    counts[donor][-1].split = split
    return records


class WSIDataModule(AnomalibDataModule):
    """Whole-slide images as an anomalib data module (tiles read lazily in DataLoader workers).

    Args:
        root: a cohort folder (with ``slides/`` and optionally ``annotations/`` and ``labels.csv``, as written by
            ``anomalib-wsi synth``), a folder of slides, or a CSV manifest
            (``slide_path, annotation_path, split, label, mpp``; all but the first optional).
        annotations: folder of annotation files matched to slides by stem (``.xml`` ASAP, ``.geojson``/``.json``
            QuPath). Default: ``<root>/annotations`` when it exists.
        mpp: resolution of the tiles in µm per pixel (0.25 ≈ Camelyon16 level 0, 40x).
        tile_size_px: tile side given to the model.
        stride_px: step between tiles at ``mpp`` (default: the tile size).
        min_tissue: minimum tissue fraction of a tile.
        tumour_threshold: tumour fraction from which a tile is labelled tumour (between 0 and it: ignored).
        normal_tiles_per_slide: normal tiles sampled per training slide (paper: 500).
        tumour_tiles_per_slide: tumour tiles sampled per training tumour slide (paper: about 122).
        eval_tiles_per_slide: cap on labelled tiles per validation/test slide (None: all), tumour tiles first.
        normal_only: train on normal tiles only. None (default): as the model learns, from its ``learning_type``:
            anomalib's one-class models (Padim, PatchCore, STFPM, reverse distillation, ...) get the normal tiles
            only, RDFocal's focal loss the labelled tumour tiles too. False with a one-class model is an error.
        normal_slides: an extra folder of normal slides whose tiles join the training set as normal tiles.
        coordinates: train on these listed patches instead of sampled tiles: coordinate files of level-0 patch
            centres (``slide_id,x_center,y_center[,label]``, as the paper's ``train_good.txt``/``train_bad.txt``),
            spelt ``["train_good.txt:0", "train_bad.txt:1"]``, ``{train_good.txt: 0, train_bad.txt: 1}``, a folder
            holding those two files, or a ``path,label`` CSV manifest. Each patch is read at level 0 with side
            ``tile_size_px`` around its centre; ``mpp`` must match the slides' level-0 resolution.
        val_ratio: fraction of slides for validation (when the manifest gives no split).
        test_ratio: fraction of slides for testing.
        slide_mpp: level-0 mpp for slides that record none (a manifest ``mpp`` column wins).
        cache_dir: where tile tables and ``split.csv`` go (default ``<root>/tile_cache``).
        synthesize_if_missing: when ``root`` does not exist, write the synthetic demo cohort there first
            (in ``prepare_data``), the way anomalib's data modules download theirs.
        synthetic_slides: number of slides of that cohort.
        synthetic_size_px: slide side of that cohort in level-0 pixels.
        train_batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers (each opens its own slide handles).
        train_augmentations: augmentations of training tiles.
        val_augmentations: augmentations of validation tiles.
        test_augmentations: augmentations of test tiles.
        augmentations: augmentations for every split without its own.
        seed: seed of the split and the tile sampling.
        stain_normalization: ``"macenko"`` or ``"reinhard"``: stain-normalise every tile (training, validation,
            test, and prediction with the checkpoint) to ``stain_reference``, in the DataLoader workers; None
            (default, as FW-RD): the tiles as scanned.
        stain_reference: what to normalise to: a tile (PNG/JPEG/TIFF), a folder of tiles, a slide region
            ``SLIDE@x,y,width,height`` (level-0 px), a fit written by ``anomalib-wsi stain fit`` (``.json``) or
            its dict. None with Macenko: torchstain's standard H&E reference. The fitted reference (plain
            numbers) is what the checkpoint stores.

    Example:
        >>> from anomalib_wsi import WSIDataModule                       # doctest: +SKIP
        >>> datamodule = WSIDataModule(root="cohort", mpp=0.5, tile_size_px=256)
        >>> datamodule.setup(); len(datamodule.train_data)
    """

    def __init__(
        self,
        root: str | Path = "./datasets/wsi",
        annotations: str | Path | None = None,
        mpp: float = 0.5,
        tile_size_px: int = 256,
        stride_px: int | None = None,
        min_tissue: float = 0.5,
        tumour_threshold: float = 0.5,
        normal_tiles_per_slide: int = 500,
        tumour_tiles_per_slide: int = 122,
        eval_tiles_per_slide: int | None = 500,
        normal_only: bool | None = None,
        normal_slides: str | Path | None = None,
        coordinates: CoordinateSpec | None = None,
        val_ratio: float = 0.2,
        test_ratio: float = 0.2,
        slide_mpp: float | None = None,
        cache_dir: str | Path | None = None,
        synthesize_if_missing: bool = False,
        synthetic_slides: int = 8,
        synthetic_size_px: int = 4096,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 2,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int = 0,
        stain_normalization: str | None = None,
        stain_reference: str | Path | dict[str, Any] | None = None,
    ) -> None:
        # the fitted reference (plain numbers) replaces what named it, so the checkpoint needs no reference file
        stain = resolve_reference(stain_normalization, stain_reference, where="data.stain_reference")
        stain_reference = stain.as_dict() if stain is not None else None
        # plain types only, so checkpoints load with torch.load(weights_only=True)
        hparams = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in locals().items()
            if key not in {"self", "__class__", "stain"} and not key.endswith("augmentations")
        }
        hparams["coordinates"] = coordinate_spec_strings(coordinates)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            val_split_mode="none",
            test_split_mode="none",
            seed=seed,
        )
        if not 0 <= val_ratio < 1 or not 0 <= test_ratio < 1 or val_ratio + test_ratio >= 1:
            msg = f"val_ratio ({val_ratio}) and test_ratio ({test_ratio}) must be in [0, 1) and sum below 1"
            raise ValueError(msg)
        if not 0 < tumour_threshold <= 1:
            msg = f"tumour_threshold must be in (0, 1], got {tumour_threshold}"
            raise ValueError(msg)
        # stored in checkpoints, so prediction reuses the training resolution and tile size
        self.save_hyperparameters(hparams)
        self.stain: StainReference | None = stain
        self.root = Path(root)
        self.annotations = Path(annotations) if annotations is not None else None
        self.mpp = float(mpp)
        self.tile_size_px = int(tile_size_px)
        self.stride_px = stride_px
        self.min_tissue = float(min_tissue)
        self.tumour_threshold = float(tumour_threshold)
        self.normal_tiles_per_slide = int(normal_tiles_per_slide)
        self.tumour_tiles_per_slide = int(tumour_tiles_per_slide)
        self.eval_tiles_per_slide = eval_tiles_per_slide
        self.normal_only = normal_only
        self.normal_slides = Path(normal_slides) if normal_slides is not None else None
        self.coordinates = coordinates
        self.val_ratio = val_ratio
        self.test_ratio = test_ratio
        self.slide_mpp = slide_mpp
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.synthesize_if_missing = synthesize_if_missing
        self.synthetic_slides = synthetic_slides
        self.synthetic_size_px = synthetic_size_px
        self.records: list[SlideRecord] = []
        self.tile_tables: dict[str, pd.DataFrame] = {}
        self._coordinate_table: pd.DataFrame | None = None
        self._category = self.root.name

    # -- data preparation --------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the synthetic demo cohort into ``root`` when it is missing and ``synthesize_if_missing`` is set."""
        if self.root.exists() or not self.synthesize_if_missing:
            return
        from anomalib_wsi.data.synthetic import synthesize_cohort

        logger.info("%s is missing: writing the synthetic demo cohort there", self.root)
        synthesize_cohort(
            self.root, n_slides=self.synthetic_slides, seed=self.seed or 0, size_px=self.synthetic_size_px
        )

    @property
    def tile_cache_dir(self) -> Path:
        """Folder of the cached tile tables and ``split.csv``."""
        if self.cache_dir is not None:
            return self.cache_dir
        base = self.root if self.root.is_dir() else self.root.parent
        return base / "tile_cache"

    def discover(self) -> list[SlideRecord]:
        """The cohort's slides with their annotation files, labels and (given or drawn) splits.

        Raises:
            WSIError: ``root`` or ``annotations`` does not exist, or no slide is found.
        """
        root = self.root
        if not root.exists():
            hint = " (or set data.synthesize_if_missing: true for the synthetic demo cohort)"
            msg = f"{root}: slide folder or manifest does not exist; set data.root to your slides{hint}"
            raise WSIError(msg)
        annotation_dir = self.annotations
        if annotation_dir is not None and not annotation_dir.is_dir():
            msg = f"{annotation_dir}: annotation folder does not exist; fix data.annotations or leave it empty"
            raise WSIError(msg)
        labels: dict[str, int] = {}
        if root.is_file():
            records = read_manifest(root, annotation_dir)
        else:
            slide_dir = root / "slides" if (root / "slides").is_dir() else root
            if annotation_dir is None and (root / "annotations").is_dir():
                annotation_dir = root / "annotations"
            if (root / "labels.csv").is_file():
                labels = read_slide_labels(root / "labels.csv")
            records = [
                SlideRecord(path, find_annotation(annotation_dir, path.stem), None, labels.get(path.stem))
                for path in list_slides(slide_dir)
            ]
        if not records:
            msg = (
                f"{root}: no slides found (looked for {', '.join(SLIDE_EXTENSIONS[:5])}, ...); point data.root at them"
            )
            raise WSIError(msg)
        for record in records:
            if record.label is None:
                record.label = 1 if record.annotation_path is not None else 0
            if record.label == 1 and record.annotation_path is None:
                logger.warning("%s: tumour slide without annotations; its tiles are not labelled", record.slide_path)
        if self.coordinates is not None:
            return self._split_by_coordinates(records)
        return assign_splits(records, self.val_ratio, self.test_ratio, self.seed or 0)

    # -- listed patches (data.coordinates) ---------------------------------------------------------------------
    def coordinate_table(self) -> pd.DataFrame:
        """The patches of ``coordinates`` (read once): ``slide_id, x_center, y_center, label, source``."""
        if self._coordinate_table is None:
            if self.coordinates is None:
                msg = "data.coordinates is not set"
                raise WSIError(msg)
            self._coordinate_table = read_coordinates(self.coordinates)
        return self._coordinate_table

    def _split_by_coordinates(self, records: list[SlideRecord]) -> list[SlideRecord]:
        return split_by_coordinates(
            records, self.coordinate_table(), self.val_ratio, self.test_ratio, self.seed or 0, where=str(self.root)
        )

    def _listed_patches(self, records: list[SlideRecord]) -> pd.DataFrame:
        coordinates = self.coordinate_table()
        if self.normal_only:
            coordinates = coordinates[coordinates["label"] == 0]
        return listed_patch_samples(records, coordinates, self.tile_size_px, self.mpp, self.slide_mpp)

    def _write_split(self, records: list[SlideRecord]) -> Path:
        path = self.tile_cache_dir / "split.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(
            {
                "slide_id": [r.slide_id for r in records],
                "slide_path": [str(r.slide_path) for r in records],
                "annotation_path": [str(r.annotation_path) if r.annotation_path else "" for r in records],
                "label": [r.label for r in records],
                "split": [r.split for r in records],
            }
        )
        with atomic_path(path, suffix=".csv") as tmp:  # a unique temporary name: DDP ranks write it at once
            table.to_csv(tmp, index=False)
        return path

    def tile_table(self, record: SlideRecord) -> pd.DataFrame:
        """The labelled tile table of one slide (tiles cached; labels from its annotations)."""
        from anomalib_wsi.annotations import read_annotations
        from anomalib_wsi.annotations.tile_labels import label_tiles
        from anomalib_wsi.slide.tiling import TilingConfig, load_or_tile

        config = TilingConfig(
            mpp=self.mpp, tile_size_px=self.tile_size_px, stride_px=self.stride_px, min_tissue=self.min_tissue
        )
        mpp = record.mpp if record.mpp is not None else self.slide_mpp
        table, _ = load_or_tile(record.slide_path, config, self.tile_cache_dir / record.slide_id, slide_mpp=mpp)
        annotations = read_annotations(record.annotation_path) if record.annotation_path else None
        slide = Slide(record.slide_path, mpp=mpp)
        table = label_tiles(table, annotations, slide=slide, threshold=self.tumour_threshold)
        table["slide_path"] = str(record.slide_path)
        table["annotation_path"] = str(record.annotation_path) if record.annotation_path else ""
        table["slide_mpp"] = mpp if mpp is not None else np.nan
        table["split"] = record.split
        slide.close()
        return table

    def _sample_train(self, table: pd.DataFrame, rng: np.random.Generator, tumour_slide: bool) -> pd.DataFrame:
        normal = table[table.label == 0]
        parts = [normal.iloc[rng.permutation(len(normal))[: self.normal_tiles_per_slide]]]
        if tumour_slide and not self.normal_only:
            tumour = table[table.label == 1]
            parts.append(tumour.iloc[rng.permutation(len(tumour))[: self.tumour_tiles_per_slide]])
        return pd.concat(parts)

    def _sample_eval(self, table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        table = table[table.label >= 0]
        cap = self.eval_tiles_per_slide
        if cap is None or len(table) <= cap:
            return table
        tumour, normal = table[table.label == 1], table[table.label == 0]
        n_tumour = min(len(tumour), cap // 2)
        return pd.concat(
            [
                tumour.iloc[rng.permutation(len(tumour))[:n_tumour]],
                normal.iloc[rng.permutation(len(normal))[: cap - n_tumour]],
            ]
        )

    # -- loaders: workers that live across epochs (slide handles stay open), pinned memory for GPU copies ------
    def _loader(self, dataset: AnomalibDataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=self.external_collate_fn or dataset.collate_fn,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Training tiles, shuffled (Lightning adds a distributed sampler under DDP).

        A one-class model (see :meth:`resolve_normal_only`) gets the normal tiles only.
        """
        model = getattr(getattr(self, "trainer", None), "lightning_module", None)
        if model is not None and self.stain is not None:
            # a model predicted with straight after training, without its checkpoint, normalises its tiles too
            model.stain_reference = self.stain
        if self.resolve_normal_only(model):
            samples = self.train_data.samples
            tumour = samples["label_index"] == 1
            if bool(tumour.any()):
                logger.info(
                    "%s learns from normal tiles only (data.normal_only): training on %d normal tiles, %d tumour "
                    "tiles left out",
                    type(model).__name__ if model is not None else "the model",
                    int((~tumour).sum()),
                    int(tumour.sum()),
                )
                self.train_data = WSITileDataset(samples[~tumour], self.mpp, with_masks=False, stain=self.stain)
        return self._loader(self.train_data, self.train_batch_size, shuffle=True)

    def resolve_normal_only(self, model: Any) -> bool:
        """Whether ``model`` trains on normal tiles only: ``normal_only`` when set, else the model's learning type.

        Raises:
            WSIError: ``normal_only`` is False but the model is a one-class model (tumour tiles would enter its
                picture of normal tissue).
        """
        from anomalib_wsi.models.anomalib_models import trains_on_normal_only

        one_class = model is not None and trains_on_normal_only(model)
        if self.normal_only is None:
            return one_class
        if not self.normal_only and one_class:
            msg = (
                f"{type(model).__name__} learns from normal tiles only, but data.normal_only is false; "
                "set data.normal_only: true (or leave it unset to follow the model)"
            )
            raise WSIError(msg)
        return bool(self.normal_only)

    def val_dataloader(self) -> DataLoader:
        """Validation tiles."""
        return self._loader(self.val_data, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test tiles."""
        return self._loader(self.test_data, self.eval_batch_size, shuffle=False)

    # The splits are by slide, made in ``_setup``; anomalib's tile-level test/val splitting (which drops the
    # normal tiles of a test set when no test split mode is set) must not touch them.
    def _create_test_split(self) -> None:
        return

    def _create_val_split(self) -> None:
        return

    def _setup(self, _stage: str | None = None) -> None:
        self.records = self.discover()
        split_path = self._write_split(self.records)
        logger.info(
            "%d slides (%s); split written to %s",
            len(self.records),
            ", ".join(f"{s}: {sum(r.split == s for r in self.records)}" for s in _SPLITS),
            split_path,
        )
        extra = []
        if self.normal_slides is not None:
            if not self.normal_slides.exists():
                msg = f"{self.normal_slides}: normal slide folder does not exist; fix data.normal_slides"
                raise WSIError(msg)
            extra = [SlideRecord(p, None, "train", 0) for p in list_slides(self.normal_slides)]
        rng = np.random.default_rng(self.seed or 0)
        parts: dict[str, list[pd.DataFrame]] = {s: [] for s in _SPLITS}
        to_tile = self.records + extra
        if self.coordinates is not None:
            # the listed patches replace the training slides' sampled tiles; those slides need no tiling
            parts["train"].append(self._listed_patches(self.records))
            to_tile = [record for record in self.records if record.split != "train"] + extra
        for record in tqdm(to_tile, desc="tiling slides", unit="slide", leave=False):
            table = self.tile_table(record)
            self.tile_tables[record.slide_id] = table
            if record.split == "train":
                parts["train"].append(self._sample_train(table, rng, record.label == 1))
            else:
                parts[str(record.split)].append(self._sample_eval(table, rng))
        frames = {s: pd.concat(p, ignore_index=True) if p else pd.DataFrame() for s, p in parts.items()}
        if frames["train"].empty:
            msg = f"{self.root}: no training tiles (check min_tissue={self.min_tissue}, mpp={self.mpp}, the split)"
            raise WSIError(msg)
        for split, frame in frames.items():
            if not frame.empty:
                frame["label_index"] = frame["label"].astype(int)
                frame["split"] = split
        self.train_data = WSITileDataset(frames["train"], self.mpp, with_masks=False, stain=self.stain)
        for split in ("val", "test"):
            frame = frames[split] if not frames[split].empty else frames["train"].iloc[:0]
            setattr(self, f"{split}_data", WSITileDataset(frame, self.mpp, with_masks=True, stain=self.stain))
        counts = frames["train"]["label_index"].value_counts().to_dict()
        logger.info(
            "training tiles: %d normal, %d tumour; validation %d, test %d",
            counts.get(0, 0),
            counts.get(1, 0),
            len(self.val_data),
            len(self.test_data),
        )
