"""Input checks that the dense losses of several methods share (one message for one mistake)."""

from __future__ import annotations

import torch


def check_same_dense_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Check that two loss inputs are dense maps of one shape.

    Args:
        a, b: tensors that must both be (B, C, *spatial) with at least one spatial axis and equal shapes.
        name_a, name_b: what they are, for the message.

    Raises:
        ValueError: the shapes differ, or the tensors have fewer than three axes (the message gives the shapes).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape (B, C, *spatial), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if a.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) {name_a}, got shape {tuple(a.shape)}")


def check_masked_loss_inputs(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, region_based: bool
) -> None:
    """Check the inputs of a voxel-weighted segmentation loss (masked cross-entropy, masked soft Dice).

    Args:
        logits: (B, C, *spatial).
        target: (B, 1, *spatial) class indices, or (B, C, *spatial) region masks when ``region_based``.
        weight: (B, 1, *spatial), or (B, C, *spatial) when ``region_based``.
        region_based: whether the targets are per-region masks (nnU-Net's region-based training).

    Raises:
        ValueError: logits without a spatial axis, or a target or weight shape that does not fit the logits.
    """
    if logits.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) logits, got shape {tuple(logits.shape)}")
    target_channels = logits.shape[1] if region_based else 1
    if target.shape != (logits.shape[0], target_channels, *logits.shape[2:]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)} "
            f"({'one mask per region' if region_based else 'one channel of class indices'} expected)"
        )
    if (
        weight.shape[0] != logits.shape[0]
        or weight.shape[2:] != logits.shape[2:]
        or weight.shape[1] not in (1, target_channels)
    ):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not fit logits {tuple(logits.shape)}")
