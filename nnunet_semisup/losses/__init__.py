"""Losses, one per file."""

from nnunet_semisup.losses.consistency import ProbabilityMSELoss
from nnunet_semisup.losses.dual_task_consistency import DualTaskConsistencyLoss
from nnunet_semisup.losses.sdm_mask_dice import SDMMaskDiceLoss
from nnunet_semisup.losses.sdm_regression import SDMRegressionLoss
from nnunet_semisup.losses.wta_reconstruction import WTAReconstructionLoss

__all__ = [
    "DualTaskConsistencyLoss",
    "ProbabilityMSELoss",
    "SDMMaskDiceLoss",
    "SDMRegressionLoss",
    "WTAReconstructionLoss",
]
