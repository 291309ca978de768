"""Regression loss between a predicted and a target signed distance map (DTML's L_dis)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.losses.shape_checks import check_same_dense_shape
from nnunet_semisup.precision import full_precision


class SDMRegressionLoss(nn.Module):
    """Mean squared error between predicted and target (normalized) signed distance maps.

    Zhang & Zhang, "Dual-Task Mutual Learning for Semi-Supervised Medical Image Segmentation", PRCV 2021:
    L_dis, the L2 regression of the signed distance map (Table 1; the paper's best setting uses L_mask instead,
    see :class:`~nnunet_semisup.trainers.dtml.sdm_mask_dice_loss.SDMMaskDiceLoss`). Voxels with an unknown label are left
    out through ``valid``.

    Shapes:
        sdm_prediction: (B, C, *spatial) predicted signed distance maps in [-1, 1].
        sdm_target: (B, C, *spatial) targets from :func:`~nnunet_semisup.trainers.dtml.signed_distance.signed_distance_map`.
        valid (optional): (B, 1, *spatial) 0/1, 0 where the label is unknown (nnU-Net's ignore label).
        Returns a float32 scalar (0 when no voxel is valid).
    """

    @full_precision  # squared SDM errors are small near the boundary: float32
    def forward(
        self, sdm_prediction: torch.Tensor, sdm_target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_same_dense_shape(sdm_prediction, sdm_target, "SDM prediction", "target")
        squared = (sdm_prediction.float() - sdm_target.float()) ** 2
        if valid is None:
            return squared.mean()
        if valid.shape[0] != squared.shape[0] or valid.shape[1] != 1 or valid.shape[2:] != squared.shape[2:]:
            raise ValueError(
                f"valid mask must be (B, 1, *spatial) = {(squared.shape[0], 1, *squared.shape[2:])}, "
                f"got {tuple(valid.shape)}"
            )
        valid = valid.to(squared.dtype)
        return (squared * valid).sum() / (valid.sum() * squared.shape[1]).clamp_min(1.0)
