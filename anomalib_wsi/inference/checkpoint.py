"""Checkpoints for prediction: load the model (nothing downloaded, nothing unpickled) and the training data's tiling.

A checkpoint is read with ``torch.load(weights_only=True)`` (tensors, plain types and the model's allow-listed
enums only), so a hostile file cannot run code. Every problem with it, from a missing file to weights of another
model or a nonsensical stored tile size, is one :class:`~anomalib_wsi.errors.WSIError` that names the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine

from anomalib_wsi.errors import WSIError

__all__ = ["CheckpointError", "load_model", "trained_checkpoint"]


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
    """The training data's ``mpp`` and ``tile_size_px`` from a checkpoint, checked once (absent keys are left out)."""
    settings: dict[str, Any] = {}
    if data_hparams.get("mpp") is not None:
        try:
            mpp = float(data_hparams["mpp"])
        except (TypeError, ValueError):
            mpp = math.nan
        if not (math.isfinite(mpp) and mpp > 0):
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
    """The model to predict with, and the training data's ``mpp`` / ``tile_size_px`` stored in the checkpoint.

    ``model`` may be a class or an instance (default: ``RDFocal``); with a checkpoint the class loads it with
    ``pre_trained=False`` (the weights are in the checkpoint, so nothing is downloaded).

    Raises:
        CheckpointError: the checkpoint is missing or unreadable, holds another model's weights or incomplete ones,
            or stores a nonsensical tile setting; or neither model nor checkpoint is given.
    """
    if ckpt_path is None:
        if model is None or isinstance(model, type):
            msg = "predicting slides needs a checkpoint: pass ckpt_path (anomalib-wsi predict --ckpt MODEL.ckpt)"
            raise CheckpointError(msg)
        return model, {}
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        msg = f"{ckpt}: checkpoint not found; pass the .ckpt written by training (results/.../weights/lightning)"
        raise CheckpointError(msg)
    if model is None:
        from anomalib_wsi.models.rd_focal import RDFocal

        model = RDFocal
    cls = model if isinstance(model, type) else type(model)
    from anomalib.utils.serialization import anomalib_safe_globals

    # tensors, plain types and the model's own allow-listed enums (e.g. AnomalyMapGenerationMode) only
    extra = cls.checkpoint_safe_globals() if hasattr(cls, "checkpoint_safe_globals") else ()
    try:
        with anomalib_safe_globals(extra=extra):
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user error here
        msg = f"{ckpt}: not a readable checkpoint ({type(err).__name__}); pass the .ckpt written by training"
        raise CheckpointError(msg) from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        msg = f"{ckpt}: not a Lightning checkpoint (no state_dict); pass the .ckpt written by training"
        raise CheckpointError(msg)
    data_settings = _data_settings(ckpt, dict(state.get("datamodule_hyper_parameters") or {}))
    overrides: dict[str, Any] = {}
    hparams = state.get("hyper_parameters") or {}
    if "pre_trained" in hparams:
        overrides["pre_trained"] = False
    if "weights_path" in hparams:
        overrides["weights_path"] = None
    try:
        module = cls.load_from_checkpoint(ckpt, map_location="cpu", **overrides)  # type: ignore[attr-defined]
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        stored = state.get("hyper_parameters", {}).get("model_name") or _class_name(state)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        msg = (
            f"{ckpt}: its weights do not fit a {cls.__name__} model ({stored or 'another model'}; {first[:160]}); "
            f"pass a checkpoint of {cls.__name__} trained with anomalib-wsi"
        )
        raise CheckpointError(msg) from None
    return module, data_settings


def _class_name(state: dict[str, Any]) -> str:
    """The model class a checkpoint names, where Lightning recorded it (``hyper_parameters`` of LightningCLI)."""
    hparams = state.get("hyper_parameters") or {}
    for key in ("_class_path", "class_path"):
        if isinstance(hparams.get(key), str):
            return str(hparams[key]).rsplit(".", 1)[-1]
    return ""
