"""Tile datasets read lazily from slides: anomalib ``ImageItem``s with labels and tile tumour masks.

Each row of the samples table is one tile of a tile table (``slide_id, x, y, level, ...``) plus ``image_path``
(a virtual id ``<slide path>@<x>,<y>``), ``split`` and ``label_index``. Slides are opened once per DataLoader worker (a
per-process cache of :class:`~anomalib_wsi.slide.Slide` handles); a whole slide is never held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_wsi.data.stain import StainNormalizer, StainReference, sample_rows
from anomalib_wsi.slide.reader import ReadPlan, Slide

__all__ = ["SlideHandleCache", "WSITileDataset", "tile_image_path"]

_REQUIRED = ("slide_path", "x", "y", "level", "read_size_px", "tile_size_px", "tile_size_lv0")


def tile_image_path(slide_path: str | Path, x: int, y: int) -> str:
    """Virtual id of a tile, ``<slide path>@<x>,<y>`` in level-0 pixels (what anomalib sees as ``image_path``)."""
    return f"{slide_path}@{int(x)},{int(y)}"


class SlideHandleCache:
    """Per-process cache of open slides and parsed annotations (DataLoader workers each build their own)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._slides: dict[tuple[str, float | None], Slide] = {}
        self._regions: dict[str, Any] = {}

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._slides, self._regions, self._pid = {}, {}, os.getpid()

    def slide(self, path: str, mpp: float | None = None) -> Slide:
        """The open slide for ``path`` in this process."""
        self._check_pid()
        key = (path, mpp)
        if key not in self._slides:
            self._slides[key] = Slide(path, mpp=mpp)
        return self._slides[key]

    def region(self, annotation_path: str) -> Any:
        """The tumour-minus-non-tumour geometry of an annotation file (parsed once per process)."""
        self._check_pid()
        if annotation_path not in self._regions:
            from anomalib_wsi.annotations import read_annotations

            self._regions[annotation_path] = read_annotations(annotation_path).region
        return self._regions[annotation_path]

    def __getstate__(self) -> dict[str, Any]:
        return {"_pid": -1, "_slides": {}, "_regions": {}}


class WSITileDataset(AnomalibDataset):
    """Tiles of whole-slide images as anomalib ``ImageItem``s.

    Args:
        samples: tile table rows with ``slide_path, x, y, level, read_size_px, tile_size_px, tile_size_lv0``,
            ``label_index`` (0 normal, 1 tumour), ``split`` and optionally ``annotation_path`` (tumour masks of
            the tiles are rasterised from it) and ``slide_mpp`` (explicit level-0 mpp).
        target_mpp: resolution the tiles are read at.
        augmentations: torchvision v2 transforms applied to each item.
        with_masks: give each item a ``gt_mask`` (tile-sized, from the annotations); needed for pixel metrics.
        stain: stain-normalise every tile to this reference (before the augmentations), each slide with one
            colour map estimated from a few of its tiles in this dataset (see
            :class:`~anomalib_wsi.data.stain.StainNormalizer`).

    Example:
        >>> dataset = WSITileDataset(samples, target_mpp=0.5)  # doctest: +SKIP
        >>> item = dataset[0]; item.image.shape                 # torch.Size([3, 256, 256]), uint8
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        target_mpp: float,
        augmentations: Transform | None = None,
        with_masks: bool = True,
        stain: StainReference | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.stain = stain
        self.normalizer = StainNormalizer(stain) if stain is not None else None
        missing = [c for c in _REQUIRED if c not in samples.columns]
        if missing:
            msg = f"tile samples lack columns {missing}"
            raise ValueError(msg)
        self.target_mpp = float(target_mpp)
        self.with_masks = with_masks
        self.handles = SlideHandleCache()
        samples = samples.copy().reset_index(drop=True)
        if "image_path" not in samples.columns:
            samples["image_path"] = [
                tile_image_path(p, x, y) for p, x, y in zip(samples.slide_path, samples.x, samples.y, strict=True)
            ]
        if "label_index" not in samples.columns:
            samples["label_index"] = samples["label"] if "label" in samples.columns else 0
        if "split" not in samples.columns:
            samples["split"] = "test"
        samples.attrs["task"] = "segmentation" if with_masks else "classification"
        self._samples = samples

    # anomalib's setter checks that each image_path exists on disk; ours are virtual ids
    @property  # type: ignore[override]
    def samples(self) -> pd.DataFrame:
        """The tile table of this dataset."""
        if self._samples is None:
            msg = "dataset has no samples"
            raise RuntimeError(msg)
        return self._samples

    @samples.setter
    def samples(self, samples: pd.DataFrame) -> None:
        task = self._samples.attrs.get("task", "segmentation") if self._samples is not None else "segmentation"
        samples = samples.reset_index(drop=True)
        samples.attrs["task"] = task
        self._samples = samples

    def _plan(self, row: Any) -> ReadPlan:
        tile_size = int(row.tile_size_px)
        return ReadPlan(
            target_mpp=self.target_mpp,
            tile_size_px=tile_size,
            level=int(row.level),
            level_downsample=float(row.tile_size_lv0) / float(row.read_size_px) if row.read_size_px else 1.0,
            read_size_px=int(row.read_size_px),
            tile_size_lv0=float(row.tile_size_lv0),
        )

    def read_image(self, index: int) -> np.ndarray:
        """The uint8 RGB tile (H, W, 3) of row ``index``."""
        row = self.samples.iloc[index]
        mpp = row.get("slide_mpp")
        mpp = float(mpp) if mpp is not None and pd.notna(mpp) else None
        slide = self.handles.slide(str(row.slide_path), mpp)
        return slide.read_tile(int(row.x), int(row.y), self._plan(row))

    def normalized_image(self, index: int) -> np.ndarray:
        """The tile of row ``index``, stain-normalised when the dataset has a reference."""
        image = self.read_image(index)
        if self.normalizer is None:
            return image
        path = str(self.samples.iloc[index].slide_path)
        source = self.normalizer.fit_slide(path, lambda: self._source_tiles(path))
        return self.normalizer.apply(image, source)[0]

    def _source_tiles(self, slide_path: str) -> list[np.ndarray]:
        """A few of the slide's tiles in this dataset, spread over its rows (its source stain comes from them)."""
        rows = np.flatnonzero(self.samples.slide_path.astype(str).to_numpy() == slide_path)
        return [self.read_image(int(rows[i])) for i in sample_rows(len(rows))]

    def tile_mask(self, index: int) -> np.ndarray:
        """Boolean tumour mask of the tile (tile_size_px square), rasterised from the slide's annotations."""
        row = self.samples.iloc[index]
        size = int(row.tile_size_px)
        annotation = row.get("annotation_path")
        fraction = row.get("tumour_fraction", 0.0)
        if not isinstance(annotation, str) or not annotation or pd.isna(fraction) or not float(fraction) > 0:
            return np.zeros((size, size), dtype=bool)
        from shapely import affinity, box

        from anomalib_wsi.annotations.tile_labels import rasterise

        x, y, side = float(row.x), float(row.y), float(row.tile_size_lv0)
        region = self.handles.region(str(annotation))
        local = affinity.translate(region.intersection(box(x, y, x + side, y + side)), -x, -y)
        return rasterise(local, (size, size), side / size)

    def __getitem__(self, index: int) -> ImageItem:
        image = torch.from_numpy(self.normalized_image(index)).permute(2, 0, 1).contiguous()
        label_index = int(self.samples.iloc[index].label_index)
        gt_mask = Mask(torch.from_numpy(self.tile_mask(index)).to(torch.uint8)) if self.with_masks else None
        if self.augmentations:
            if gt_mask is not None:
                image, gt_mask = self.augmentations(image, gt_mask)
            else:
                image = self.augmentations(image)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(label_index),
            image_path=str(self.samples.iloc[index].image_path),
            mask_path="",
        )
