"""Reconstruction loss of the winner-take-all autoencoders (Sital et al.; Huber loss, delta = 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semisup.losses.shape_checks import check_same_dense_shape


class WTAReconstructionLoss(nn.Module):
    """Huber loss (smooth L1 with delta = 1) between a reconstruction and its target, averaged over all entries.

    Sital et al., "3D medical image segmentation with labeled and unlabeled data using autoencoders at the
    example of liver segmentation in CT images", train their WTA autoencoders with the Huber loss (delta = 1):
    quadratic for small errors, linear for large ones (outliers such as bright bone in CT weigh less than in MSE).

    Args:
        delta: the Huber threshold, > 0 (1 in the paper).

    Shapes:
        reconstruction, target: (B, C, *spatial), same shape. Returns a scalar (float32, also under AMP).
        The target gets no gradient.
    """

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.delta = float(delta)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_same_dense_shape(reconstruction, target, "reconstruction", "target")
        return F.huber_loss(reconstruction.float(), target.detach().float(), delta=self.delta)
