"""The strong view of FixMatch-style training for nnU-Net patches: intensity-only perturbations applied on the
training device to a batch that has been through nnU-Net's own (weak) augmentation.

FixMatch (Sohn et al., NeurIPS 2020, Sec. 2) makes its strong view with RandAugment/CTAugment + Cutout;
UniMatch's medical code (Yang et al., CVPR 2023) with colour jitter (p 0.8: brightness and contrast factors in
0.5-1.5), Gaussian blur (p 0.5, sigma 0.1-2.0 px) and CutMix. For single-channel CT/MRI patches the colour
jitter becomes brightness and contrast, and nnU-Net's own intensity transforms (noise, gamma, simulated low
resolution) are added with nnU-Net's ranges and probabilities. Nothing here moves a voxel: the pseudo-labels
of the weak view stay valid for the strong view (only CutMix, applied to images and labels alike, changes
geometry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast over (B, C, *spatial) with ``ndim`` dims."""
    return values.view(-1, *([1] * (ndim - 1)))


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _chosen(n: int, probability: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) < probability


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (in voxels; 0 = unchanged), edges replicated.

    Shapes:
        images: (B, C, *spatial), 2 or 3 spatial axes. sigmas: (B,). Returns the shape and dtype of ``images``.
    """
    if sigmas.shape != (images.shape[0],):
        raise ValueError(f"need one sigma per sample, got {tuple(sigmas.shape)} for {tuple(images.shape)}")
    radius = math.ceil(3 * float(sigmas.max())) if bool((sigmas > 0).any()) else 0
    if radius == 0:
        return images
    b, c = images.shape[:2]
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    safe = sigmas.float().clamp_min(1e-6)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    identity = (offsets == 0).float()[None].expand_as(kernels)
    kernels = torch.where((sigmas > 0)[:, None], kernels, identity)
    kernels = kernels / kernels.sum(1, keepdim=True)
    # one kernel per (sample, channel): grouped 1D convolutions along each axis
    weight = kernels.repeat_interleave(c, 0)[:, None].to(images.dtype)
    out = images
    for axis in range(2, images.ndim):
        moved = out.movedim(axis, -1)
        shape = moved.shape
        rows = moved.reshape(b * c, -1, shape[-1]).transpose(0, 1)  # (M, B*C, L)
        rows = F.pad(rows, (radius, radius), mode="replicate")
        rows = F.conv1d(rows, weight, groups=b * c)
        out = rows.transpose(0, 1).reshape(shape).movedim(-1, axis)
    return out


def simulate_low_resolution(images: torch.Tensor, zooms: torch.Tensor) -> torch.Tensor:
    """Downsample by ``zoom`` (nearest) and upsample back (linear), per sample (1 = unchanged): nnU-Net's
    ``SimulateLowResolutionTransform`` on a whole batch.

    Shapes:
        images: (B, C, *spatial), 2 or 3 spatial axes. zooms: (B,) in (0, 1]. Returns the shape and dtype of
        ``images``.
    """
    spatial = images.shape[2:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    out = images.clone()
    for i in torch.nonzero(zooms < 1).flatten().tolist():
        size = [max(1, round(n * float(zooms[i]))) for n in spatial]
        low = F.interpolate(images[i : i + 1], size, mode="nearest-exact")
        out[i : i + 1] = F.interpolate(low, spatial, mode=mode, align_corners=False)
    return out


@dataclass(frozen=True)
class StrongIntensityAugmentation:
    """Random intensity perturbations of every patch of a batch, each drawn per sample (order as nnU-Net's
    intensity transforms: noise, blur, brightness, contrast, low resolution, gamma).

    Attributes (probability per sample, then range):
        noise_probability, noise_variance: additive Gaussian noise, variance uniform in the range (nnU-Net: 0.1,
            0-0.1; images are z-scored or CT-normalized by nnU-Net, so in units of the normalized intensity).
        blur_probability, blur_sigma: Gaussian blur, sigma in voxels (UniMatch's medical code: 0.5, 0.1-2.0).
        brightness_probability, brightness_range: multiply by a factor (UniMatch: colour jitter p 0.8,
            brightness 0.5 = factor 0.5-1.5; nnU-Net's weak view: 0.75-1.25).
        contrast_probability, contrast_range: scale around the mean of each channel (UniMatch: p 0.8, 0.5-1.5),
            then clip to the original range, as nnU-Net's ``ContrastTransform`` does.
        lowres_probability, lowres_zoom: simulated low resolution (nnU-Net: 0.25, zoom 0.5-1).
        gamma_probability, gamma_range: ``x' = x^gamma`` on the [0, 1]-rescaled channel, mean and standard
            deviation restored (nnU-Net: 0.3, 0.7-1.5, retain statistics).

    Shapes:
        ``__call__``: (B, C, *spatial) floating point, 2 or 3 spatial axes -> same shape, dtype and device.
    """

    noise_probability: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    brightness_probability: float = 0.8
    brightness_range: tuple[float, float] = (0.5, 1.5)
    contrast_probability: float = 0.8
    contrast_range: tuple[float, float] = (0.5, 1.5)
    lowres_probability: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim not in (4, 5) or not images.is_floating_point():
            raise ValueError(
                f"expected floating-point (B, C, *spatial) images with 2 or 3 spatial axes, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        n, ndim, device = images.shape[0], images.ndim, images.device
        spatial_axes = tuple(range(2, ndim))
        x = images

        chosen = _chosen(n, self.noise_probability, device)
        std = _uniform(n, *self.noise_variance, device).sqrt() * chosen
        x = x + torch.randn_like(x) * _per_sample(std, ndim).to(x.dtype)

        chosen = _chosen(n, self.blur_probability, device)
        x = gaussian_blur(x, _uniform(n, *self.blur_sigma, device) * chosen)

        chosen = _chosen(n, self.brightness_probability, device)
        factor = torch.where(
            chosen, _uniform(n, *self.brightness_range, device), torch.ones(n, device=device)
        )
        x = x * _per_sample(factor, ndim).to(x.dtype)

        chosen = _chosen(n, self.contrast_probability, device)
        factor = torch.where(chosen, _uniform(n, *self.contrast_range, device), torch.ones(n, device=device))
        mean = x.mean(spatial_axes, keepdim=True)
        low, high = x.amin(spatial_axes, keepdim=True), x.amax(spatial_axes, keepdim=True)
        contrasted = ((x - mean) * _per_sample(factor, ndim).to(x.dtype) + mean).clamp(low, high)
        x = torch.where(_per_sample(chosen, ndim), contrasted, x)

        chosen = _chosen(n, self.lowres_probability, device)
        zoom = torch.where(chosen, _uniform(n, *self.lowres_zoom, device), torch.ones(n, device=device))
        x = simulate_low_resolution(x, zoom)

        chosen = _chosen(n, self.gamma_probability, device)
        gamma = _per_sample(_uniform(n, *self.gamma_range, device), ndim)
        mean, std = x.mean(spatial_axes, keepdim=True), x.std(spatial_axes, keepdim=True)
        low, high = x.amin(spatial_axes, keepdim=True), x.amax(spatial_axes, keepdim=True)
        span = (high - low).clamp_min(1e-7)
        gammaed = ((x - low) / span).clamp_min(0).pow(gamma) * span + low
        g_mean, g_std = gammaed.mean(spatial_axes, keepdim=True), gammaed.std(spatial_axes, keepdim=True)
        gammaed = (gammaed - g_mean) / g_std.clamp_min(1e-7) * std + mean
        x = torch.where(_per_sample(chosen, ndim), gammaed, x)
        return x.to(images.dtype)
