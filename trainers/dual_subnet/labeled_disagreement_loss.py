"""The "mistake" term that the public code of Karimijafarbigloo, Azad et al. (github.com/xmindflow/SSL-contrastive,
``train_LA.py``) adds to each subnet's supervised loss: on the *labeled* patches, where exactly one of the two
subnets confidently predicts foreground (or they confidently predict different foreground classes), the squared
error between the subnet's foreground probabilities and the label. The paper's L_reg (Eq. 4-5) is instead an L1
between the two subnets on unlabeled voxels (:mod:`nnunet_semisup.trainers.dual_subnet.confident_disagreement_loss`); this file
exists for the variant that trains as the public code does (see README, DualSubnetContrastTrainer)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.precision import full_precision


def confident_foreground(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each voxel's confidently predicted foreground class: the argmax class where it is a foreground class
    (> 0) with probability >= ``threshold``, else 0.

    Shapes:
        probabilities: (B, K, *spatial) softmax probabilities. Returns (B, *spatial) long.
    """
    confidence, predicted = probabilities.max(1)
    return torch.where((predicted > 0) & (confidence >= threshold), predicted, torch.zeros_like(predicted))


def confident_foreground_disagreement_mask(
    probs_a: torch.Tensor, probs_b: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Voxels whose confident foreground class (:func:`confident_foreground`) differs between the subnets. With
    two classes this is the public code's ``(A fg & p_A >= T) XOR (B fg & p_B >= T)``.

    Shapes:
        probs_a, probs_b: (B, K, *spatial). Returns a (B, *spatial) bool mask (no gradient).
    """
    if probs_a.shape != probs_b.shape or probs_a.ndim < 3 or probs_a.shape[1] < 2:
        raise ValueError(
            f"expected two (B, K, *spatial) probability tensors of one shape with K >= 2, got "
            f"{tuple(probs_a.shape)} and {tuple(probs_b.shape)}"
        )
    with torch.no_grad():
        return confident_foreground(probs_a, threshold) != confident_foreground(probs_b, threshold)


class LabeledDisagreementLoss(nn.Module):
    """Mean over the masked voxels of ``sum_{k>=1} (p(k|v) - [y(v) = k])^2`` (the public code's softmax-MSE of the
    foreground channel, for any number of classes); voxels carrying ``ignore_index`` in the label never count;
    0 (still attached to ``probabilities``) when no voxel is masked.

    Shapes:
        probabilities: (B, K, *spatial) of the subnet being trained; labels: (B, 1, *spatial) or (B, *spatial)
        integer; mask: (B, *spatial) bool. Returns a scalar.
    """

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    @full_precision  # differences of softmax probabilities: float32
    def forward(self, probabilities: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if labels.ndim == probabilities.ndim:
            labels = labels[:, 0]
        labels = labels.long()
        if labels.shape != mask.shape or probabilities.shape[:1] + probabilities.shape[2:] != mask.shape:
            raise ValueError(
                f"shapes do not match: probabilities {tuple(probabilities.shape)}, labels {tuple(labels.shape)}, "
                f"mask {tuple(mask.shape)}"
            )
        if self.ignore_index is not None:
            mask = mask & (labels != self.ignore_index)
            labels = torch.where(labels == self.ignore_index, torch.zeros_like(labels), labels)
        one_hot = torch.zeros_like(probabilities).scatter_(1, labels.unsqueeze(1), 1.0)
        squared = (probabilities[:, 1:].float() - one_hot[:, 1:].float()).pow(2).sum(1)  # (B, *spatial)
        count = mask.sum()
        if count == 0:
            return squared.sum() * 0.0
        return squared[mask].sum() / count
