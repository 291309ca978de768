"""Contrastive sample construction of SECL (Xiang et al., "Self-Ensembling Contrastive Learning for
Semi-Supervised Medical Image Segmentation"): where to crop the cubes that are contrasted, and which pairs are
positives.

- Anatomical-aware sampling (AACS): cubes centred on the predicted substructures of each image; the pair form
  of InfoNCE (each cube's other view is its positive, every other cube a negative).
- Region-aware sampling (RACS): each image is cut into a grid of regions; the same region of different images
  (roughly aligned images assumed) and of both views are positives, other regions negatives.

Pure torch; works for 2D and 3D (``*spatial`` has 2 or 3 dims).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _as_size(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    size = (size,) * ndim if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != ndim or min(size) < 1:
        raise ValueError(f"expected a size of {ndim} positive ints, got {size}")
    return size


def minimum_crop_size(total_strides: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Smallest crop per axis that an encoder with these total strides can take in training mode.

    Each axis needs at least one bottleneck voxel (``total_stride`` input voxels), and the bottleneck needs at
    least 2 voxels in all (instance normalization refuses a single one in training): the first axis where the
    patch allows it gets twice its stride. Capped at ``patch_size``.
    """
    size = [min(int(s), int(p)) for s, p in zip(total_strides, patch_size)]
    for axis, (stride, patch) in enumerate(zip(total_strides, patch_size)):
        if 2 * stride <= patch:
            size[axis] = 2 * stride
            break
    return tuple(size)


def effective_cube_size(
    cube_size: int | Sequence[int], patch_size: Sequence[int], minimum: Sequence[int]
) -> tuple[int, ...]:
    """The cube size actually used: ``cube_size`` raised to ``minimum`` and capped at the patch, per axis."""
    patch_size = tuple(int(p) for p in patch_size)
    requested = _as_size(cube_size, len(patch_size))
    return tuple(min(max(r, m), p) for r, m, p in zip(requested, minimum, patch_size))


# ---------------------------------------------------------------------------------------------- AACS
def class_centres(seg: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anatomical centre of each class in each image of a (pseudo-)label map.

    The centre is the voxel of the class closest to the class's centroid: the centroid itself can fall outside
    a curved or split structure, the closest class voxel never does.

    Args:
        seg: (B, *spatial) integer label map.
        classes: the C label values to locate.

    Returns:
        centres: (B, C, ndim) long voxel coordinates (-1 where the class is absent).
        present: (B, C) bool, whether the class has at least one voxel in the image.
    """
    if seg.ndim < 2 or seg.is_floating_point():
        raise ValueError(f"expected an integer (B, *spatial) label map, got {seg.dtype} {tuple(seg.shape)}")
    batch, ndim = seg.shape[0], seg.ndim - 1
    centres = torch.full((batch, len(classes), ndim), -1, dtype=torch.long, device=seg.device)
    present = torch.zeros(batch, len(classes), dtype=torch.bool, device=seg.device)
    for b in range(batch):
        for i, label in enumerate(classes):
            coords = (seg[b] == label).nonzero()
            if coords.shape[0] == 0:
                continue
            centroid = coords.float().mean(dim=0)
            centres[b, i] = coords[((coords.float() - centroid) ** 2).sum(dim=1).argmin()]
            present[b, i] = True
    return centres, present


@dataclass
class CubeSlots:
    """Where the K cubes of a contrastive minibatch are cropped.

    Attributes:
        image_index: (K,) long, the image of the batch each cube comes from.
        centres: (K, ndim) long, the voxel each cube is centred on (before clipping to the patch).
        classes: (K,) long, the class each slot stands for.
        anchored: (K,) bool, True where the centre is a voxel of that class, False where the class was absent
            from the image's prediction and the centre is a uniformly random voxel instead.
    """

    image_index: torch.Tensor
    centres: torch.Tensor
    classes: torch.Tensor
    anchored: torch.Tensor


def anatomical_cube_slots(
    seg: torch.Tensor,
    classes: Sequence[int],
    num_cubes: int | None = None,
    generator: torch.Generator | None = None,
) -> CubeSlots:
    """Anatomical-aware cube centres (AACS) from a pseudo-label map.

    Slot ``k`` stands for class ``classes[k % C]`` in image ``order[(k // C) % B]`` (``order`` a random
    permutation of the batch), so any K >= C covers every class, and the default K = B * C gives one cube per
    class and image. The first cube of a (class, image) is centred on the class's anatomical centre
    (:func:`class_centres`); further cubes of the same pair (K > B * C) on random voxels of the class, so no two
    slots crop the same cube.

    A class absent from an image's prediction (common early in training) gets a uniformly random centre in that
    image instead. Why not borrow a present class's centre: that would crop (nearly) the same cube twice, and
    the pair form of InfoNCE would then push two views of the same content apart (a false negative). A random
    cube is an ordinary negative, the minibatch keeps its size K (so the loss scale does not depend on how many
    classes the model already finds), and before the model predicts anything AACS becomes random-cube
    contrastive learning.

    Args:
        seg: (B, *spatial) integer pseudo-label map.
        classes: the C >= 1 foreground labels (substructures).
        num_cubes: K >= C (default B * C).
        generator: a CPU random generator (default: torch's global one); all sampling is drawn on the CPU.

    Returns:
        :class:`CubeSlots` with K slots, on ``seg``'s device.
    """
    batch, spatial = seg.shape[0], seg.shape[1:]
    num_classes = len(classes)
    if num_classes < 1:
        raise ValueError("need at least one class to sample cubes for")
    num_cubes = batch * num_classes if num_cubes is None else int(num_cubes)
    if num_cubes < max(num_classes, 2):
        raise ValueError(
            f"num_cubes must be >= the number of classes ({num_classes}) and >= 2 (a contrastive minibatch "
            f"needs negatives), got {num_cubes}"
        )
    centres_per_class, present = class_centres(seg, classes)
    order = torch.randperm(batch, generator=generator).tolist()
    seg_cpu = seg.cpu()
    image_index, centres, slot_classes, anchored = [], [], [], []
    for k in range(num_cubes):
        c, b = k % num_classes, order[(k // num_classes) % batch]
        first_round = k < batch * num_classes
        if present[b, c] and first_round:
            centre = centres_per_class[b, c].cpu()
        elif present[b, c]:
            coords = (seg_cpu[b] == classes[c]).nonzero()
            centre = coords[torch.randint(coords.shape[0], (1,), generator=generator).item()]
        else:
            centre = torch.stack([torch.randint(s, (1,), generator=generator)[0] for s in spatial])
        image_index.append(b)
        centres.append(centre)
        slot_classes.append(classes[c])
        anchored.append(bool(present[b, c]))
    device = seg.device
    return CubeSlots(
        image_index=torch.tensor(image_index, dtype=torch.long, device=device),
        centres=torch.stack(centres).to(device),
        classes=torch.tensor(slot_classes, dtype=torch.long, device=device),
        anchored=torch.tensor(anchored, dtype=torch.bool, device=device),
    )


def cube_starts(
    centres: torch.Tensor, cube_size: Sequence[int], spatial_shape: Sequence[int]
) -> torch.Tensor:
    """First voxel of cubes of ``cube_size`` centred on ``centres``, shifted to lie inside the patch.

    A cube near the border is shifted inwards, not shrunk or padded: every cube keeps its size (they are
    batched) and still contains its centre.

    Shapes:
        centres: (K, ndim) long. Returns (K, ndim) long.
    """
    size = torch.tensor(_as_size(cube_size, len(spatial_shape)), device=centres.device)
    shape = torch.tensor(tuple(spatial_shape), device=centres.device)
    if (size > shape).any():
        raise ValueError(f"cube size {tuple(size.tolist())} does not fit the patch {tuple(spatial_shape)}")
    return torch.minimum((centres - size // 2).clamp_min(0), shape - size)


def crop_cubes(
    images: torch.Tensor, image_index: torch.Tensor, starts: torch.Tensor, cube_size: Sequence[int]
) -> torch.Tensor:
    """Crop cubes out of a batch of images.

    Shapes:
        images: (B, C, *spatial); image_index: (K,) long; starts: (K, ndim) long.
        Returns (K, C, *cube_size).
    """
    size = _as_size(cube_size, images.ndim - 2)
    if starts.shape != (image_index.shape[0], len(size)):
        raise ValueError(
            f"starts must be (K, {len(size)}) for K = {image_index.shape[0]}, got {starts.shape}"
        )
    cubes = []
    for b, start in zip(image_index.tolist(), starts.tolist()):
        window = tuple(slice(s, s + n) for s, n in zip(start, size))
        cube = images[(b, slice(None), *window)]
        if tuple(cube.shape[1:]) != size:
            raise ValueError(f"cube at {start} of size {size} leaves the patch {tuple(images.shape[2:])}")
        cubes.append(cube)
    return torch.stack(cubes)


# ---------------------------------------------------------------------------------------------- RACS
def fit_region_grid(
    grid: Sequence[int], patch_size: Sequence[int], minimum: Sequence[int]
) -> tuple[int, ...]:
    """The region grid actually used: per axis at most ``patch // minimum`` regions (each region must be a
    valid encoder input, see :func:`minimum_crop_size`), at least 1."""
    grid = _as_size(grid, len(patch_size))
    return tuple(max(1, min(g, int(p) // int(m))) for g, p, m in zip(grid, patch_size, minimum))


def region_grid(
    spatial_shape: Sequence[int], grid: Sequence[int], cube_size: int | Sequence[int] | None = None
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Partition a patch into ``prod(grid)`` equal regions (a remainder at the far border is left out) and
    place one cube in the centre of each.

    Args:
        spatial_shape: the patch size.
        grid: regions per axis.
        cube_size: the cube per region, capped at the region size (default: the whole region).

    Returns:
        starts: (G, ndim) long, first voxel of the cube of region ``s`` (row-major order over the grid).
        size: the size of every cube.
    """
    grid = _as_size(grid, len(spatial_shape))
    region_size = tuple(int(s) // g for s, g in zip(spatial_shape, grid))
    if min(region_size) < 1:
        raise ValueError(f"grid {grid} is finer than the patch {tuple(spatial_shape)}")
    size = (
        region_size
        if cube_size is None
        else tuple(min(c, r) for c, r in zip(_as_size(cube_size, len(grid)), region_size))
    )
    offset = [(r - c) // 2 for r, c in zip(region_size, size)]
    starts = [
        [i * r + o for i, r, o in zip(index, region_size, offset)]
        for index in itertools.product(*(range(g) for g in grid))
    ]
    return torch.tensor(starts, dtype=torch.long), size


def region_masks(region_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of RACS for :class:`~nnunet_semisup.trainers.secl.info_nce_loss.InfoNCELoss`.

    Sample ``i`` is region ``region_ids[i]`` of some image; the candidates are both views of all N samples,
    ``[view a; view b]``. For anchor ``i`` (view a), every candidate of the same region (the same region of
    other images in either view, and its own other view) is a positive, every candidate of another region a
    negative, and the anchor itself neither.

    Shapes:
        region_ids: (N,) integer. Returns positive_mask, negative_mask: (N, 2N) bool.
    """
    if region_ids.ndim != 1 or region_ids.is_floating_point():
        raise ValueError(
            f"expected (N,) integer region ids, got {region_ids.dtype} {tuple(region_ids.shape)}"
        )
    n = region_ids.shape[0]
    same = region_ids[:, None] == region_ids[None, :]
    positive = torch.cat([same, same], dim=1)
    positive[torch.arange(n), torch.arange(n)] = False
    negative = ~torch.cat([same, same], dim=1)
    return positive, negative
