"""CutMix between the unlabeled patches of a batch (Yun et al., ICCV 2019), as the strong view of FixMatch-style
segmentation uses it: images, pseudo-labels and confidences are mixed with one identical box (French et al.,
BMVC 2020; UniMatch, Yang et al., CVPR 2023, Sec. 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def random_boxes(
    batch_size: int,
    spatial_shape: Sequence[int],
    probability: float = 0.5,
    volume_range: tuple[float, float] = (0.02, 0.4),
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One random axis-aligned box per sample (or none, with probability ``1 - probability``).

    UniMatch's medical code (Yang et al., CVPR 2023) draws a 2D box with probability 0.5 whose area is a uniform
    0.02-0.4 of the image and whose aspect ratio is uniform in 0.3-1/0.3. Generalised here to 2 or 3 spatial
    axes: a volume fraction ``v`` uniform in ``volume_range``; every side starts at ``v^(1/d)`` of the patch
    side and is stretched by ``exp(e_i)``, ``e_i`` centred (so the volume is kept) with half the log of a
    uniform aspect ratio from ``aspect_range``; sides are clipped to the patch, the position is uniform inside it.

    Args:
        batch_size: number of samples B.
        spatial_shape: the patch size, 2 or 3 axes.
        probability: chance that a sample gets a box.
        volume_range: (min, max) fraction of the patch volume, within (0, 1].
        aspect_range: (min, max) side-length ratio, positive.
        device: where the masks are made.

    Returns:
        (B, 1, *spatial_shape) bool masks, True inside the box.

    Raises:
        ValueError: an empty batch, a shape that is not 2D/3D, or ranges outside their domain.
    """
    ndim = len(spatial_shape)
    if batch_size < 1 or ndim not in (2, 3):
        raise ValueError(
            f"need B >= 1 and 2 or 3 spatial axes, got B={batch_size}, shape {tuple(spatial_shape)}"
        )
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    if not 0.0 < volume_range[0] <= volume_range[1] <= 1.0:
        raise ValueError(f"volume_range must satisfy 0 < min <= max <= 1, got {volume_range}")
    if not 0.0 < aspect_range[0] <= aspect_range[1]:
        raise ValueError(f"aspect_range must satisfy 0 < min <= max, got {aspect_range}")
    masks = torch.zeros((batch_size, 1, *spatial_shape), dtype=torch.bool, device=device)
    for b in range(batch_size):
        if torch.rand(()) >= probability:
            continue
        volume = float(torch.empty(()).uniform_(*volume_range))
        low, high = math.log(aspect_range[0]), math.log(aspect_range[1])
        stretch = torch.empty(ndim).uniform_(low, high) / 2
        stretch = stretch - stretch.mean()
        slices = [slice(None), slice(None)]
        for axis, size in enumerate(spatial_shape):
            side = round(size * volume ** (1 / ndim) * math.exp(float(stretch[axis])))
            side = min(max(side, 1), size)
            start = int(torch.randint(0, size - side + 1, ()))
            slices.append(slice(start, start + side))
        masks[b][tuple(slices[1:])] = True
    return masks


def cutmix(tensors: Sequence[torch.Tensor], boxes: torch.Tensor, source: torch.Tensor) -> list[torch.Tensor]:
    """Paste, inside each sample's box, the same box of sample ``source[b]`` into every tensor.

    Args:
        tensors: tensors of shape (B, C_i, *spatial) (images, pseudo-labels, confidences, ...), all mixed with the
            same boxes so that pasted voxels keep their own label and confidence.
        boxes: (B, 1, *spatial) bool masks (:func:`random_boxes`).
        source: (B,) long indices of the sample each box is taken from (e.g. ``torch.roll(arange(B), 1)``).

    Returns:
        The mixed tensors, new tensors of the inputs' shapes and dtypes.

    Raises:
        ValueError: a tensor whose batch or spatial shape differs from the boxes'.
    """
    mixed = []
    for tensor in tensors:
        if tensor.shape[0] != boxes.shape[0] or tensor.shape[2:] != boxes.shape[2:]:
            raise ValueError(f"tensor of shape {tuple(tensor.shape)} does not fit boxes {tuple(boxes.shape)}")
        mixed.append(torch.where(boxes, tensor[source], tensor))
    return mixed


def rolled_source(batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[B-1, 0, 1, ..., B-2]``: every sample takes its box from the previous one of the batch (so never from
    itself when B > 1, and the boxes of one batch come from all of its patches)."""
    return torch.roll(torch.arange(batch_size, device=device), 1)
