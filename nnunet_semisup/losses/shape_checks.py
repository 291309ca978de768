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
