"""Consistency loss between two predictions of the same voxels (Mean Teacher, Tarvainen & Valpola 2017)."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_semisup.losses.shape_checks import check_same_dense_shape
from nnunet_semisup.precision import full_precision


class ProbabilityMSELoss(nn.Module):
    """Mean squared error between the class probabilities of a student and a (detached) teacher.

    Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017, use the MSE of softmax
    outputs; the 3D implementations (e.g. UA-MT, Yu et al. 2019) average it over classes and voxels.

    Args:
        activation: ``"softmax"`` over the class channel (default) or ``"sigmoid"`` per channel (nnU-Net's
            region-based training). Deliberately not a callable: nnU-Net's ``apply_inference_nonlin`` runs
            without gradient and over dim 0, which would silently switch this loss off.

    Shapes:
        student_logits, teacher_logits: (B, C, *spatial), same shape.
        mask (optional): (B, 1, *spatial) or (B, *spatial), 1 where a voxel counts.
        Returns a scalar. The teacher side never receives a gradient.
    """

    def __init__(self, activation: str = "softmax") -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.activation = activation

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, 1) if self.activation == "softmax" else torch.sigmoid(logits)

    @full_precision
    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_same_dense_shape(student_logits, teacher_logits, "student logits", "teacher logits")
        # float32 for the squared differences: under AMP half-precision probabilities lose the small
        # differences that this loss is made of.
        student = self._probabilities(student_logits.float())
        with torch.no_grad():
            teacher = self._probabilities(teacher_logits.detach().float())
        squared = (student - teacher) ** 2
        if mask is None:
            return squared.mean()
        if mask.ndim == student.ndim - 1:
            mask = mask[:, None]
        if mask.shape[0] != squared.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != squared.shape[2:]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not fit logits {tuple(squared.shape)}")
        mask = mask.to(squared.dtype)
        denominator = mask.sum() * squared.shape[1]
        return (squared * mask).sum() / denominator.clamp_min(1.0)
