"""Confident-disagreement regularization L_reg of Karimijafarbigloo, Azad et al., "Leveraging Unlabeled Data for
3D Medical Image Segmentation through Self-Supervised Contrastive Learning" (2023), Eq. 4 and 5."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.precision import full_precision


def _check_probabilities(probs_a: torch.Tensor, probs_b: torch.Tensor) -> None:
    if probs_a.shape != probs_b.shape:
        raise ValueError(
            f"the two subnets' probabilities must have the same shape, got {tuple(probs_a.shape)} and "
            f"{tuple(probs_b.shape)}"
        )
    if probs_a.ndim < 3 or probs_a.shape[1] < 2:
        raise ValueError(
            f"expected (B, K, *spatial) softmax probabilities with K >= 2 classes, got shape {tuple(probs_a.shape)}"
        )


def confident_disagreement_mask(
    probs_a: torch.Tensor, probs_b: torch.Tensor, threshold: float
) -> torch.Tensor:
    """M_diff (Eq. 4): voxels where both subnets are confident (max probability > ``threshold``) and their
    predicted classes (argmax) differ.

    Shapes:
        probs_a, probs_b: (B, K, *spatial) softmax probabilities of subnet A and subnet B.
        Returns a (B, *spatial) bool mask (no gradient).
    """
    _check_probabilities(probs_a, probs_b)
    with torch.no_grad():
        confidence_a, class_a = probs_a.max(1)
        confidence_b, class_b = probs_b.max(1)
        return (confidence_a > threshold) & (confidence_b > threshold) & (class_a != class_b)


class ConfidentDisagreementLoss(nn.Module):
    """L_reg (Eq. 5): the L1 distance between the two subnets' class probabilities, averaged over the voxels of
    M_diff (both confident, different classes; :func:`confident_disagreement_mask`).

    ``L_reg = 1/|M_diff| * sum_{v in M_diff} sum_k |p_A(k|v) - p_B(k|v)|``, and 0 when M_diff is empty (the zero
    still depends on both inputs, so a backward pass through it is valid). Neither input is detached: both
    subnets are pulled towards each other where they confidently disagree.

    Args:
        threshold: default confidence threshold T in (0, 1); ``forward`` can override it per call (the trainers
            schedule T over training).

    Shapes:
        probs_a, probs_b: (B, K, *spatial) softmax probabilities. Returns (scalar loss, (B, *spatial) bool
        M_diff).
    """

    def __init__(self, threshold: float = 0.6) -> None:
        super().__init__()
        self.threshold = self._checked(threshold)

    @staticmethod
    def _checked(threshold: float) -> float:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"confidence threshold T must be in (0, 1), got {threshold}")
        return float(threshold)

    @full_precision  # differences of softmax probabilities: float32
    def forward(
        self, probs_a: torch.Tensor, probs_b: torch.Tensor, threshold: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        threshold = self.threshold if threshold is None else self._checked(threshold)
        probs_a, probs_b = probs_a.float(), probs_b.float()  # also for the comparison with T
        mask = confident_disagreement_mask(probs_a, probs_b, threshold)
        distance = (probs_a - probs_b).abs().sum(1)  # (B, *spatial)
        count = mask.sum()
        if count == 0:
            return distance.sum() * 0.0, mask
        return distance[mask].sum() / count, mask
