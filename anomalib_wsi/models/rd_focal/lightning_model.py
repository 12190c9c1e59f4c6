"""RDFocal: anomalib's ReverseDistillation trained with the focal cosine loss of He & Li (MIDL 2023, "FW-RD").

This module is the Lightning wiring: options, optimiser, training step and checkpoint loading. The network is in
:mod:`~anomalib_wsi.models.rd_focal.torch_model`, the anomaly map and tile score in
:mod:`~anomalib_wsi.models.rd_focal.anomaly_map`, the loss in :mod:`~anomalib_wsi.models.rd_focal.loss`, as in
anomalib's own model folders.

The network, the anomaly map and the trainer settings are anomalib's reverse distillation (Deng & Li, CVPR 2022).
What He & Li change, and this model with them:

- the training set holds a few labelled tumour tiles besides the normal ones (``gt_label`` 1), and the loss is the
  focal loss on the teacher/student cosine similarity (:mod:`anomalib_wsi.models.rd_focal.loss`), which teaches the
  student to reproduce normal tissue and to fail on tumour;
- the tile score is the mean of the anomaly map (anomalib's default is its maximum);
- Adam with ``betas=(0.5, 0.999)``.

``loss="cosine"`` keeps anomalib's plain reverse distillation (normal tiles only; tumour tiles in a batch are
dropped) as the baseline. On top: the teacher can come from a local weights file (``weights_path``) for offline
machines, the model can run channels-last, and the parts that never receive a gradient (the frozen teacher and an
unused bottleneck layer) are frozen, so that plain DDP trains without ``find_unused_parameters``.

Example:
    >>> from anomalib.pre_processing import PreProcessor
    >>> model = RDFocal(
    ...     backbone="resnet18",
    ...     pre_trained=False,
    ...     pre_processor=RDFocal.configure_pre_processor(image_size=(128, 128)),
    ...     loss="focal",
    ...     tile_score="mean",
    ... )
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.image.reverse_distillation import ReverseDistillation
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.fabric.utilities.types import _MAP_LOCATION_TYPE
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from anomalib_wsi.errors import WSIError
from anomalib_wsi.models.rd_focal.anomaly_map import BLUR_BORDERS, TILE_SCORES
from anomalib_wsi.models.rd_focal.loss import FocalCosineLoss
from anomalib_wsi.models.rd_focal.torch_model import SUPPORTED_BACKBONES, RDFocalModel
from anomalib_wsi.models.rd_focal.weights import BackboneWeightsError, is_download_error, load_backbone_weights
from anomalib_wsi.post_processing.post_processor import WSIPostProcessor

__all__ = [
    "SUPPORTED_BACKBONES",
    "NoTumourTilesError",
    "RDFocal",
    "RDFocalConfigError",
    "RDFocalModel",
]

logger = logging.getLogger(__name__)

LOSSES = ("focal", "cosine")


class RDFocalConfigError(WSIError, ValueError):
    """An RDFocal option is invalid."""


class NoTumourTilesError(WSIError, ValueError):
    """The focal loss was asked for, but the training set holds no tumour tile."""


class RDFocal(ReverseDistillation):
    """Reverse distillation with the focal cosine loss of He & Li (MIDL 2023), for whole-slide tiles.

    Every argument of anomalib's :class:`ReverseDistillation` is kept; the rest are the paper's.

    Training batches are anomalib ``ImageBatch`` objects whose ``gt_label`` says which tiles are tumour (1) and
    which normal (0). With ``loss="focal"`` both kinds train the model; a training epoch without any tumour tile
    raises :class:`NoTumourTilesError`. With ``loss="cosine"`` tumour tiles are dropped from each batch.

    Args:
        backbone: timm name of the teacher, one of :data:`SUPPORTED_BACKBONES` (the paper: ``wide_resnet50_2``).
        layers: the three teacher layers that are distilled.
        anomaly_map_mode: ``"add"`` (the paper and anomalib's default) or ``"multiply"``.
        pre_trained: fetch the teacher's ImageNet weights through timm (needs the model hub; offline, pass
            ``weights_path``). Ignored when ``weights_path`` is given.
        pre_processor: anomalib pre-processor, or True for the default (resize to 256 px, ImageNet normalisation).
            It must resize to a fixed size: the anomaly maps have that size.
        post_processor: anomalib post-processor, or True for the default.
        evaluator: anomalib evaluator, or True for the default.
        visualizer: anomalib visualizer, or True for the default (off for slide-scale prediction).
        loss: ``"focal"`` (the paper) or ``"cosine"`` (anomalib's reverse distillation, normal tiles only).
        alpha_normal: focal weight of normal tiles (paper: 0.1).
        alpha_tumour: focal weight of tumour tiles (paper: 0.9).
        gamma: focal focusing parameter (paper: 2.0).
        tile_score: ``"mean"`` (the paper) or ``"max"`` (anomalib) of each tile's anomaly map, as ``pred_score``.
        weights_path: local teacher weights (``.safetensors`` or a torch state dict ``.pth``/``.pt``/``.bin``),
            loaded instead of downloading them.
        channels_last: run the network in the channels-last memory format.
        lr: Adam learning rate (anomalib's reverse distillation: 0.005).
        betas: Adam betas (the paper: ``(0.5, 0.999)``).
        image_size: side the default pre-processor resizes tiles to (None: anomalib's 256). Set it to the tile
            size so tiles are not up-scaled (the demo: 64); ignored when a ``pre_processor`` is given.
        blur_sigma: standard deviation of the anomaly map's Gaussian blur, in map pixels (anomalib and FW-RD: 4).
        blur_border: the blur's border handling: ``"reflect"`` (anomalib's) or ``"symmetric"`` (the edge pixel
            repeated, as FW-RD's ``scipy.ndimage.gaussian_filter``; the two differ only within 16 px of the tile
            border).

    Raises:
        RDFocalConfigError: for an invalid option.
        BackboneWeightsError: when the teacher's weights cannot be downloaded, or ``weights_path`` is missing or
            does not fit the backbone.

    Example:
        >>> model = RDFocal(backbone="resnet18", pre_trained=False, loss="focal", alpha_tumour=0.9)
        >>> model.model.tile_score
        'mean'
    """

    model: RDFocalModel

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        anomaly_map_mode: AnomalyMapGenerationMode | str = AnomalyMapGenerationMode.ADD,
        pre_trained: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        loss: str = "focal",
        alpha_normal: float = 0.1,
        alpha_tumour: float = 0.9,
        gamma: float = 2.0,
        tile_score: str = "mean",
        weights_path: str | Path | None = None,
        channels_last: bool = False,
        lr: float = 0.005,
        betas: tuple[float, float] = (0.5, 0.999),
        image_size: int | None = None,
        blur_sigma: float = 4,
        blur_border: str = "reflect",
    ) -> None:
        if image_size is not None:
            if int(image_size) <= 0 or int(image_size) % 32:
                msg = f"image_size must be a positive multiple of 32 (the backbone's stride), got {image_size}"
                raise RDFocalConfigError(msg)
            if pre_processor is True:
                pre_processor = self.configure_pre_processor(image_size=(int(image_size), int(image_size)))
        mode = _validate_options(backbone, layers, anomaly_map_mode, loss, tile_score, lr, betas)
        if not float(blur_sigma) > 0:
            msg = f"blur_sigma must be positive (anomalib and FW-RD blur with 4), got {blur_sigma}"
            raise RDFocalConfigError(msg)
        if blur_border not in BLUR_BORDERS:
            msg = f"blur_border must be 'reflect' (anomalib) or 'symmetric' (FW-RD's scipy blur), got {blur_border!r}"
            raise RDFocalConfigError(msg)
        try:
            criterion: FocalCosineLoss | ReverseDistillationLoss = (
                FocalCosineLoss(alpha_normal=alpha_normal, alpha_tumour=alpha_tumour, gamma=gamma)
                if loss == "focal"
                else ReverseDistillationLoss()
            )
        except ValueError as err:
            raise RDFocalConfigError(str(err)) from err

        # AnomalibModule's constructor, not ReverseDistillation's: that one builds a ReverseDistillationModel,
        # which would fetch the teacher a second time. The rest of its body follows here.
        super(ReverseDistillation, self).__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        input_size = self.input_size
        if input_size is None:
            msg = (
                "RDFocal needs a pre-processor that resizes tiles to a fixed size (its anomaly maps have that size); "
                "pass pre_processor=RDFocal.configure_pre_processor(image_size=(256, 256)) or pre_processor=True"
            )
            raise RDFocalConfigError(msg)

        self.backbone = backbone
        self.pre_trained = pre_trained
        self.layers = layers
        self.anomaly_map_mode = mode
        self.loss_name = loss
        self.tile_score = tile_score
        self.weights_path = weights_path
        self.channels_last = channels_last
        self.lr = lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.blur_sigma = float(blur_sigma)
        self.blur_border = blur_border

        download = pre_trained and weights_path is None
        if pre_trained and weights_path is not None:
            logger.info("Teacher weights come from %s; pre_trained=True does not download them.", weights_path)
        try:
            self.model = RDFocalModel(
                backbone=backbone,
                input_size=(int(input_size[0]), int(input_size[1])),
                layers=layers,
                anomaly_map_mode=mode,
                pre_trained=download,
                tile_score=tile_score,
                channels_last=channels_last,
                blur_sigma=blur_sigma,
                blur_border=blur_border,
            )
        except Exception as err:
            if not (download and is_download_error(err)):
                raise
            msg = (
                f"cannot download the pre-trained {backbone!r} teacher from the model hub ({type(err).__name__}); "
                f"pass weights_path=<local .safetensors or .pth of {backbone}>, or pre_trained=False "
                f"(a random teacher: for tests, or when a checkpoint will supply the weights)"
            )
            raise BackboneWeightsError(msg) from err
        if weights_path is not None:
            load_backbone_weights(self.model.encoder.feature_extractor, weights_path, backbone)
        self.loss = criterion

        self._tiles_seen = 0
        self._tumour_tiles_seen: torch.Tensor | None = None

    @property
    def trains_on_tumour_tiles(self) -> bool:
        """Whether training uses the labelled tumour tiles (the focal loss); the data module samples them then."""
        return self.loss_name == "focal"

    @classmethod
    def configure_post_processor(cls) -> WSIPostProcessor:
        """The slide-level post-processor: anomalib's score normalisation plus heatmaps, lesions and slide scores."""
        return WSIPostProcessor()

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[Any],
        map_location: _MAP_LOCATION_TYPE = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> RDFocal:
        """Load a model from a Lightning checkpoint, without the model hub or the original weights file.

        The checkpoint holds the teacher's weights, so the model is rebuilt with ``pre_trained=False`` and
        ``weights_path=None`` unless these are passed explicitly.

        Args:
            checkpoint_path: the ``.ckpt`` file.
            map_location: device mapping for ``torch.load``.
            hparams_file: optional YAML of hyper-parameters.
            strict: enforce state-dict key matching.
            weights_only: unpickle only tensors and allow-listed types (anomalib's default).
            **kwargs: hyper-parameters that override the checkpoint's.

        Returns:
            The model, in eval mode as Lightning leaves it.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("weights_path", None)
        model = super().load_from_checkpoint(
            checkpoint_path,  # type: ignore[arg-type]  # anomalib narrows Lightning's type; file objects work
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=True if weights_only is None else weights_only,
            **kwargs,
        )
        if not isinstance(model, RDFocal):  # pragma: no cover - Lightning builds cls
            msg = f"{checkpoint_path} holds a {type(model).__name__}, not an RDFocal model"
            raise RDFocalConfigError(msg)
        return model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the pre-processor saved in the checkpoint, and size the anomaly maps to match it.

        The model is built before anomalib restores the checkpoint's pre-processor: when the checkpoint was
        trained at another tile size than the default pre-processor's, the anomaly maps follow the restored size.

        Args:
            checkpoint: the checkpoint dictionary.
        """
        super().on_load_checkpoint(checkpoint)
        input_size = self.input_size
        generator = self.model.anomaly_map_generator
        if input_size is not None and tuple(input_size) != tuple(generator.image_size):
            logger.info("Anomaly maps resized from %s to the checkpoint's %s.", generator.image_size, input_size)
            generator.image_size = (int(input_size[0]), int(input_size[1]))

    def configure_optimizers(self) -> optim.Adam:
        """Adam on the bottleneck and the decoder (the teacher stays frozen).

        Returns:
            The optimiser.
        """
        parameters = [
            parameter
            for parameter in (*self.model.bottleneck.parameters(), *self.model.decoder.parameters())
            if parameter.requires_grad
        ]
        return optim.Adam(params=parameters, lr=self.lr, betas=self.betas)

    def on_train_start(self) -> None:
        """Fail before the first step when the datamodule shows a focal training set without tumour tiles."""
        if self.loss_name != "focal":
            return
        tiles = _known_tiles_without_tumour(self.trainer)
        if tiles is not None:
            raise NoTumourTilesError(_no_tumour_message(tiles, "the training set"))

    def on_train_epoch_start(self) -> None:
        """Put the network in training mode and reset the count of tumour tiles seen in the epoch.

        Lightning keeps modules that are in eval mode when training starts in eval mode; the student must train
        (the teacher is put back in eval mode by every forward pass).
        """
        self.model.train()
        self._tiles_seen = 0
        self._tumour_tiles_seen = torch.zeros((), dtype=torch.long, device=self.device)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Compute the loss of one batch.

        Args:
            batch: an anomalib ``ImageBatch``; ``gt_label`` is 1 for tumour tiles, 0 for normal ones.
            args: unused.
            kwargs: unused.

        Returns:
            ``{"loss": loss}``. A cosine-loss batch of tumour tiles only returns None (the step is skipped) in one
            process; under DDP it returns a zero loss built on the network's output, so this rank still joins the
            other ranks' gradient exchange (Lightning stops a distributed run whose training step returns None).

        Raises:
            NoTumourTilesError: with ``loss="focal"`` when the batch carries no labels.
        """
        del args, kwargs
        images = batch.image
        labels = batch.gt_label
        if images is None:
            msg = "RDFocal training batches need images (batch.image is None)"
            raise ValueError(msg)
        if self.loss_name == "cosine":
            if labels is not None:
                normal = labels == 0
                if not bool(normal.any()):
                    if not self._distributed():
                        return None
                    _, decoder_features = self.model(images)
                    zero = torch.stack([feature.sum() for feature in decoder_features]).sum() * 0.0
                    return {"loss": zero}
                if not bool(normal.all()):
                    images = images[normal]
            loss = self.loss(*self.model(images))
        else:
            if labels is None:
                msg = (
                    "focal loss needs tile labels (gt_label: 1 tumour, 0 normal) in the training batches; "
                    "use a datamodule that labels tiles, or loss='cosine' for normal-only training"
                )
                raise NoTumourTilesError(msg)
            self._count_tiles(labels)
            encoder_features, decoder_features = self.model(images)
            loss = self.loss(encoder_features, decoder_features, labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, logger=True, batch_size=len(images))
        return {"loss": loss}

    def _distributed(self) -> bool:
        """Whether this module trains under a Trainer with more than one process."""
        trainer = getattr(self, "_trainer", None)
        return trainer is not None and int(getattr(trainer, "world_size", 1)) > 1

    def _count_tiles(self, labels: torch.Tensor) -> None:
        """Count tiles and tumour tiles on the device (no synchronisation per step)."""
        if self._tumour_tiles_seen is None:
            self._tumour_tiles_seen = torch.zeros((), dtype=torch.long, device=labels.device)
        self._tiles_seen += int(labels.numel())
        self._tumour_tiles_seen = self._tumour_tiles_seen + (labels == 1).sum()

    def on_train_epoch_end(self) -> None:
        """Raise :class:`NoTumourTilesError` when a focal-loss epoch saw no tumour tile on any device."""
        if self.loss_name != "focal" or self._tumour_tiles_seen is None:
            return
        tiles_seen = torch.tensor(self._tiles_seen, device=self.device)
        counts = torch.stack([self._tumour_tiles_seen.to(self.device), tiles_seen])
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        tumour_tiles, tiles = (int(value) for value in counts.tolist())
        if tiles > 0 and tumour_tiles == 0:
            raise NoTumourTilesError(_no_tumour_message(tiles, f"epoch {self.current_epoch}"))


def _validate_options(
    backbone: str,
    layers: Sequence[str],
    anomaly_map_mode: AnomalyMapGenerationMode | str,
    loss: str,
    tile_score: str,
    lr: float,
    betas: Sequence[float],
) -> AnomalyMapGenerationMode:
    """Check RDFocal's options before anything is built; return the anomaly map mode as an enum."""
    if backbone not in SUPPORTED_BACKBONES:
        choices = ", ".join(SUPPORTED_BACKBONES)
        msg = f"backbone {backbone!r} has no reverse-distillation decoder; choose one of {choices}"
        raise RDFocalConfigError(msg)
    if isinstance(layers, str) or len(layers) != 3:
        msg = f"layers must name three teacher layers (e.g. layer1, layer2, layer3), got {layers!r}"
        raise RDFocalConfigError(msg)
    try:
        mode = AnomalyMapGenerationMode(anomaly_map_mode)
    except ValueError as err:
        modes = ", ".join(m.value for m in AnomalyMapGenerationMode)
        msg = f"anomaly_map_mode must be one of {modes}, got {anomaly_map_mode!r}"
        raise RDFocalConfigError(msg) from err
    if loss not in LOSSES:
        msg = f"loss must be 'focal' (He & Li) or 'cosine' (plain reverse distillation), got {loss!r}"
        raise RDFocalConfigError(msg)
    if tile_score not in TILE_SCORES:
        msg = f"tile_score must be 'mean' (He & Li) or 'max' (anomalib), got {tile_score!r}"
        raise RDFocalConfigError(msg)
    if not lr > 0:
        msg = f"lr must be positive, got {lr}"
        raise RDFocalConfigError(msg)
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        msg = f"betas must be two numbers in [0, 1), e.g. (0.5, 0.999), got {tuple(betas)!r}"
        raise RDFocalConfigError(msg)
    return mode


def _known_tiles_without_tumour(trainer: Any) -> int | None:
    """Number of training samples when the datamodule's table shows none labelled 1, else None (unknown or fine)."""
    datamodule = getattr(trainer, "datamodule", None)
    samples = getattr(getattr(datamodule, "train_data", None), "samples", None)
    columns = getattr(samples, "columns", ())
    if samples is None or "label_index" not in columns or len(samples) == 0:
        return None
    return None if bool((samples["label_index"] == 1).any()) else len(samples)


def _no_tumour_message(tiles: int, where: str) -> str:
    return (
        f"focal loss needs tumour tiles (gt_label 1) in the training set, but the {tiles} tiles of {where} "
        f"hold none; add annotated tumour slides to the training split, or use loss='cosine' for normal-only training"
    )
