"""Signed distance maps (SDM) of binary masks, and the SDM -> mask transform of DTML.

Zhang & Zhang, "Dual-Task Mutual Learning for Semi-Supervised Medical Image Segmentation" (PRCV 2021),
Eq. 1 and Eq. 2; public code: github.com/YichiZhang98/DTML.

Sign convention (Eq. 1): negative inside the object, 0 on its boundary, positive outside; the magnitude is
the distance to the nearest boundary voxel. The boundary is the object's inner boundary: foreground voxels
with a background voxel among their face neighbours (6-connectivity in 3D). The patch border is not a
boundary: an object cut by the patch edge keeps growing its inside distance up to the edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from nnunet_semisup.precision import full_precision


def _boundary(masks: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Inner boundaries of a stack of masks (..., *spatial), computed for the whole stack in one call."""
    cross = generate_binary_structure(spatial_dims, 1)
    # no extent along the leading (stack) axes: each mask is eroded on its own
    structure = cross.reshape((1,) * (masks.ndim - spatial_dims) + cross.shape)
    # border_value=1: the patch edge is not the object's boundary
    return masks & ~binary_erosion(masks, structure=structure, border_value=1)


def signed_distance_map(
    masks: np.ndarray | torch.Tensor,
    spatial_dims: int = 3,
    spacing: Sequence[float] | None = None,
    normalize: bool = True,
) -> np.ndarray | torch.Tensor:
    """Signed distance map of every binary mask in a stack (Eq. 1 of DTML), optionally normalized.

    One exact Euclidean distance transform per mask (scipy), no per-voxel Python work.

    Normalization (``normalize=True``, as the common SDM implementations of DTML, DTC and SASSNet): each mask's
    inside values are divided by their largest magnitude and its outside values by theirs, so the map spans
    [-1, 1] with -1 at the deepest interior voxel and +1 at the farthest outside voxel.

    Masks without a boundary (documented convention): a mask with no foreground voxel is "outside everywhere",
    +1 (``+inf`` unnormalized); a mask that fills the patch is "inside everywhere", -1 (``-inf`` unnormalized).
    Then ``sdm_to_mask`` of the normalized map gives back the mask itself (the reference code writes 0 for an
    absent class, whose mask would be 0.5).

    Args:
        masks: (..., *spatial) boolean (or 0/1) masks, e.g. (B, C, X, Y, Z) with one channel per class.
        spatial_dims: how many trailing dimensions are spatial (3 for volumes, 2 for images).
        spacing: voxel spacing along the spatial dimensions (distances in those units); None = 1 voxel.
        normalize: scale to [-1, 1] as described above.

    Returns:
        float32 map of the same shape as ``masks``, numpy or torch (same device) as given.
    """
    if masks.ndim < spatial_dims:
        raise ValueError(
            f"masks must have at least spatial_dims={spatial_dims} dimensions, got shape {tuple(masks.shape)}"
        )
    if spacing is not None and len(spacing) != spatial_dims:
        raise ValueError(f"spacing must have {spatial_dims} values, got {list(spacing)}")
    is_tensor = isinstance(masks, torch.Tensor)
    array = masks.detach().cpu().numpy() if is_tensor else np.asarray(masks)
    array = array.astype(bool, copy=False)
    spatial_shape = array.shape[array.ndim - spatial_dims :]
    stack = array.reshape((-1, *spatial_shape))

    boundaries = _boundary(stack, spatial_dims)
    result = np.empty(stack.shape, dtype=np.float32)
    for i, (mask, boundary) in enumerate(zip(stack, boundaries)):
        if (
            not boundary.any()
        ):  # empty mask or a mask filling the patch (a non-empty mask has a boundary else)
            result[i] = -1.0 if mask.any() else 1.0
            if not normalize:
                result[i] *= np.inf
            continue
        distance = distance_transform_edt(~boundary, sampling=spacing).astype(np.float32)
        if normalize:
            # a boundary implies both inside and outside voxels; the outside maximum is > 0, the inside one
            # is 0 for a mask made of boundary voxels only (its inside stays 0)
            distance[mask] /= max(distance[mask].max(), np.float32(1e-12))
            distance[~mask] /= distance[~mask].max()
        result[i] = np.where(mask, -distance, distance)
    result = result.reshape(array.shape)
    if is_tensor:
        return torch.from_numpy(result).to(masks.device)
    return result


@full_precision
def sdm_to_mask(sdm: torch.Tensor, k: float = 1500.0) -> torch.Tensor:
    """Soft mask ``sigmoid(-k * sdm)`` of a (predicted) signed distance map (Eq. 2 of DTML as implemented).

    Eq. 2 as printed in the paper, ``1 / (1 + exp(-k z))``, would map the inside (negative under Eq. 1) to 0;
    the authors' code (train_la_dtml.py: ``torch.sigmoid(-1500 * outputs_dis)``) uses ``sigmoid(-k z)``, which
    maps inside to 1, and so does this function.

    Args:
        sdm: (B, C, *spatial) signed distance map, negative inside (any float dtype).
        k: steepness; 1500 in the authors' code. Must be positive.

    Returns:
        float32 tensor of the same shape with values in [0, 1] (0.5 on the boundary).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    # float32: the losses built on this mask are computed in full precision under AMP
    return torch.sigmoid(-k * sdm.float())
