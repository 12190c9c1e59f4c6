"""The device forward of prediction: uint8 tiles in, raw tile scores (and pooled anomaly maps) out.

:class:`TileForward` converts and normalises on the device, runs the network under autocast and channels-last as
asked (``torch.compile`` optional) and copies the results back without blocking, so the host prepares the next
batch while the device computes: :meth:`TileForward.launch` queues a batch, :meth:`LaunchedBatch.result` waits
for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["LaunchedBatch", "TileForward"]


@dataclass
class LaunchedBatch:
    """One batch whose forward pass was queued on the device; ``result`` waits for its scores to reach the host."""

    scores: torch.Tensor
    maps: torch.Tensor | None
    event: Any = None

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.event is not None:
            self.event.synchronize()
        return self.scores.numpy(), None if self.maps is None else self.maps.numpy()


class TileForward:
    """uint8 tiles (N, H, W, 3) -> raw tile scores (and pooled anomaly maps) on the model's device.

    Conversion to float and normalisation run on the device; autocast (bf16/fp16) and channels_last as asked;
    with ``torch.compile`` the last, smaller batch is padded to the batch size so the compiled graph is reused
    (no recompilation, no new cuDNN tuning). Results come back through pinned memory without blocking, so the
    host prepares the next batch while the device computes (:meth:`launch`, then :meth:`LaunchedBatch.result`).
    """

    def __init__(
        self,
        module: Any,
        device: torch.device,
        precision: str,
        compile_model: bool,
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
            full = output.anomaly_map.float().reshape(-1, 1, *output.anomaly_map.shape[-2:])[:count]
            maps = torch.nn.functional.adaptive_avg_pool2d(full, self.map_cells)[:, 0]  # pooled on the device
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

    def __call__(self, images_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and maps) of one batch, waiting for them."""
        return self.launch(images_u8).result()
