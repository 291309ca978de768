"""Small heads that live beside an nnU-Net network (never inside it, so ``nnUNetv2_predict`` and
``-pretrained_weights`` see the stock architecture)."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Shallow MLP projector ``p_theta`` of contrastive learning: global average pooling of an encoder feature
    map, then ``Linear -> ReLU -> Linear`` to a low-dimensional embedding (SimCLR, Chen et al. 2020; the
    projector of SECL, Xiang et al., and of Chaitanya et al., NeurIPS 2020, has this shape).

    No normalization layer: SECL's contrastive minibatches are small (a handful of cubes), where batch
    statistics would be noise; the loss normalizes the embeddings (cosine similarity) anyway.

    Shapes:
        features: (N, in_channels, *spatial) with any number of spatial dims (2D or 3D encoders).
        Returns (N, out_dim).
    """

    def __init__(self, in_channels: int, hidden_dim: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_channels = in_channels
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim < 3 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"expected (N, {self.in_channels}, *spatial) features, got shape {tuple(features.shape)}"
            )
        return self.mlp(features.flatten(2).mean(dim=2))
