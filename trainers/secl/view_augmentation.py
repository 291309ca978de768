"""On-device view augmentation for contrastive learning on cubes (2D or 3D).

SECL (Xiang et al.) makes its two views with five augmentations: intensity shift, elastic deformation, flip,
scale and rotation. Here they are applied to a batch of small crops on the training device in one resampling
(flip, rotation, scale and elastic displacement are composed into one sampling grid for ``grid_sample``), which
costs a few milliseconds where running batchgeneratorsv2's transforms per cube on the CPU would block the
training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from angles in radians: (N,) -> (N, 2, 2), or (N, 3) (about each axis) -> (N, 3, 3)."""
    cos, sin = angles.cos(), angles.sin()
    if angles.ndim == 1:
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    n = angles.shape[0]
    rotation = torch.eye(3, device=angles.device).expand(n, 3, 3)
    for axis in range(3):
        plane = [a for a in range(3) if a != axis]
        single = torch.eye(3, device=angles.device).repeat(n, 1, 1)
        single[:, plane[0], plane[0]] = cos[:, axis]
        single[:, plane[0], plane[1]] = -sin[:, axis]
        single[:, plane[1], plane[0]] = sin[:, axis]
        single[:, plane[1], plane[1]] = cos[:, axis]
        rotation = single @ rotation
    return rotation


@dataclass(frozen=True)
class ViewAugmentation:
    """Random view of every crop in a batch: flip, rotation, scale, mild elastic deformation, intensity shift.

    Each crop draws its own parameters. The crops have already been through nnU-Net's full training
    augmentation, so the ranges here are mild (all inside nnU-Net's own: rotation +-30 deg, scale 0.7-1.4):
    their job is to make the two views of a crop differ, not to widen the data distribution.

    Attributes:
        rotation_degrees: rotation about every axis, uniform in +-this.
        scale_range: isotropic zoom factor, uniform in this range.
        elastic_magnitude: largest elastic displacement, as a fraction of the crop's half-size.
        elastic_control_points: control points per axis of the smooth displacement field (upsampled).
        intensity_shift: added to every crop and channel, uniform in +-this (images are normalized by
            nnU-Net, so this is in units of the normalized intensity, e.g. standard deviations for z-score).
        flip_axes: spatial axes (0 = first spatial axis) that are each flipped with probability 1/2.

    Shapes:
        crops: (N, C, *spatial) with 2 or 3 spatial dims, floating point. Returns the same shape and dtype.
    """

    rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    elastic_magnitude: float = 0.05
    elastic_control_points: int = 4
    intensity_shift: float = 0.1
    flip_axes: Sequence[int] = (0, 1, 2)

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.ndim not in (4, 5) or not crops.is_floating_point():
            raise ValueError(
                f"expected floating-point (N, C, *spatial) crops, 2D or 3D, got {crops.dtype} {tuple(crops.shape)}"
            )
        n, ndim, device = crops.shape[0], crops.ndim - 2, crops.device
        spatial = torch.tensor(crops.shape[2:], dtype=torch.float32, device=device)

        # affine in voxel units (so rotations of non-cubic crops do not shear), in the (x, y, z) = reversed
        # spatial order of affine_grid's normalized coordinates
        half_size = spatial.flip(0) / 2
        angle_shape = (n,) if ndim == 2 else (n, 3)
        angles = (torch.rand(angle_shape, device=device) * 2 - 1) * math.radians(self.rotation_degrees)
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(n, 1, 1, device=device)
        flips = torch.ones(n, ndim, device=device)
        for axis in self.flip_axes:
            if axis < ndim:
                flips[:, ndim - 1 - axis] = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        linear = _rotation_matrices(angles) / scale @ torch.diag_embed(flips)
        linear = torch.diag(1 / half_size) @ linear @ torch.diag(half_size)
        theta = torch.cat([linear, torch.zeros(n, ndim, 1, device=device)], dim=2)
        grid = F.affine_grid(theta, list(crops.shape), align_corners=False)

        if self.elastic_magnitude > 0:
            coarse = torch.rand(n, ndim, *[self.elastic_control_points] * ndim, device=device) * 2 - 1
            mode = "bilinear" if ndim == 2 else "trilinear"
            field = F.interpolate(coarse, size=crops.shape[2:], mode=mode, align_corners=True)
            grid = grid + self.elastic_magnitude * field.movedim(1, -1)

        views = F.grid_sample(
            crops.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        shift = (torch.rand(n, crops.shape[1], *[1] * ndim, device=device) * 2 - 1) * self.intensity_shift
        return (views + shift).to(crops.dtype)
