"""Soft Dice loss on the mask implied by a predicted signed distance map (DTML's L_mask)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.losses.shape_checks import check_same_dense_shape
from nnunet_semisup.precision import full_precision
from nnunet_semisup.trainers.dtml.signed_distance import sdm_to_mask


class SDMMaskDiceLoss(nn.Module):
    """``1 - soft Dice(sigmoid(-k * sdm_pred), labels)``, one Dice per foreground channel, averaged.

    Zhang & Zhang, "Dual-Task Mutual Learning for Semi-Supervised Medical Image Segmentation", PRCV 2021:
    L_mask, supervision of the distance network through its implied mask (the paper's best choice, Table 1).
    The authors' code uses a soft Dice loss (smooth 1e-5) on ``sigmoid(-1500 * sdm)``; here it is extended to
    one channel per foreground class, with nnU-Net's choice between per-sample and batch Dice.

    Args:
        k: steepness of the SDM -> mask transform (1500 in the authors' code).
        batch_dice: pool the batch into one Dice per channel (nnU-Net's ``batch_dice`` of the plans)
            instead of one Dice per sample and channel.
        smooth: added to numerator and denominator (1e-5 in the authors' code and in nnU-Net).

    Shapes:
        sdm_prediction: (B, C, *spatial) predicted signed distance maps (negative inside).
        target: (B, C, *spatial) 0/1 foreground masks, one channel per foreground class or region.
        valid (optional): (B, 1, *spatial) 0/1, 0 where the label is unknown (nnU-Net's ignore label).
        Returns a float32 scalar in [0, 1].
    """

    def __init__(self, k: float = 1500.0, batch_dice: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.k = k
        self.batch_dice = batch_dice
        self.smooth = smooth

    @full_precision  # sigmoid(-k * SDM) with k = 1500 is a near step: float32
    def forward(
        self, sdm_prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_same_dense_shape(sdm_prediction, target, "SDM prediction", "target masks")
        probabilities = sdm_to_mask(sdm_prediction, self.k)
        target = target.float()
        if valid is not None:
            if (
                valid.shape[0] != target.shape[0]
                or valid.shape[1] != 1
                or valid.shape[2:] != target.shape[2:]
            ):
                raise ValueError(
                    f"valid mask must be (B, 1, *spatial) = {(target.shape[0], 1, *target.shape[2:])}, "
                    f"got {tuple(valid.shape)}"
                )
            valid = valid.float()
            probabilities = probabilities * valid
            target = target * valid
        axes = tuple(range(2, target.ndim))
        if self.batch_dice:
            axes = (0, *axes)
        intersection = (probabilities * target).sum(axes)
        denominator = probabilities.sum(axes) + target.sum(axes)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()
