"""BCP's loss on a copy-pasted image: Dice + cross-entropy on its labeled part and, weighted by alpha, on its
pseudo-labeled part (Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation",
CVPR 2023, Sec. 3)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.losses.masked_cross_entropy import MaskedCrossEntropyLoss
from nnunet_semisup.losses.masked_soft_dice import MaskedSoftDiceLoss


class CopyPasteMixedLoss(nn.Module):
    """``L = ((CE + Dice)[labeled part] + alpha * (CE + Dice)[unlabeled part]) / 2`` of one mixed batch, each
    term a mean over its own part (masked cross-entropy and masked soft Dice).

    BCP weights the part of a mixed image that comes from an unlabeled image (teacher pseudo-labels) by
    ``alpha = 0.5`` and the labeled part by 1, in both directions (``L_in`` and ``L_out``), and halves
    ``CE + Dice`` (BCP's code, ``mix_loss``): ``L_in + L_out`` is then about one nnU-Net loss (CE + Dice with
    weight 1 each) of the batch, so the learning rate keeps its meaning after the pre-training stage.

    Args:
        region_based: nnU-Net's region-based training (sigmoid per region) instead of softmax.
        batch_dice: nnU-Net's ``batch_dice`` of the configuration.
        unlabeled_weight: alpha.

    Shapes:
        logits: (B, C, *spatial). target: (B, 1, *spatial) class indices or (B, C, *spatial) region masks (the
        mixed target: ground truth in the labeled part, pseudo-labels in the other). labeled_part,
        unlabeled_part: (B, 1, *spatial) 0/1 (ignored voxels of the ground truth are 0 in both).
        Returns a float32 scalar.
    """

    def __init__(
        self, region_based: bool = False, batch_dice: bool = True, unlabeled_weight: float = 0.5
    ) -> None:
        super().__init__()
        if unlabeled_weight < 0:
            raise ValueError(f"unlabeled_weight must be >= 0, got {unlabeled_weight}")
        self.unlabeled_weight = unlabeled_weight
        self.ce = MaskedCrossEntropyLoss(region_based, normalization="mask")
        self.dice = MaskedSoftDiceLoss(region_based, batch_dice=batch_dice)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        labeled_part: torch.Tensor,
        unlabeled_part: torch.Tensor,
    ) -> torch.Tensor:
        labeled = self.ce(logits, target, labeled_part) + self.dice(logits, target, labeled_part)
        unlabeled = self.ce(logits, target, unlabeled_part) + self.dice(logits, target, unlabeled_part)
        return (labeled + self.unlabeled_weight * unlabeled) / 2
