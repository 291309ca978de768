"""Bidirectional copy-paste (Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image
Segmentation", CVPR 2023, Sec. 3): one box per pair of patches; inside it the content of one patch, outside it
the other's, for images and (pseudo-)labels alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def copy_paste_boxes(
    batch_size: int, spatial_shape: Sequence[int], fraction: float = 2 / 3, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One box per sample whose side is ``int(fraction * size)`` along every axis, placed uniformly inside the
    patch (the zero region of BCP's mask ``M``, ``beta = 2/3`` of each spatial dimension).

    Args:
        batch_size: B >= 1.
        spatial_shape: the patch size (2 or 3 axes).
        fraction: side of the box relative to the patch, in (0, 1].
        device: where the masks are made.

    Returns:
        (B, 1, *spatial_shape) bool, True inside the box (BCP's ``1 - M``).

    Raises:
        ValueError: ``fraction`` outside (0, 1] or an empty batch.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"box fraction must be in (0, 1], got {fraction}")
    if batch_size < 1:
        raise ValueError(f"need at least one sample, got {batch_size}")
    boxes = torch.zeros((batch_size, 1, *spatial_shape), dtype=torch.bool, device=device)
    for b in range(batch_size):
        index: list[slice] = []
        for size in spatial_shape:
            side = max(1, int(size * fraction))
            start = int(torch.randint(0, size - side + 1, ()))
            index.append(slice(start, start + side))
        boxes[(b, slice(None), *index)] = True
    return boxes


def paste(outer: torch.Tensor, inner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``inner`` inside each sample's box, ``outer`` outside it (BCP: ``outer * M + inner * (1 - M)``).

    Shapes:
        outer, inner: (B, C, *spatial), same shape. boxes: (B, 1, *spatial) bool. Returns (B, C, *spatial).
    """
    if outer.shape != inner.shape or boxes.shape[0] != outer.shape[0] or boxes.shape[2:] != outer.shape[2:]:
        raise ValueError(
            f"cannot paste {tuple(inner.shape)} into {tuple(outer.shape)} with boxes {tuple(boxes.shape)}"
        )
    return torch.where(boxes, inner, outer)
