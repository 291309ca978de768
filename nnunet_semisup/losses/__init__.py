"""Losses that several methods use, one per file (a method's own losses live in its trainers/<method>/ folder)."""

from nnunet_semisup.losses.consistency import ProbabilityMSELoss

__all__ = ["ProbabilityMSELoss"]
