"""Dual-task consistency between a segmentation and a signed-distance prediction (DTML, Eq. 4)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.losses.shape_checks import check_same_dense_shape
from nnunet_semisup.precision import full_precision
from nnunet_semisup.trainers.dtml.signed_distance import sdm_to_mask


class DualTaskConsistencyLoss(nn.Module):
    """``mean((p_seg - sigmoid(-k * sdm_pred))^2)``: the segmentation network's foreground probabilities
    against the soft mask of the distance network's signed distance map.

    Zhang & Zhang, "Dual-Task Mutual Learning for Semi-Supervised Medical Image Segmentation", PRCV 2021,
    Eq. 4 (``L_con = || f_seg(X) - f_mask^-1(f_dis(X)) ||^2``), averaged over classes and voxels as in the
    authors' code. Neither side is detached: the loss is mutual, both networks receive its gradient (Eq. 5, 6).

    Args:
        k: steepness of the SDM -> mask transform ``sigmoid(-k z)`` (1500 in the authors' code).

    Shapes:
        seg_probabilities: (B, C, *spatial) foreground probabilities of the segmentation network (one channel
            per foreground class or region; softmax or sigmoid already applied).
        sdm_prediction: (B, C, *spatial) predicted signed distance maps (negative inside), same shape.
        Returns a float32 scalar.
    """

    def __init__(self, k: float = 1500.0) -> None:
        super().__init__()
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = k

    @full_precision  # sigmoid(-k * SDM) with k = 1500 is a near step: float32
    def forward(self, seg_probabilities: torch.Tensor, sdm_prediction: torch.Tensor) -> torch.Tensor:
        check_same_dense_shape(
            seg_probabilities, sdm_prediction, "segmentation probabilities", "SDM prediction"
        )
        return ((seg_probabilities.float() - sdm_to_mask(sdm_prediction, self.k)) ** 2).mean()
