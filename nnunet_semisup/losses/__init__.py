"""Losses, one per file."""

from nnunet_semisup.losses.consistency import ProbabilityMSELoss

__all__ = ["ProbabilityMSELoss"]
