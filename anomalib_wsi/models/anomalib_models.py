"""Any anomalib image model on whole slides: the slide post-processor, offline backbones, one-class training.

anomalib's image models (``Padim``, ``Patchcore``, ``Stfpm``, ``ReverseDistillation``, ``Fastflow``, ...) score
tiles; what makes them slide models is the :class:`~anomalib_wsi.post_processing.post_processor.WSIPostProcessor`
in anomalib's ``post_processor=`` slot (heatmaps, lesions, detections, a slide score) and the
:class:`~anomalib_wsi.data.datamodule.WSIDataModule`, which feeds one-class models normal tiles only (its
``normal_only`` follows the model's ``learning_type``). :func:`wsi_model` builds such a model in Python::

    from anomalib_wsi import WSIDataModule, WSIEngine
    from anomalib_wsi.models import wsi_model

    model = wsi_model("Padim", backbone="resnet18", image_size=256, weights_path="resnet18.pth")
    WSIEngine(max_epochs=1).fit(model=model, datamodule=WSIDataModule(root="cohort", mpp=0.5, tile_size_px=256))

With anomalib's own CLI the same is a config (``configs/padim_wsi.yaml``)::

    model:
      class_path: anomalib.models.Padim
      init_args:
        backbone: resnet18
        pre_trained: false
        post_processor:
          class_path: anomalib_wsi.WSIPostProcessor

Backbones built through timm (``TimmFeatureExtractor`` or ``timm.create_model``: Padim, PatchCore, STFPM, reverse
distillation, FastFlow, DFM, DFKDE, C-Flow, U-Flow, ...) can come from a local weights file instead of the model hub
(:func:`timm_backbones`): every backbone the model asks timm for *pre-trained* is built without weights and filled
from the file (a timm ``.safetensors`` or a torchvision/timm ``state_dict``; ResNet names are the same in both).
Models that fetch other files (EfficientAd: its pre-trained teacher and the Imagenette images; DSR, WinCLIP, VLM-AD)
need the network.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anomalib import LearningType
from anomalib.models.components.base import AnomalibModule

from anomalib_wsi.errors import WSIError
from anomalib_wsi.models.rd_focal.weights import BackboneWeightsError, is_download_error, load_backbone_weights

__all__ = [
    "ModelError",
    "class_path",
    "model_class",
    "timm_backbones",
    "trains_on_normal_only",
    "wsi_model",
]

logger = logging.getLogger(__name__)


class ModelError(WSIError, ValueError):
    """A model name, class or option that this plugin cannot use."""


def class_path(cls: type) -> str:
    """The importable dotted path of a class (``anomalib.models.image.padim.lightning_model.Padim``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _anomalib_models() -> dict[str, type[AnomalibModule]]:
    import anomalib.models

    models: dict[str, type[AnomalibModule]] = {}
    for name in anomalib.models.__all__:
        value = getattr(anomalib.models, name, None)
        if isinstance(value, type) and issubclass(value, AnomalibModule) and value is not AnomalibModule:
            models[name] = value
    return models


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def model_class(model: str | type) -> type[AnomalibModule]:
    """The anomalib model class named by ``model``.

    Args:
        model: a class; ``"RDFocal"``; an anomalib model name in any case or snake case (``"Padim"``,
            ``"patchcore"``, ``"reverse_distillation"``); or a dotted class path (``"anomalib.models.Padim"``,
            ``"my_package.models.MyModel"``).

    Raises:
        ModelError: no such model, or the class is not an anomalib model.
    """
    if isinstance(model, type):
        cls: Any = model
    elif _key(model) == "rdfocal":
        from anomalib_wsi.models.rd_focal import RDFocal

        cls = RDFocal
    elif "." in model:
        module_name, _, name = model.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as err:
            msg = f"model {model!r} cannot be imported ({type(err).__name__}: {err}); check the class path"
            raise ModelError(msg) from None
    else:
        known = _anomalib_models()
        by_key = {_key(name): cls for name, cls in known.items()}
        if _key(model) not in by_key:
            msg = (
                f"unknown model {model!r}; use RDFocal, an anomalib model ({', '.join(sorted(known))}) or a class path"
            )
            raise ModelError(msg)
        cls = by_key[_key(model)]
    if not (isinstance(cls, type) and issubclass(cls, AnomalibModule)):
        msg = f"{model!r} is not an anomalib model (a subclass of anomalib's AnomalibModule)"
        raise ModelError(msg)
    return cls


def trains_on_normal_only(model: Any) -> bool:
    """Whether a model learns from normal tiles only: anomalib's one-class models, not RDFocal's focal loss.

    A model may say so itself with a ``trains_on_tumour_tiles`` attribute (RDFocal: True with ``loss="focal"``);
    otherwise ``learning_type == LearningType.ONE_CLASS`` means normal tiles only.
    """
    uses_tumour = getattr(model, "trains_on_tumour_tiles", None)
    if uses_tumour is not None:
        return not bool(uses_tumour)
    try:
        return bool(model.learning_type == LearningType.ONE_CLASS)
    except (AttributeError, NotImplementedError):
        return False


@contextlib.contextmanager
def timm_backbones(
    weights_path: str | os.PathLike[str] | None = None, download: bool = True
) -> Iterator[list[tuple[Any, str]]]:
    """Build timm backbones without the model hub while the block runs.

    Every ``timm.create_model(..., pretrained=True)`` inside the block builds the network without weights; with
    ``weights_path`` those networks are filled from the file when the block ends (a file that does not fit raises
    :class:`~anomalib_wsi.models.rd_focal.weights.BackboneWeightsError`). With ``download=True`` and no file,
    nothing changes (timm downloads). The list yielded collects ``(network, backbone name)`` of each.

    Args:
        weights_path: local weights of the backbone (``.safetensors`` or a torch ``state_dict``).
        download: with no ``weights_path``, let timm download pre-trained weights (False: random weights, for a
            checkpoint that supplies them).
    """
    import timm

    built: list[tuple[Any, str]] = []
    if weights_path is None and download:
        yield built
        return
    original = timm.create_model

    def create_model(model_name: str, pretrained: bool = False, *args: Any, **kwargs: Any) -> Any:
        network = original(model_name, False, *args, **kwargs)
        if pretrained:
            built.append((network, str(model_name)))
        return network

    timm.create_model = create_model
    try:
        yield built
    finally:
        timm.create_model = original
    if weights_path is not None:
        if not built:
            msg = f"weights_path {weights_path} was given, but the model built no pre-trained timm backbone to fill"
            raise BackboneWeightsError(msg)
        for network, name in built:
            load_backbone_weights(network, weights_path, name)


def wsi_model(
    model: str | type,
    *,
    image_size: int | None = None,
    weights_path: str | Path | None = None,
    post_processor: Any = None,
    **kwargs: Any,
) -> AnomalibModule:
    """An anomalib image model ready for slides: the slide post-processor, tile size, offline backbone.

    Args:
        model: the model (see :func:`model_class`): ``"Padim"``, ``"Patchcore"``, ``"Stfpm"``, ``"RDFocal"``, ...
        image_size: side the default pre-processor resizes tiles to (None: the model's default, mostly 256). Set
            it to the data module's ``tile_size_px`` so tiles are not rescaled.
        weights_path: local weights of the pre-trained backbone, used instead of the model hub (see
            :func:`timm_backbones`); ``pre_trained`` is then ignored.
        post_processor: the post-processor (default: a new
            :class:`~anomalib_wsi.post_processing.post_processor.WSIPostProcessor`); it must be one.
        **kwargs: the model's own arguments (``backbone``, ``layers``, ``pre_trained``, ``coreset_sampling_ratio``).

    Returns:
        The model, for ``WSIEngine().fit`` or anomalib's ``Engine``.

    Raises:
        ModelError: unknown model, an argument it does not take, or a post-processor that is not a WSIPostProcessor.
        BackboneWeightsError: pre-trained weights cannot be downloaded, or ``weights_path`` is missing or does not
            fit the backbone.

    Example:
        >>> model = wsi_model("Padim", backbone="resnet18", pre_trained=False, image_size=64)  # doctest: +SKIP
        >>> type(model.post_processor).__name__                                                # doctest: +SKIP
        'WSIPostProcessor'
    """
    from anomalib_wsi.post_processing.post_processor import WSIPostProcessor

    cls = model_class(model)
    if getattr(cls, "__name__", "") == "RDFocal":
        if weights_path is not None:
            kwargs["weights_path"] = weights_path
        if image_size is not None:
            kwargs["image_size"] = image_size
        if post_processor is not None:
            kwargs["post_processor"] = post_processor
        return cls(**kwargs)
    if post_processor is None:
        post_processor = WSIPostProcessor()
    if not isinstance(post_processor, WSIPostProcessor):
        msg = f"{cls.__name__}: post_processor must be a WSIPostProcessor, not {type(post_processor).__name__}"
        raise ModelError(msg)
    if image_size is not None and "pre_processor" not in kwargs:
        if int(image_size) <= 0 or int(image_size) % 32:
            msg = f"image_size must be a positive multiple of 32 (the backbones' stride), got {image_size}"
            raise ModelError(msg)
        kwargs["pre_processor"] = cls.configure_pre_processor(image_size=(int(image_size), int(image_size)))
    kwargs.setdefault("visualizer", False)  # no PNG per tile at slide scale
    takes_pre_trained = "pre_trained" in inspect.signature(cls.__init__).parameters
    # STFPM has no pre_trained argument (its teacher is always pre-trained): here it means "no download"
    download = bool(kwargs.get("pre_trained", True) if takes_pre_trained else kwargs.pop("pre_trained", True))
    if weights_path is not None and takes_pre_trained:
        kwargs["pre_trained"] = True  # the backbones that would be pre-trained are the ones the file fills
    try:
        with timm_backbones(weights_path, download=download or weights_path is not None):
            instance = cls(post_processor=post_processor, **kwargs)
    except TypeError as err:
        msg = f"{cls.__name__}: {err}; see the model's arguments in anomalib's documentation"
        raise ModelError(msg) from None
    except BackboneWeightsError:
        raise
    except Exception as err:
        if not (download and weights_path is None and is_download_error(err)):
            raise
        backbone = kwargs.get("backbone", "its backbone")
        msg = (
            f"{cls.__name__}: cannot download the pre-trained {backbone!r} backbone from the model hub "
            f"({type(err).__name__}); pass weights_path=<local .safetensors or .pth of {backbone}>, or "
            "pre_trained=False (random weights: for tests)"
        )
        raise BackboneWeightsError(msg) from None
    return instance
