"""``PatchFolder``: pre-extracted tiles in the ImageFolder layout the paper's code used.

Layout::

    root/train/good/*.png   normal training tiles
    root/train/bad/*.png    tumour training tiles (the few labelled tumour tiles RDFocal learns from)
    root/test/good/*.png    normal test tiles
    root/test/bad/*.png     tumour test tiles

Unlike anomalib's ``Folder`` (which puts every anomalous image in the test set), tumour tiles under ``train/bad``
stay in the training set, as the focal loss needs them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from torchvision.transforms.v2 import Transform

from anomalib_wsi.errors import WSIError

__all__ = ["IMAGE_EXTENSIONS", "PatchFolder", "PatchFolderDataset", "make_patch_samples"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def make_patch_samples(root: str | Path, split: str) -> pd.DataFrame:
    """Samples table of ``root/<split>/{good,bad}`` (label 0 for good, 1 for bad)."""
    rows: list[dict[str, object]] = []
    for sub, label in (("good", 0), ("bad", 1)):
        folder = Path(root) / split / sub
        if folder.is_dir():
            rows.extend(
                {"image_path": str(p), "label_index": label, "mask_path": "", "split": split}
                for p in sorted(folder.iterdir())
                if p.suffix.lower() in IMAGE_EXTENSIONS
            )
    samples = pd.DataFrame(rows, columns=["image_path", "label_index", "mask_path", "split"])
    samples.attrs["task"] = "classification"
    return samples


class PatchFolderDataset(AnomalibDataset):
    """Tiles of one split of a patch folder."""

    def __init__(self, root: str | Path, split: str, augmentations: Transform | None = None) -> None:
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.split = split
        self.samples = make_patch_samples(root, split)


class PatchFolder(AnomalibDataModule):
    """Pre-extracted tiles in ``train/good``, ``train/bad``, ``test/good``, ``test/bad`` (like anomalib's Folder).

    Args:
        root: the folder holding ``train/`` and ``test/``.
        train_batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        train_augmentations: augmentations of training tiles.
        val_augmentations: augmentations of validation tiles.
        test_augmentations: augmentations of test tiles.
        augmentations: augmentations for every split without its own.
        seed: seed of the validation split.

    The test tiles also serve for validation (thresholds and normalisation), as in the paper's code.

    Example:
        >>> from anomalib_wsi.data import PatchFolder          # doctest: +SKIP
        >>> datamodule = PatchFolder(root="patches", train_batch_size=16)
    """

    def __init__(
        self,
        root: str | Path,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            val_split_mode="same_as_test",
            test_split_mode="none",
            seed=seed,
        )
        self.root = Path(root)
        self._category = self.root.name

    def _create_test_split(self) -> None:
        """Keep ``test/good`` in the test set (anomalib's default split would drop it without a split mode)."""
        return

    def _setup(self, _stage: str | None = None) -> None:
        if not (self.root / "train" / "good").is_dir():
            msg = f"{self.root}: no train/good folder; a patch folder holds train/good, train/bad, test/good, test/bad"
            raise WSIError(msg)
        self.train_data = PatchFolderDataset(self.root, "train")
        self.test_data = PatchFolderDataset(self.root, "test")
        if len(self.train_data) == 0:
            msg = f"{self.root / 'train'}: no images ({', '.join(IMAGE_EXTENSIONS)}) in good/ or bad/"
            raise WSIError(msg)
