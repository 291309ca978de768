"""The projector of SECL's contrastive branch (beside the nnU-Net network, never inside it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Shallow MLP projector ``p_theta`` of contrastive learning: pooling of an encoder feature map, then
    ``Linear -> ReLU -> Linear`` to a low-dimensional embedding (SimCLR, Chen et al. 2020; the projector of
    SECL, Xiang et al., and of Chaitanya et al., NeurIPS 2020, has this shape).

    The pooling keeps a coarse ``pooled_size^spatial_dims`` grid instead of a single global average: nnU-Net's
    encoders end in instance normalization (+ LeakyReLU), so the global average of every channel is (nearly)
    the same for every input (the instance norm's learned shift); globally pooled embeddings of different
    cubes would be nearly identical and InfoNCE would stay at ``log(number of candidates)``. The averages
    over sub-blocks still differ between inputs.

    No normalization layer: SECL's contrastive minibatches are small (a handful of cubes), where batch
    statistics would be noise; the loss normalizes the embeddings (cosine similarity) anyway.

    Shapes:
        features: (N, in_channels, *spatial) with ``spatial_dims`` spatial dims (any size).
        Returns (N, out_dim).
    """

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int = 3,
        hidden_dim: int = 256,
        out_dim: int = 128,
        pooled_size: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
            ("pooled_size", pooled_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.pooled_size = pooled_size
        self.mlp = nn.Sequential(
            nn.Linear(in_channels * pooled_size**spatial_dims, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != self.spatial_dims + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"expected (N, {self.in_channels}, *spatial) features with {self.spatial_dims} spatial dims, "
                f"got shape {tuple(features.shape)}"
            )
        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        return self.mlp(pool(features, self.pooled_size).flatten(1))
