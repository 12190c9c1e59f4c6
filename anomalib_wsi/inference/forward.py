"""The forward of prediction: uint8 tiles in, raw tile scores (and pooled anomaly maps) out.

:class:`TileForward` runs the batch on the model's backend (:mod:`~anomalib_wsi.inference.backends`): a torch
module converts and normalises on its device, runs under autocast and channels-last as asked (``torch.compile``
optional) and copies the results back without blocking; an exported model (OpenVINO IR or ONNX) runs on its
CPU runtime. Either way the host prepares the next batch while the backend computes: :meth:`TileForward.launch`
queues a batch, :meth:`LaunchedBatch.result` waits for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anomalib_wsi.inference.backends import LaunchedBatch, make_backend

__all__ = ["LaunchedBatch", "TileForward"]


class TileForward:
    """uint8 tiles (N, H, W, 3) -> raw tile scores (and anomaly maps pooled to ``map_cells`` per side).

    Args:
        module: a torch anomalib module (``pre_processor`` and ``model``), or an
            :class:`~anomalib_wsi.inference.export.ExportedModel`.
        device: where a torch module runs (an exported model runs on the CPU).
        precision: "32", "bf16" or "16".
        compile_model: ``torch.compile`` the torch network.
        channels_last: run the torch network channels-last; None: the model's setting.
        batch_size: the loader's batch size (``torch.compile`` pads the last batch to it).
        map_cells: pool anomaly maps to this many cells per side (0: scores only).
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
        self.backend = make_backend(module, device, precision, compile_model, channels_last, batch_size, map_cells)
        self.device = self.backend.device
        self.map_cells = int(map_cells)

    def launch(self, images_u8: torch.Tensor, stain_od: np.ndarray | None = None) -> LaunchedBatch:
        """Queue one batch; the returned batch's ``result`` waits for its scores.

        ``stain_od``: each tile's Macenko map (N, 3, 3), NaN for none, applied on the device before the network
        (see :func:`~anomalib_wsi.data.stain.od_maps_on_device`).
        """
        if stain_od is not None:
            from anomalib_wsi.data.stain import od_maps_on_device

            images_u8 = od_maps_on_device(images_u8.to(self.device, non_blocking=True), torch.from_numpy(stain_od))
        return self.backend.launch(images_u8)

    def __call__(self, images_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and maps) of one batch, waiting for them."""
        return self.launch(images_u8).result()
