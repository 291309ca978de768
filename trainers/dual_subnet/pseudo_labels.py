"""Pseudo-labels of a two-subnet model on unlabeled patches: which subnet labels (the one with the lower supervised
loss) and which voxels are reliable (voxel-level entropy filtering). Karimijafarbigloo, Azad et al., "Leveraging
Unlabeled Data for 3D Medical Image Segmentation through Self-Supervised Contrastive Learning" (2023), Eq. 2-3."""

from __future__ import annotations

import math

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_semisup.precision import full_precision


def select_pseudo_label_source(supervised_losses: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> int:
    """Index of the subnet whose supervised loss L_s on the current labeled batch is the lowest (the paper's
    "better" subnet, which gives the pseudo-labels); ties go to the first.

    Shapes:
        supervised_losses: one scalar per subnet. Returns a Python int.
    """
    if len(supervised_losses) == 0:
        raise ValueError("need the supervised loss of at least one subnet")
    values = [float(torch.as_tensor(loss).detach().float()) for loss in supervised_losses]
    finite = [v if math.isfinite(v) else math.inf for v in values]
    return min(range(len(finite)), key=finite.__getitem__)


@full_precision  # p log p of small probabilities ranks the voxels: float32
def voxel_entropy(probabilities: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Shannon entropy ``-sum_k p_k log p_k`` of every voxel's class distribution.

    Shapes:
        probabilities: (B, K, *spatial), summing to 1 over dim 1. Returns (B, *spatial) float32.
    """
    p = probabilities.float()
    return -(p * torch.log(p + eps)).sum(1)


def _keep_lowest(values: torch.Tensor, drop_fraction: float) -> torch.Tensor:
    """(N,) bool: all but the ``floor(drop_fraction * N)`` largest of ``values`` (ties: later positions dropped)."""
    keep = torch.ones_like(values, dtype=torch.bool)
    num_dropped = math.floor(drop_fraction * values.numel())
    if num_dropped > 0:
        order = torch.sort(values, stable=True).indices
        keep[order[values.numel() - num_dropped :]] = False
    return keep


def entropy_reliability_mask(
    probabilities: torch.Tensor, drop_fraction: float, per_class: bool = True
) -> torch.Tensor:
    """Voxel-level entropy filtering: the ``drop_fraction`` of the voxels with the highest entropy are
    unreliable, the rest reliable. Exactly ``n - floor(drop_fraction * n)`` of n voxels are kept (ties broken by
    position), so the kept fraction does not depend on how many voxels share an entropy value.

    ``per_class=True`` ranks the voxels of each predicted class (argmax) separately, over the whole batch: every
    class keeps the same share of its voxels. ``per_class=False`` ranks all voxels of the batch together, as the
    authors' code takes one entropy percentile over the batch; with a small foreground (hippocampus: ~3 % of a
    patch) every foreground voxel is then less certain than the far background and all are dropped, so the
    pseudo-labels hold background only (see README).

    Shapes:
        probabilities: (B, K, *spatial). Returns a (B, *spatial) bool mask, True = reliable (no gradient).
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    with torch.no_grad():
        entropy = voxel_entropy(probabilities).flatten()
        if not per_class:
            return _keep_lowest(entropy, drop_fraction).view(
                probabilities.shape[:1] + probabilities.shape[2:]
            )
        predicted = probabilities.argmax(1).flatten()
        reliable = torch.zeros_like(entropy, dtype=torch.bool)
        for k in range(probabilities.shape[1]):
            members = torch.nonzero(predicted == k, as_tuple=True)[0]
            if members.numel():
                reliable[members] = _keep_lowest(entropy[members], drop_fraction)
        return reliable.view(probabilities.shape[:1] + probabilities.shape[2:])


def filtered_pseudo_labels(
    probabilities: torch.Tensor, drop_fraction: float, ignore_index: int, per_class: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (argmax) of the labelling subnet, with unreliable voxels
    (:func:`entropy_reliability_mask`) set to ``ignore_index``.

    Shapes:
        probabilities: (B, K, *spatial). Returns labels (B, 1, *spatial) long (nnU-Net's target layout) and the
        (B, *spatial) bool reliability mask; no gradient.
    """
    if 0 <= ignore_index < probabilities.shape[1]:
        raise ValueError(
            f"ignore_index {ignore_index} is one of the {probabilities.shape[1]} classes: use a value outside "
            f"0..{probabilities.shape[1] - 1}"
        )
    with torch.no_grad():
        reliable = entropy_reliability_mask(probabilities, drop_fraction, per_class)
        labels = probabilities.argmax(1)
        labels = torch.where(reliable, labels, torch.full_like(labels, ignore_index))
        return labels.unsqueeze(1), reliable


def pseudo_label_loss(ignore_index: int, batch_dice: bool, ddp: bool = False) -> DC_and_CE_loss:
    """L_u's Dice + CE (Eq. 2): nnU-Net's ``DC_and_CE_loss`` as nnU-Net builds it for labeled data (soft Dice
    without background, smooth 1e-5, equal weights), with the unreliable voxels' ``ignore_index`` masked out of
    both terms.

    Shapes (of the returned loss): logits (B, K, *spatial), pseudo-labels (B, 1, *spatial) from
    :func:`filtered_pseudo_labels`. Returns a scalar.
    """
    return DC_and_CE_loss(
        {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=ignore_index,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
