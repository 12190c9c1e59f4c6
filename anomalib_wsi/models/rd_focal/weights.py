"""Teacher (encoder) weights from a local file, for machines that cannot reach the model hub.

anomalib's ReverseDistillation fetches its ImageNet teacher through timm from the Hugging Face hub, which fails on
an offline cluster node. :func:`load_backbone_weights` fills the teacher from a file instead: a ``.safetensors``
file (as timm publishes them) or a torch state dict (``.pth``, ``.pt``, ``.bin``, ``.ckpt``; possibly nested under
``"state_dict"`` or ``"model"``, with a prefix such as ``"module."`` or ``"model.encoder.feature_extractor."``).
torchvision and timm ResNet state dicts share their tensor names, so either works.

Example:
    >>> import timm, torch
    >>> torch.save(timm.create_model("resnet18").state_dict(), "/tmp/resnet18.pth")
    >>> extractor = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3))
    >>> load_backbone_weights(extractor, "/tmp/resnet18.pth", backbone="resnet18")
    90
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomalib_wsi.errors import WSIError

__all__ = [
    "BackboneWeightsError",
    "is_download_error",
    "load_backbone_weights",
    "match_state_dict",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

_NESTING_KEYS = ("state_dict", "model", "module", "teacher", "encoder")
_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".tar"}
_EXAMPLES = 3
_HUB_ERROR_MODULES = {"huggingface_hub", "httpx", "requests", "urllib3", "urllib"}


class BackboneWeightsError(WSIError, ValueError):
    """Backbone weights cannot be fetched, read, or do not fit the backbone."""


def is_download_error(err: BaseException) -> bool:
    """Whether an exception comes from fetching weights over the network (offline, hub unreachable)."""
    if isinstance(err, OSError):
        return True
    return type(err).__module__.split(".")[0] in _HUB_ERROR_MODULES


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file.

    Args:
        path: a ``.safetensors`` file or a torch state dict (``.pth``, ``.pt``, ``.bin``, ``.ckpt``), read on CPU
            with ``torch.load(weights_only=True)``. A state dict nested under ``"state_dict"``, ``"model"``,
            ``"module"``, ``"teacher"`` or ``"encoder"`` is unwrapped.

    Returns:
        Tensor name -> tensor (non-tensor entries dropped).

    Raises:
        BackboneWeightsError: if the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"backbone weights file not found: {path}; pass an existing weights_path, or pre_trained=False"
        raise BackboneWeightsError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content: Any = load_file(str(path), device="cpu")
        else:
            if path.suffix not in _TORCH_SUFFIXES:
                logger.info("Reading %s as a torch state dict (suffix %r).", path, path.suffix)
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        msg = (
            f"cannot read backbone weights {path} ({reason}); pass a .safetensors file or a torch state dict "
            f"saved with torch.save(model.state_dict(), ...)"
        )
        raise BackboneWeightsError(msg) from err

    while isinstance(content, Mapping):
        nested = next(
            (content[key] for key in _NESTING_KEYS if isinstance(content.get(key), Mapping) and content[key]),
            None,
        )
        if nested is None:
            break
        content = nested
    tensors = (
        {str(key): value for key, value in content.items() if isinstance(value, torch.Tensor)}
        if isinstance(content, Mapping)
        else {}
    )
    if not tensors:
        msg = f"backbone weights {path} hold no named tensors; pass a .safetensors file or a torch state dict"
        raise BackboneWeightsError(msg)
    return tensors


def _find_prefix(source_keys: list[str], target_keys: set[str]) -> str | None:
    """The prefix that, stripped from the source names, matches the most target names (shortest on ties)."""
    counts: Counter[str] = Counter()
    for key in source_keys:
        parts = key.split(".")
        for start in range(len(parts)):
            if ".".join(parts[start:]) in target_keys:
                counts[".".join(parts[:start]) + ("." if start else "")] += 1
                break
    if not counts:
        return None
    return max(counts, key=lambda prefix: (counts[prefix], -len(prefix)))


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(size) for size in tensor.shape) or "scalar"


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_EXAMPLES])
    return f"{shown}, ..." if len(keys) > _EXAMPLES else shown


def match_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    allowed_extra: Mapping[str, torch.Size] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the tensors of a weights file onto a module's state dict.

    A common prefix (``"module."``, ``"backbone."``, ``"model.encoder.feature_extractor."``, ...) is found and
    stripped; tensors outside that prefix are ignored. BatchNorm's ``num_batches_tracked`` may be absent.

    Args:
        source: tensors read from the file.
        target: the state dict of the module to fill.
        allowed_extra: names and shapes that may be present in the file without a place in ``target`` (the
            layers that a timm ``features_only`` model drops, such as ``layer4`` and ``fc`` of a ResNet).

    Returns:
        ``(matched, problems)``: the tensors to load, keyed as in ``target``, and one line per problem (missing,
        shape mismatch, unexpected), empty when the file fits.
    """
    target_keys = set(target)
    prefix = _find_prefix(list(source), target_keys)
    if prefix is None:
        return {}, [
            f"no tensor name matches (model expects e.g. {_examples(list(target))}; "
            f"file has e.g. {_examples(list(source))})",
        ]
    stripped = {key[len(prefix) :]: value for key, value in source.items() if key.startswith(prefix)}
    allowed_extra = allowed_extra or {}

    missing = [key for key in target if key not in stripped and not key.endswith("num_batches_tracked")]
    mismatched = [
        f"{key} file {_shape(stripped[key])} vs model {_shape(target[key])}"
        for key in target
        if key in stripped and stripped[key].shape != target[key].shape
    ]
    unexpected = [
        key
        for key, value in stripped.items()
        if key not in target_keys and (key not in allowed_extra or allowed_extra[key] != value.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_examples(missing)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape ({_examples(mismatched)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    matched = {key: value for key, value in stripped.items() if key in target_keys}
    return matched, problems


def _dropped_layer_shapes(backbone: str, target_keys: set[str]) -> dict[str, torch.Size]:
    """Names and shapes of the full timm model's tensors that a ``features_only`` model does not hold."""
    import timm

    try:
        with torch.device("meta"):
            full = timm.create_model(backbone, pretrained=False)
    except Exception:  # an unknown backbone fails later with its own message
        logger.debug("Cannot build %s on the meta device to list its dropped layers.", backbone, exc_info=True)
        return {}
    return {key: value.shape for key, value in full.state_dict().items() if key not in target_keys}


def load_backbone_weights(
    feature_extractor: nn.Module,
    weights_path: str | os.PathLike[str],
    backbone: str,
) -> int:
    """Load a local weights file into a timm ``features_only`` backbone (the reverse-distillation teacher).

    Args:
        feature_extractor: the timm model to fill (``TimmFeatureExtractor.feature_extractor``).
        weights_path: a ``.safetensors`` file or torch state dict of the full classification model (the layers
            the feature extractor drops, such as ``layer4`` and ``fc``, are skipped) or of the extractor itself.
        backbone: the timm name of the architecture, for the messages and the list of droppable layers.

    Returns:
        Number of tensors loaded.

    Raises:
        BackboneWeightsError: if the file is missing or unreadable, or its names or shapes do not fit the backbone.
    """
    source = read_state_dict(weights_path)
    target = feature_extractor.state_dict()
    matched, problems = match_state_dict(source, target, _dropped_layer_shapes(backbone, set(target)))
    if problems:
        msg = (
            f"backbone weights {weights_path} do not fit backbone {backbone!r}: {'; '.join(problems)}; "
            f"pass the weights of a {backbone!r} or set backbone to the file's architecture"
        )
        raise BackboneWeightsError(msg)
    feature_extractor.load_state_dict(matched, strict=False)
    logger.info("Loaded %d backbone tensors from %s into %s.", len(matched), weights_path, backbone)
    return len(matched)
