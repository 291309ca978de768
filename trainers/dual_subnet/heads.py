"""The dual-subnet model's per-voxel projection heads and the forward hook that feeds them (beside the two
subnets, never inside them, so their checkpoints stay stock)."""

from __future__ import annotations

import torch
from torch import nn


class VoxelProjectionHead(nn.Module):
    """A 1x1x1 convolution (a linear map per voxel) from decoder features to a D-dimensional embedding per voxel,
    the per-voxel feature ``f(v)`` of prototype contrast (Karimijafarbigloo, Azad et al. 2023, Eq. 6-7).

    Stored as a ``Linear`` so the same weights project whole feature maps or only a gathered sample of voxels,
    which keeps the memory of the contrast independent of the patch size.

    Shapes:
        (B, in_channels, *spatial) -> (B, out_dim, *spatial), or gathered voxels (N, in_channels) -> (N, out_dim).
    """

    def __init__(self, in_channels: int, out_dim: int = 16) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_channels = in_channels
        self.linear = nn.Linear(in_channels, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim < 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"expected (N, {self.in_channels}) vectors or (B, {self.in_channels}, *spatial) features, got "
                f"shape {tuple(features.shape)}"
            )
        if features.ndim == 2:
            return self.linear(features)
        return self.linear(features.movedim(1, -1)).movedim(-1, 1)


class FeatureTap:
    """Keeps the latest output of a module (a forward hook), e.g. the last decoder stage of an nnU-Net network,
    without changing the network or its state dict. ``features`` is None until the module has run; ``clear()``
    drops the reference (and with it the activation) after use.

    Usage: ``tap = FeatureTap(network.decoder.stages[-1]); network(x); tap.features`` -> that stage's output.
    """

    def __init__(self, module: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._store)

    def _store(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features = output

    def clear(self) -> None:
        self.features = None

    def remove(self) -> None:
        self._handle.remove()
        self.features = None


class ProjectionHeadPair(nn.ModuleDict):
    """The per-voxel projection heads of two subnets (keys ``a`` and ``b``) called together, so one DDP wrapper
    around the pair averages both heads' gradients.

    Shapes:
        forward(x_a, x_b): each (N_s, C_s) or (B, C_s, *spatial); returns the pair of projections.
    """

    def __init__(self, head_a: nn.Module, head_b: nn.Module) -> None:
        super().__init__({"a": head_a, "b": head_b})

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self["a"](x_a), self["b"](x_b)
