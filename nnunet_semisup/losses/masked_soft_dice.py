"""Soft Dice loss restricted to weighted voxels: the Dice half of BCP's region-masked loss (Bai et al., CVPR 2023,
Sec. 3) and of confidence-masked pseudo-label losses (UniMatch's medical code: Dice on confident pixels)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.losses.shape_checks import check_masked_loss_inputs


class MaskedSoftDiceLoss(nn.Module):
    """``1 - mean_c (2 sum_v w p_c t_c + s) / (sum_v w p_c + sum_v w t_c + s)``: nnU-Net's soft Dice
    (``MemoryEfficientSoftDiceLoss``: same smoothing, batch Dice option, background excluded with softmax) in
    which every voxel counts with its weight ``w`` (0 = left out, e.g. an unconfident pseudo-label, an ignored
    or a pasted voxel).

    Returned as ``1 - Dice`` (nnU-Net returns ``-Dice``; the gradient is the same) so that a logged value reads
    as a loss in [0, 1].

    Args:
        region_based: False = softmax over classes, Dice of the foreground classes (nnU-Net's ``do_bg=False``);
            True = sigmoid per region, Dice of every region (nnU-Net's region-based setting).
        batch_dice: sum over the batch before the ratio (nnU-Net's ``batch_dice`` of the configuration), else
            one Dice per sample, averaged.
        smooth: added to numerator and denominator (nnU-Net: 1e-5).

    Shapes:
        logits: (B, C, *spatial). target: (B, 1, *spatial) class indices or (B, C, *spatial) region masks.
        weight: (B, 1, *spatial) or (B, C, *spatial) (region-based), in [0, 1]. Returns a float32 scalar.

    Raises:
        ValueError: shapes that do not fit, or label-based logits with a single channel.
    """

    def __init__(self, region_based: bool = False, batch_dice: bool = True, smooth: float = 1e-5) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.region_based = region_based
        self.batch_dice = batch_dice
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        check_masked_loss_inputs(logits, target, weight, self.region_based)
        n_classes = logits.shape[1]
        weight = weight.float()
        if self.region_based:
            probabilities = torch.sigmoid(logits.float())
            one_hot = target.float()
        else:
            if n_classes < 2:
                raise ValueError("softmax Dice needs at least two classes (background and one foreground)")
            probabilities = torch.softmax(logits.float(), 1)[:, 1:]
            indices = torch.where(weight > 0, target, torch.zeros_like(target)).long()
            one_hot = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, indices, 1.0)[:, 1:]
        axes = tuple(range(2, logits.ndim))
        if self.batch_dice:
            axes = (0, *axes)
        intersection = (probabilities * one_hot * weight).sum(axes)
        predicted = (probabilities * weight).sum(axes)
        reference = (one_hot * weight).sum(axes)
        dice = (2 * intersection + self.smooth) / (predicted + reference + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()
