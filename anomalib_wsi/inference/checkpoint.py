"""Checkpoints for prediction: load the model (nothing downloaded, nothing unpickled) and the training data's tiling.

A checkpoint is read with ``torch.load(weights_only=True)`` (tensors, plain types and the model's allow-listed
enums only), so a hostile file cannot run code. Every problem with it, from a missing file to weights of another
model or a nonsensical stored tile size, is one :class:`~anomalib_wsi.errors.WSIError` that names the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine

from anomalib_wsi.cohort import positive_number
from anomalib_wsi.errors import WSIError

__all__ = ["CheckpointError", "load_model", "recorded_class_path", "trained_checkpoint"]

logger = logging.getLogger(__name__)


class CheckpointError(WSIError):
    """A checkpoint that cannot be predicted with."""


def trained_checkpoint(engine: Engine, fallback: Path) -> Path:
    """The checkpoint a finished ``engine.fit`` wrote (best, else last); saved to ``fallback`` when there is none."""
    callback: Any = engine.trainer.checkpoint_callback
    path = Path(getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "") or "")
    if not path.is_file():
        path = fallback
        engine.trainer.save_checkpoint(path)
    return path


def _data_settings(ckpt: Path, data_hparams: dict[str, Any]) -> dict[str, Any]:
    """The training data's ``mpp``, ``tile_size_px`` and stain reference from a checkpoint, checked once.

    Absent keys are left out; ``stain`` is the fitted :class:`~anomalib_wsi.data.stain.StainReference` the data
    module stored (its ``stain_reference`` hyper-parameter, plain numbers) when it normalised the training tiles.
    """
    settings: dict[str, Any] = {}
    if data_hparams.get("stain_normalization") not in (None, "none"):
        from anomalib_wsi.data.stain import StainReference

        try:
            settings["stain"] = StainReference.from_dict(
                data_hparams.get("stain_reference"), where=f"{ckpt}: the checkpoint's stain reference"
            )
        except WSIError as err:
            raise CheckpointError(str(err)) from None
    if data_hparams.get("mpp") is not None:
        mpp = positive_number(data_hparams["mpp"])
        if mpp is None:
            msg = (
                f"{ckpt}: the checkpoint's training mpp is {data_hparams['mpp']!r}, not a positive number; "
                "pass the tile resolution explicitly (WSIEngine.predict(mpp=...)) or use the checkpoint training wrote"
            )
            raise CheckpointError(msg)
        settings["mpp"] = mpp
    if data_hparams.get("tile_size_px") is not None:
        value = data_hparams["tile_size_px"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            msg = (
                f"{ckpt}: the checkpoint's tile size is {value!r}, not a whole number of pixels in 1-4096; "
                "pass tile_size_px explicitly or use the checkpoint training wrote"
            )
            raise CheckpointError(msg)
        settings["tile_size_px"] = int(value)
    return settings


def load_model(model: Any, ckpt_path: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """The model to predict with, and the training data's ``mpp`` / ``tile_size_px`` / ``stain`` in the checkpoint.

    A model instance given without a checkpoint brings the stain reference of the data module it was trained
    with, when that data module set it on the model (``stain_reference``; see ``WSIDataModule``).

    ``model`` may be a class, a name (``"Padim"``), an instance, or None: the class the checkpoint records (written
    there by the :class:`~anomalib_wsi.post_processing.post_processor.WSIPostProcessor`, or LightningCLI's
    ``_class_path``), else ``RDFocal``. The class loads the checkpoint with ``pre_trained=False`` and no backbone
    download (the weights are in the checkpoint) and with a ``WSIPostProcessor`` (a checkpoint trained with
    anomalib's plain post-processor keeps its thresholds). The loaded model then scores one blank tile: a model
    whose output has no ``pred_score`` (or no anomaly map, when the post-processor asks for sub-tile heatmap
    cells) is refused here, before any slide is read.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable, holds another model's weights or incomplete ones,
            names a model that cannot be imported or that gives no tile scores, or stores a nonsensical tile
            setting; or neither model nor checkpoint is given.
    """
    if isinstance(model, str):
        model = _model_class(model, where="model")
    if ckpt_path is None:
        if model is None or isinstance(model, type):
            msg = "predicting slides needs a checkpoint: pass ckpt_path (anomalib-wsi predict --ckpt MODEL.ckpt)"
            raise CheckpointError(msg)
        stain = getattr(model, "stain_reference", None)
        return model, ({"stain": stain} if stain is not None else {})
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        msg = f"{ckpt}: checkpoint not found; pass the .ckpt written by training (results/.../weights/lightning)"
        raise CheckpointError(msg)
    state = _read(ckpt, model)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        msg = f"{ckpt}: not a Lightning checkpoint (no state_dict); pass the .ckpt written by training"
        raise CheckpointError(msg)
    cls = _checkpoint_class(ckpt, state, model)
    data_settings = _data_settings(ckpt, dict(state.get("datamodule_hyper_parameters") or {}))
    overrides: dict[str, Any] = {}
    hparams = state.get("hyper_parameters") or {}
    if "pre_trained" in hparams:
        overrides["pre_trained"] = False
    if "weights_path" in hparams:
        overrides["weights_path"] = None
    from anomalib_wsi.models.anomalib_models import timm_backbones
    from anomalib_wsi.post_processing.post_processor import WSIPostProcessor

    overrides["post_processor"] = WSIPostProcessor()
    pre_processor = _pre_processor(state.get("anomalib_pre_processor_config"))
    if pre_processor is not None:  # built before the network: FastFlow sizes its layers from the tile size
        overrides["pre_processor"] = pre_processor
    try:
        with timm_backbones(download=False):  # models without pre_trained (STFPM) must not reach for the hub
            module = cls.load_from_checkpoint(ckpt, map_location="cpu", **overrides)  # type: ignore[attr-defined]
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        stored = hparams.get("model_name") or _class_name(state)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        msg = (
            f"{ckpt}: its weights do not fit a {cls.__name__} model ({stored or 'another model'}; {first[:160]}); "
            f"pass a checkpoint of {cls.__name__} trained with anomalib-wsi"
        )
        raise CheckpointError(msg) from None
    _check_tile_outputs(ckpt, module, data_settings.get("tile_size_px"))
    return module, data_settings


def _pre_processor(config: Any) -> Any:
    """The checkpoint's pre-processor (resize and normalisation), or None when it records none."""
    if not isinstance(config, dict) or not config.get("transform"):
        return None
    from anomalib.pre_processing import PreProcessor

    pre_processor = PreProcessor()
    try:
        pre_processor.load_checkpoint_config(config)
    except Exception:  # an unusual transform: the model's default, restored by anomalib after construction
        logger.debug("Cannot rebuild the checkpoint's pre-processor %r.", config, exc_info=True)
        return None
    return pre_processor


def _model_class(name: str, where: str) -> type:
    from anomalib_wsi.models.anomalib_models import ModelError, model_class

    try:
        return model_class(name)
    except ModelError as err:
        msg = f"{where}: {err}"
        raise CheckpointError(msg) from None


def _safe_globals(model: Any) -> list[Any]:
    """The allow-listed types of the given model's class, or of every anomalib model (the class is not known yet)."""
    if model is not None:
        cls = model if isinstance(model, type) else type(model)
        return list(cls.checkpoint_safe_globals()) if hasattr(cls, "checkpoint_safe_globals") else []
    from anomalib_wsi.models.anomalib_models import _anomalib_models
    from anomalib_wsi.models.rd_focal import RDFocal

    extra: list[Any] = list(RDFocal.checkpoint_safe_globals())
    for cls in _anomalib_models().values():
        extra.extend(item for item in cls.checkpoint_safe_globals() if item not in extra)
    return extra


def _read(ckpt: Path, model: Any) -> Any:
    """``torch.load(weights_only=True)``: tensors, plain types and the models' own allow-listed enums only."""
    from anomalib.utils.serialization import anomalib_safe_globals

    try:
        with anomalib_safe_globals(extra=_safe_globals(model)):
            return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user error here
        msg = f"{ckpt}: not a readable checkpoint ({type(err).__name__}); pass the .ckpt written by training"
        raise CheckpointError(msg) from None


def recorded_class_path(state: dict[str, Any]) -> str:
    """The model class path a checkpoint records (``anomalib_wsi_model`` or LightningCLI's ``_class_path``), or ""."""
    record = state.get("anomalib_wsi_model")
    if isinstance(record, dict) and isinstance(record.get("class_path"), str):
        return str(record["class_path"])
    hparams = state.get("hyper_parameters") or {}
    for key in ("_class_path", "class_path"):
        if isinstance(hparams.get(key), str):
            return str(hparams[key])
    return ""


def _checkpoint_class(ckpt: Path, state: dict[str, Any], model: Any) -> type:
    """The class to load: the given one (it must be the recorded one or a parent of it), else the recorded one."""
    recorded = recorded_class_path(state)
    stored: type | None = None
    if recorded:
        stored = _model_class(recorded, where=f"{ckpt}: the checkpoint's model")
    if model is None:
        if stored is not None:
            return stored
        from anomalib_wsi.models.rd_focal import RDFocal

        return RDFocal
    cls = model if isinstance(model, type) else type(model)
    if stored is not None and not issubclass(stored, cls):
        msg = (
            f"{ckpt}: holds a {stored.__name__} model, not {cls.__name__}; "
            f"pass model={stored.__name__} (or none: the checkpoint names its model)"
        )
        raise CheckpointError(msg)
    return stored or cls


def _check_tile_outputs(ckpt: Path, module: Any, tile_size_px: int | None) -> None:
    """Score one blank tile: the model must give ``pred_score`` (and an anomaly map for sub-tile heatmaps)."""
    name = type(module).__name__
    size = tile_size_px or (module.input_size[0] if getattr(module, "input_size", None) else 256)
    network = getattr(module, "model", None)
    if not callable(network):
        msg = f"{ckpt}: {name} has no torch model (.model) to score tiles with; slides need a model that scores tiles"
        raise CheckpointError(msg)
    module.eval()
    try:
        with torch.inference_mode():
            tiles = torch.full((1, 3, int(size), int(size)), 0.9)
            if getattr(module, "pre_processor", None) is not None:
                tiles = module.pre_processor(tiles)
            output = network(tiles)
    except Exception as err:  # a model that cannot score a tile cannot score a slide
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        msg = f"{ckpt}: {name} cannot score a {size} px tile ({type(err).__name__}: {first[:160]})"
        raise CheckpointError(msg) from None
    if getattr(output, "pred_score", None) is None:
        msg = f"{ckpt}: {name} gives no tile score (pred_score); slides need a model that scores tiles"
        raise CheckpointError(msg)
    cells = int(getattr(module.post_processor, "heatmap_cells_per_tile", 1) or 1)
    if cells > 1 and getattr(output, "anomaly_map", None) is None:
        msg = (
            f"{ckpt}: {name} gives no anomaly map, so heatmap_cells_per_tile={cells} cannot split its tiles; "
            "set heatmap_cells_per_tile to 1 (one heatmap cell per tile)"
        )
        raise CheckpointError(msg)


def _class_name(state: dict[str, Any]) -> str:
    """The model class a checkpoint names (see :func:`recorded_class_path`), without its module."""
    return recorded_class_path(state).rsplit(".", 1)[-1]
