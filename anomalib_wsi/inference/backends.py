"""Inference backends: what runs the network of prediction, behind one small interface.

A backend turns a batch of uint8 tiles ``(N, H, W, 3)`` into raw tile scores (and, when asked, anomaly maps
pooled to ``map_cells`` per side): :meth:`launch` queues the batch and returns a :class:`LaunchedBatch`, whose
``result`` waits for it, so the engine keeps one batch in flight while it stitches the previous one.

- :class:`TorchBackend`: the torch module on its device (CPU or CUDA), with autocast, channels-last,
  ``torch.compile`` and asynchronous copies back to the host;
- :class:`OpenVINOBackend`: an OpenVINO IR (``model.xml``) compiled for the CPU, two infer requests in turn;
- :class:`ONNXRuntimeBackend`: an ONNX model (``model.onnx``) in an ONNX Runtime CPU session, run on a worker
  thread.

The exported networks (:mod:`~anomalib_wsi.inference.export`) take the uint8 tiles themselves and apply the
conversion and the pre-processor inside, exactly as :class:`TorchBackend` does. :func:`make_backend` picks the
backend for a model; every backend uses ``torch.get_num_threads()`` CPU threads unless told otherwise, so the
three compare at the same thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from anomalib_wsi.errors import WSIError

__all__ = ["Backend", "LaunchedBatch", "ONNXRuntimeBackend", "OpenVINOBackend", "TorchBackend", "make_backend"]


@dataclass
class LaunchedBatch:
    """One batch whose forward pass was queued; ``result`` waits for its scores (and pooled maps) on the host."""

    scores: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    event: Any = None
    wait: Callable[[], tuple[np.ndarray, np.ndarray | None]] | None = None

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.wait is not None:
            return self.wait()
        if self.event is not None:
            self.event.synchronize()
        assert self.scores is not None
        return self.scores.numpy(), None if self.maps is None else self.maps.numpy()


class Backend(Protocol):
    """What the engine needs of a backend: the device it computes on and ``launch``."""

    device: torch.device
    name: str

    def launch(self, images_u8: torch.Tensor) -> LaunchedBatch: ...


def _pool(maps: torch.Tensor, map_cells: int) -> torch.Tensor:
    """Anomaly maps ``(N, 1, H, W)`` averaged to ``(N, map_cells, map_cells)``."""
    full = maps.float().reshape(-1, 1, *maps.shape[-2:])
    return torch.nn.functional.adaptive_avg_pool2d(full, map_cells)[:, 0]


class TorchBackend:
    """The torch module on its device: conversion and normalisation there, autocast and channels-last as asked.

    With ``torch.compile`` the last, smaller batch is padded to the batch size so the compiled graph is reused (no
    recompilation, no new cuDNN tuning). Results come back through pinned memory without blocking.
    """

    name = "torch"

    def __init__(
        self,
        module: Any,
        device: torch.device,
        precision: str = "32",
        compile_model: bool = False,
        channels_last: bool | None = None,
        batch_size: int | None = None,
        map_cells: int = 0,
    ) -> None:
        self.module = module.to(device).eval()
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16, "16": torch.float16}.get(precision)
        if channels_last is None:
            channels_last = bool(getattr(module, "channels_last", False))
        self.channels_last = channels_last
        if self.channels_last:
            self.module.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.module.model, dynamic=False) if compile_model else self.module.model
        self.pad_to = batch_size if compile_model else None
        self.map_cells = int(map_cells)

    @torch.inference_mode()
    def launch(self, images_u8: torch.Tensor) -> LaunchedBatch:
        count = int(images_u8.shape[0])
        if self.pad_to is not None and count < self.pad_to:
            padding = images_u8.new_zeros((self.pad_to - count, *images_u8.shape[1:]))
            images_u8 = torch.cat([images_u8, padding])
        if self.device.type == "cuda" and images_u8.device.type == "cpu" and not images_u8.is_pinned():
            images_u8 = images_u8.pin_memory()  # an asynchronous copy needs page-locked memory
        # (N, H, W, 3) as read -> (N, 3, H, W) laid out channels-last: the permute is free, any copy runs on the device
        images = images_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if self.module.pre_processor is not None:
            images = self.module.pre_processor(images)
        images = images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            output = self.net(images)
        scores = output.pred_score.float().reshape(-1)[:count]
        maps = None
        if self.map_cells > 0 and output.anomaly_map is not None:
            maps = _pool(output.anomaly_map[:count], self.map_cells)  # pooled on the device
        if self.device.type != "cuda":
            return LaunchedBatch(scores.cpu(), None if maps is None else maps.cpu())
        host_scores = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
        host_scores.copy_(scores, non_blocking=True)
        host_maps = None
        if maps is not None:
            host_maps = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
            host_maps.copy_(maps, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return LaunchedBatch(host_scores, host_maps, event)


class _ExportedBackend:
    """What the OpenVINO and ONNX Runtime backends share: the input check and the host-side outputs."""

    name = "exported"
    device = torch.device("cpu")

    def __init__(self, exported: Any, map_cells: int) -> None:
        self.path = exported.path
        self.tile_size_px = exported.tile_size_px
        self.map_cells = int(map_cells)

    def _check(self, images_u8: torch.Tensor) -> np.ndarray:
        shape = tuple(images_u8.shape[1:])
        if shape != (self.tile_size_px, self.tile_size_px, 3):
            msg = (
                f"{self.path}: exported for {self.tile_size_px} px tiles, given {shape[0]} px tiles; predict with "
                f"tile_size_px={self.tile_size_px} (the default) or export again with --tile-size {shape[0]}"
            )
            raise WSIError(msg)
        return np.ascontiguousarray(images_u8.numpy())

    def _outputs(self, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        scores = np.array(scores, dtype=np.float32).reshape(-1)
        if self.map_cells <= 0:
            return scores, None
        return scores, _pool(torch.from_numpy(np.array(maps, dtype=np.float32)), self.map_cells).numpy()


def _ov_precision(precision: str) -> str:
    return {"bf16": "bf16", "bf16-mixed": "bf16", "16": "f16", "16-mixed": "f16"}.get(precision, "f32")


class OpenVINOBackend(_ExportedBackend):
    """An OpenVINO IR compiled for the CPU: float32 (bf16/f16 when asked), two infer requests taking turns."""

    name = "openvino"

    def __init__(self, exported: Any, precision: str = "32", threads: int | None = None, map_cells: int = 0) -> None:
        super().__init__(exported, map_cells)
        from anomalib_wsi.inference.export import require_runtime

        ov = require_runtime("openvino")
        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": _ov_precision(precision),  # else bf16 on CPUs that have it
            "PERFORMANCE_HINT": "LATENCY",
        }
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(exported.path), "CPU", config)
        except RuntimeError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            msg = f"{exported.path}: OpenVINO cannot load this model ({first[:160]}); export it again"
            raise WSIError(msg) from None
        self.requests = [self.compiled.create_infer_request() for _ in range(2)]
        self.turn = 0

    def launch(self, images_u8: torch.Tensor) -> LaunchedBatch:
        tiles = self._check(images_u8)
        request = self.requests[self.turn]
        self.turn = 1 - self.turn
        request.start_async({0: tiles}, share_inputs=True)

        def wait() -> tuple[np.ndarray, np.ndarray | None]:
            request.wait()
            return self._outputs(request.get_output_tensor(0).data, request.get_output_tensor(1).data)

        return LaunchedBatch(wait=wait)


class ONNXRuntimeBackend(_ExportedBackend):
    """An ONNX model in an ONNX Runtime CPU session, run on one worker thread so the host stitches meanwhile."""

    name = "onnx"

    def __init__(self, exported: Any, threads: int | None = None, map_cells: int = 0) -> None:
        super().__init__(exported, map_cells)
        from anomalib_wsi.inference.export import require_runtime

        ort = require_runtime("onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            msg = f"{exported.path}: ONNX Runtime cannot load this model ({first[:160]}); export it again"
            raise WSIError(msg) from None
        self.input_name = self.session.get_inputs()[0].name
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")

    def launch(self, images_u8: torch.Tensor) -> LaunchedBatch:
        tiles = self._check(images_u8)
        future = self.executor.submit(self.session.run, None, {self.input_name: tiles})

        def wait() -> tuple[np.ndarray, np.ndarray | None]:
            scores, maps = future.result()[:2]
            return self._outputs(scores, maps)

        return LaunchedBatch(wait=wait)


def make_backend(
    module: Any,
    device: torch.device,
    precision: str = "32",
    compile_model: bool = False,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    map_cells: int = 0,
    threads: int | None = None,
) -> Backend:
    """The backend for ``module``: an :class:`~anomalib_wsi.inference.export.ExportedModel` runs on its runtime
    (CPU; ``device``, ``compile_model`` and ``channels_last`` do not apply), anything else as a torch module."""
    fmt = getattr(module, "format", None)
    if fmt == "openvino":
        return OpenVINOBackend(module, precision, threads, map_cells)
    if fmt == "onnx":
        return ONNXRuntimeBackend(module, threads, map_cells)
    return TorchBackend(module, device, precision, compile_model, channels_last, batch_size, map_cells)
