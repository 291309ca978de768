"""Cross-entropy on weighted voxels: FixMatch's confidence-masked unlabeled loss (Sohn et al., NeurIPS 2020,
loss l_u) and BCP's region-masked loss (Bai et al., CVPR 2023, Sec. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semisup.losses.shape_checks import check_masked_loss_inputs

NORMALIZATIONS = ("all", "mask")


class MaskedCrossEntropyLoss(nn.Module):
    """``sum_v w_v H(y_v, p_v) / N``: per-voxel cross-entropy weighted by ``w`` (0 = the voxel does not count).

    FixMatch's unlabeled loss ``1/(mu B) sum_b 1(max q_b >= tau) H(q^_b, p(y | A(u_b)))`` (Sohn et al., NeurIPS
    2020, Sec. 2) divides by *all* unlabeled samples, confident or not: ``normalization="all"`` does that with
    voxels, so the loss shrinks when few voxels are confident instead of growing the weight of those few
    (UniMatch, Yang et al., CVPR 2023, Sec. 3, divides by all pixels too). BCP's losses on the labeled and the
    unlabeled part of a mixed image (Bai et al., CVPR 2023, Sec. 3) are means over that part:
    ``normalization="mask"`` divides by ``sum w``.

    Args:
        region_based: False = softmax cross-entropy over classes (target: class indices); True = binary
            cross-entropy per region with sigmoid (nnU-Net's region-based training; target: 0/1 masks).
        normalization: ``"all"`` (N = number of voxels, times regions if region-based) or ``"mask"``
            (N = sum of the weights; 0 when no voxel counts).

    Shapes:
        logits: (B, C, *spatial). target: (B, 1, *spatial) class indices (any dtype; values of voxels whose
        weight is 0 are not read, e.g. the ignore label) or (B, C, *spatial) region masks. weight: (B, 1,
        *spatial) or (B, C, *spatial) (region-based), in [0, 1]. Returns a float32 scalar.

    Raises:
        ValueError: unknown normalization or shapes that do not fit.
    """

    def __init__(self, region_based: bool = False, normalization: str = "all") -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.region_based = region_based
        self.normalization = normalization

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        check_masked_loss_inputs(logits, target, weight, self.region_based)
        weight = weight.float()
        # float32: under AMP a half-precision log-softmax loses the small probabilities of confident voxels
        logits = logits.float()
        if self.region_based:
            per_voxel = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
            weight = weight.expand_as(per_voxel)
        else:
            indices = torch.where(weight > 0, target, torch.zeros_like(target)).long()[:, 0]
            per_voxel = F.cross_entropy(logits, indices, reduction="none")[:, None]
        total = (per_voxel * weight).sum()
        if self.normalization == "all":
            return total / per_voxel.numel()
        return total / weight.sum().clamp_min(1e-8)
