"""Heads and wrappers that live beside an nnU-Net network (never inside it, so ``nnUNetv2_predict`` and
``-pretrained_weights`` see the stock architecture and its checkpoints stay stock)."""

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


class SDMRegressionNetwork(nn.Module):
    """A segmentation backbone turned into a signed-distance regressor: ``tanh(backbone(x))``.

    DTML's distance network M_d (Zhang & Zhang, PRCV 2021; the authors' V-Net ends in a 1x1x1 conv + tanh):
    with nnU-Net's planned network as backbone, its final 1x1x1 conv (``decoder.seg_layers``) is the regression
    conv and the tanh bounds the output to the [-1, 1] range of a normalized signed distance map.

    Args:
        backbone: a network mapping (B, C_in, *spatial) to one (B, C_out, *spatial) tensor (deep supervision
            off), e.g. nnU-Net's ``build_network_architecture(..., num_output_channels=C_out,
            enable_deep_supervision=False)``.

    Shapes:
        x: (B, C_in, *spatial). Returns (B, C_out, *spatial) float32 in [-1, 1], one SDM channel per
        foreground class or region.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        if isinstance(out, (list, tuple)):
            raise ValueError(
                "the SDM backbone returned several outputs: build it with deep supervision off "
                "(enable_deep_supervision=False)"
            )
        # float32 from here on: DTML compares sigmoid(-1500 * SDM) maps, a near step that half precision blurs
        return torch.tanh(out.float())


def num_sdm_channels(label_manager) -> int:
    """SDM channels of a DTML distance network: one per foreground class (label-based training) or per region
    (region-based), for an nnU-Net ``LabelManager``. The ignore label gets none."""
    if label_manager.has_regions:
        return len(label_manager.foreground_regions)
    return len(label_manager.foreground_labels)


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


def freeze_deep_supervision_seg_layers(decoder: nn.Module) -> None:
    """Freeze every segmentation layer of an nnU-Net ``UNetDecoder`` but the last (full-resolution) one.

    For networks trained without deep supervision, where only the last seg layer runs: DDP (``-num_gpus > 1``)
    would otherwise wait for gradients the other layers never get. Their weights stay in the checkpoint, unused.
    """
    for layer in decoder.seg_layers[:-1]:
        layer.requires_grad_(False)
