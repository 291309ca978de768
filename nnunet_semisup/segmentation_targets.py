"""Voxel targets for pseudo-label training on nnU-Net's outputs: hard pseudo-labels with confidences, nnU-Net's
labeled targets split into labels and an annotated mask (ignore label), and nnU-Net's deep-supervision
downsampling applied to such targets.

Both of nnU-Net's target formats are handled:

- label-based training (softmax over classes): a (B, 1, *spatial) map of class indices, the ignore label (if the
  dataset declares one) as the highest value;
- region-based training (one sigmoid per region): (B, R, *spatial) binary region masks, plus a last channel that
  marks ignored voxels when the dataset declares an ignore label (nnU-Net's ``ConvertSegmentationToRegionsTransform``
  appends it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def pseudo_labels(logits: torch.Tensor, region_based: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and their confidences from a network's logits (FixMatch's ``argmax q_b`` and
    ``max q_b``; Sohn et al., NeurIPS 2020, Sec. 2).

    Args:
        logits: (B, C, *spatial) logits (any floating dtype; computed in float32).
        region_based: False = softmax over C classes; True = one sigmoid per region (nnU-Net's region-based
            training), thresholded at 0.5.

    Returns:
        ``labels``: (B, 1, *spatial) class indices as float (label-based) or (B, R, *spatial) 0/1 region masks
        (region-based), the layout of nnU-Net's targets; ``confidence``: same shape, the maximum softmax
        probability, or ``max(p, 1 - p)`` per region.

    Raises:
        ValueError: logits without a channel and a spatial axis.
    """
    if logits.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) logits, got shape {tuple(logits.shape)}")
    logits = logits.detach().float()
    if region_based:
        probabilities = torch.sigmoid(logits)
        labels = (probabilities > 0.5).float()
        return labels, torch.maximum(probabilities, 1 - probabilities)
    confidence, labels = torch.softmax(logits, 1).max(1, keepdim=True)
    return labels.float(), confidence


def split_annotated(
    target: torch.Tensor, region_based: bool, ignore_label: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """nnU-Net's training target as labels and a mask of annotated voxels (nnU-Net's ignore label).

    Args:
        target: (B, 1, *spatial) label map (label-based), or (B, R [+1 if ``ignore_label``], *spatial) region
            masks (region-based), as nnU-Net's loader delivers them at one deep-supervision scale.
        region_based: the dataset's training mode (``label_manager.has_regions``).
        ignore_label: ``label_manager.ignore_label`` (None: every voxel is annotated).

    Returns:
        ``labels``: (B, 1, *spatial) with ignored voxels set to 0 (background), or (B, R, *spatial) region masks
        without the ignore channel; ``annotated``: (B, 1, *spatial) float, 1 where the label is known.
    """
    if region_based:
        if ignore_label is not None:
            return target[:, :-1].float(), 1.0 - target[:, -1:].float()
        return target.float(), torch.ones_like(target[:, :1], dtype=torch.float32)
    if ignore_label is None:
        return target.float(), torch.ones_like(target, dtype=torch.float32)
    annotated = (target != ignore_label).float()
    return target.float() * annotated, annotated


def downsample_for_deep_supervision(
    tensor: torch.Tensor, scales: Sequence[Sequence[float]]
) -> list[torch.Tensor]:
    """``tensor`` at every deep-supervision scale, as nnU-Net downsamples its targets
    (batchgeneratorsv2's ``DownsampleSegForDSTransform``: ``nearest-exact`` interpolation to
    ``round(size * scale)`` per axis, the full-resolution tensor itself where the scale is 1).

    Used for pseudo-labels, confidences and masks, so every output level of the network is trained on the same
    voxels nnU-Net's own downsampled targets would describe.

    Args:
        tensor: (B, C, *spatial).
        scales: one scale per output level, each a sequence of one factor per spatial axis (nnU-Net's
            ``_get_deep_supervision_scales()``).

    Returns:
        One tensor per scale, (B, C, *round(spatial * scale)), same dtype.
    """
    results = []
    for scale in scales:
        if len(scale) != tensor.ndim - 2:
            raise ValueError(f"scale {tuple(scale)} does not fit a tensor of shape {tuple(tensor.shape)}")
        if all(s == 1 for s in scale):
            results.append(tensor)
            continue
        size = [round(n * s) for n, s in zip(tensor.shape[2:], scale)]
        results.append(F.interpolate(tensor.float(), size, mode="nearest-exact").to(tensor.dtype))
    return results


def split_outputs(
    output: torch.Tensor | Sequence[torch.Tensor], sizes: Sequence[int]
) -> list[torch.Tensor | list[torch.Tensor]]:
    """The network's output for a concatenated batch, split back into its parts along the batch axis.

    Args:
        output: (B, C, *spatial) logits, or a list of those per deep-supervision level (full resolution first).
        sizes: the batch sizes of the parts, summing to B.

    Returns:
        One entry per part, each a tensor or a list of levels like ``output``.
    """
    if isinstance(output, (list, tuple)):
        per_level = [level.split(list(sizes)) for level in output]
        return [[levels[i] for levels in per_level] for i in range(len(sizes))]
    return list(output.split(list(sizes)))


def full_resolution(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a network output (the first deep-supervision level, or the tensor)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def deep_supervised_loss(
    loss: Callable[..., torch.Tensor],
    output: torch.Tensor | Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    scales: Sequence[Sequence[float]] | None,
    weights: Sequence[float] | None,
) -> torch.Tensor:
    """``loss(logits, *targets)`` at every output level, the targets downsampled as nnU-Net downsamples its own
    (:func:`downsample_for_deep_supervision`), summed with nnU-Net's level weights (``DeepSupervisionWrapper``:
    ``1/2^i``, the lowest level 0, normalized; levels of weight 0 are skipped).

    Args:
        loss: called as ``loss(logits, *targets_at_that_level)``, returns a scalar.
        output: (B, C, *spatial) logits (no deep supervision: ``loss`` once, at full resolution) or a list of
            levels, full resolution first.
        targets: full-resolution (B, C_i, *spatial) tensors (labels, masks, weights).
        scales, weights: nnU-Net's ``_get_deep_supervision_scales()`` and its loss wrapper's ``weight_factors``
            (ignored without deep supervision).

    Returns:
        The weighted sum, a scalar.
    """
    if not isinstance(output, (list, tuple)):
        return loss(output, *targets)
    if scales is None or weights is None or len(scales) != len(output) or len(weights) != len(output):
        raise ValueError(f"need one scale and one weight per output level ({len(output)} levels)")
    per_target = [downsample_for_deep_supervision(t, scales) for t in targets]
    total = None
    for level, (logits, weight) in enumerate(zip(output, weights)):
        if weight == 0:
            continue
        term = weight * loss(logits, *(t[level] for t in per_target))
        total = term if total is None else total + term
    return total
