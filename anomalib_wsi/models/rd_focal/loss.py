"""Focal cosine loss of He & Li (MIDL 2023, "FW-RD") for reverse distillation with labelled tumour tiles.

Reverse distillation (Deng & Li, CVPR 2022) trains a student decoder to reproduce the teacher encoder's features
of normal tissue; its loss is ``1 - s`` with ``s`` the cosine similarity between the flattened teacher and student
feature maps of one tile at one layer. He & Li also train on a few labelled tumour tiles and turn ``s`` into the
probability of the right answer, ``p_t = s`` for a normal tile and ``p_t = 1 - s`` for a tumour tile, so that the
student learns to reproduce normal tissue and to fail on tumour. The loss per tile and layer is the focal loss
``-alpha_t (1 - p_t) ** gamma * log(p_t)`` (Lin et al., 2017), averaged over the batch and summed over layers.

Example:
    >>> import torch
    >>> encoder_features = [torch.rand(2, 8, 4, 4)]
    >>> decoder_features = [torch.rand(2, 8, 4, 4)]
    >>> loss = focal_cosine_loss(encoder_features, decoder_features, torch.tensor([0, 1]))
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FocalCosineLoss", "focal_cosine_loss", "tile_cosine_similarity"]

IGNORE_LABEL = -1


def tile_cosine_similarity(
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Cosine similarity between the flattened teacher and student feature maps, one value per tile and layer.

    Computed in float32 whatever the precision of the features (autocast keeps them in bf16/fp16).

    Args:
        encoder_features: teacher feature maps, one ``(B, C_k, H_k, W_k)`` tensor per layer ``k``.
        decoder_features: student feature maps with the same shapes.

    Returns:
        Tensor of shape ``(B, K)``: ``s[i, k]`` for tile ``i`` and layer ``k``, in ``[-1, 1]``.

    Raises:
        ValueError: if the two lists differ in length or a pair of maps differs in shape.
    """
    if len(encoder_features) != len(decoder_features) or not encoder_features:
        msg = (
            f"expected as many encoder as decoder feature maps (at least one), "
            f"got {len(encoder_features)} and {len(decoder_features)}"
        )
        raise ValueError(msg)
    similarities = []
    for encoder_feature, decoder_feature in zip(encoder_features, decoder_features, strict=True):
        if encoder_feature.shape != decoder_feature.shape:
            shapes = f"{tuple(encoder_feature.shape)} vs {tuple(decoder_feature.shape)}"
            msg = f"encoder and decoder feature maps differ in shape: {shapes}"
            raise ValueError(msg)
        batch_size = encoder_feature.shape[0]
        similarities.append(
            F.cosine_similarity(
                encoder_feature.float().reshape(batch_size, -1),
                decoder_feature.float().reshape(batch_size, -1),
                dim=1,
            ),
        )
    return torch.stack(similarities, dim=1)


def focal_cosine_loss(
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
    labels: torch.Tensor,
    alpha_normal: float = 0.1,
    alpha_tumour: float = 0.9,
    gamma: float = 2.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Focal loss on the teacher/student cosine similarity, as in He & Li's public code (FW-RD ``main.py``).

    For layer ``k`` and tile ``i``: ``s`` = :func:`tile_cosine_similarity`; ``p_t = s`` and ``alpha_t =
    alpha_normal`` for a normal tile (label 0); ``p_t = 1 - s`` and ``alpha_t = alpha_tumour`` for a tumour tile
    (label 1); ``FL = -alpha_t (1 - p_t) ** gamma * log(max(p_t, eps))``. The loss is the mean of ``FL`` over the
    tiles of the batch, summed over the layers. Tiles labelled -1 (ignored) take no part; a batch of ignored tiles
    only gives a loss of 0 (still attached to the graph).

    Args:
        encoder_features: teacher feature maps, one ``(B, C_k, H_k, W_k)`` tensor per layer.
        decoder_features: student feature maps with the same shapes.
        labels: ``(B,)`` tile labels, 0 normal, 1 tumour, -1 ignored (bool or integer).
        alpha_normal: weight of normal tiles (0.1 in the paper).
        alpha_tumour: weight of tumour tiles (0.9 in the paper).
        gamma: focusing parameter (2.0 in the paper); 0 gives an alpha-weighted log loss.
        eps: lower bound of ``p_t`` inside the logarithm.

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: if the labels do not match the batch or hold values other than -1, 0 and 1.
    """
    similarity = tile_cosine_similarity(encoder_features, decoder_features)
    labels = labels.reshape(-1)
    if labels.shape[0] != similarity.shape[0]:
        msg = f"expected one label per tile ({similarity.shape[0]} tiles), got {labels.shape[0]} labels"
        raise ValueError(msg)
    # Boolean labels (anomalib's ``gt_label``) are valid by construction: no check, no device sync.
    needs_check = labels.dtype != torch.bool and not torch.compiler.is_compiling()
    labels = labels.long().to(similarity.device)
    if needs_check and bool(((labels < IGNORE_LABEL) | (labels > 1)).any()):
        msg = f"tile labels must be 0 (normal), 1 (tumour) or -1 (ignored); got {sorted(set(labels.tolist()))}"
        raise ValueError(msg)

    tumour = (labels == 1).unsqueeze(1)
    valid = (labels != IGNORE_LABEL).to(similarity.dtype)
    p_t = torch.where(tumour, 1.0 - similarity, similarity).clamp(min=eps)
    alpha_t = torch.where(tumour, alpha_tumour, alpha_normal).to(similarity.dtype)
    focal = -alpha_t * (1.0 - p_t).pow(gamma) * torch.log(p_t)  # (B, K)
    per_layer = (focal * valid.unsqueeze(1)).sum(dim=0) / valid.sum().clamp(min=1.0)
    return per_layer.sum()


class FocalCosineLoss(nn.Module):
    """The focal cosine loss as a module; see :func:`focal_cosine_loss`.

    Args:
        alpha_normal: weight of normal tiles (label 0).
        alpha_tumour: weight of tumour tiles (label 1).
        gamma: focusing parameter, at least 0.
        eps: lower bound of ``p_t`` inside the logarithm.

    Raises:
        ValueError: if a weight is outside ``[0, 1]`` or both are 0, or ``gamma`` is negative.

    Example:
        >>> import torch
        >>> criterion = FocalCosineLoss(alpha_normal=0.1, alpha_tumour=0.9, gamma=2.0)
        >>> features = [torch.rand(4, 8, 4, 4)]
        >>> loss = criterion(features, [f + 0.1 for f in features], torch.tensor([0, 0, 1, 0]))
    """

    def __init__(
        self,
        alpha_normal: float = 0.1,
        alpha_tumour: float = 0.9,
        gamma: float = 2.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, value in (("alpha_normal", alpha_normal), ("alpha_tumour", alpha_tumour)):
            if not 0.0 <= value <= 1.0:
                msg = f"{name} must lie in [0, 1] (the paper uses 0.1 normal, 0.9 tumour), got {value}"
                raise ValueError(msg)
        if alpha_normal == 0.0 and alpha_tumour == 0.0:
            msg = "alpha_normal and alpha_tumour cannot both be 0: nothing would be learned"
            raise ValueError(msg)
        if gamma < 0.0:
            msg = f"gamma must be at least 0 (the paper uses 2.0), got {gamma}"
            raise ValueError(msg)
        if not 0.0 < eps < 1.0:
            msg = f"eps must lie in (0, 1), got {eps}"
            raise ValueError(msg)
        self.alpha_normal = alpha_normal
        self.alpha_tumour = alpha_tumour
        self.gamma = gamma
        self.eps = eps

    def forward(
        self,
        encoder_features: Sequence[torch.Tensor],
        decoder_features: Sequence[torch.Tensor],
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the loss of one batch.

        Args:
            encoder_features: teacher feature maps, one ``(B, C_k, H_k, W_k)`` tensor per layer.
            decoder_features: student feature maps with the same shapes.
            labels: ``(B,)`` tile labels, 0 normal, 1 tumour, -1 ignored.

        Returns:
            Scalar float32 tensor.
        """
        return focal_cosine_loss(
            encoder_features,
            decoder_features,
            labels,
            alpha_normal=self.alpha_normal,
            alpha_tumour=self.alpha_tumour,
            gamma=self.gamma,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        """Return the settings shown by ``print(module)``."""
        return f"alpha_normal={self.alpha_normal}, alpha_tumour={self.alpha_tumour}, gamma={self.gamma}"
