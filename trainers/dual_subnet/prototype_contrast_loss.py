"""Prototype contrast L_c of Karimijafarbigloo, Azad et al., "Leveraging Unlabeled Data for 3D Medical Image
Segmentation through Self-Supervised Contrastive Learning" (2023), Eq. 6 and 7, for any number of classes, with a
bounded voxel sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semisup.precision import full_precision


def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean feature ``c_k = mean{f(v) : label(v) = k}`` (Eq. 6).

    Shapes:
        features: (N, D); labels: (N,) integers in ``0..num_classes-1``. Returns prototypes (num_classes, D), a
        zero row for a class without voxels, and the voxel count of every class (num_classes,) long.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got values {labels.unique().tolist()}")
    counts = torch.bincount(labels, minlength=num_classes)
    sums = features.new_zeros(num_classes, features.shape[1]).index_add(0, labels, features)
    return sums / counts.clamp_min(1).unsqueeze(1).to(features.dtype), counts


def sample_voxels(
    labels: torch.Tensor,
    candidates: torch.Tensor,
    num_classes: int,
    max_per_class: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A bounded, class-stratified random sample of voxels: for every class, at most ``max_per_class`` of the
    candidate voxels with that label (all of them when there are fewer), so rare classes are represented and
    the sample size, hence the memory of the contrast, does not grow with the patch.

    Shapes:
        labels: (N,) integers (values outside ``0..num_classes-1`` are never sampled); candidates: (N,) bool.
        Returns the sampled positions (M,) long, M <= num_classes * max_per_class, sorted by class.
    """
    if labels.shape != candidates.shape or labels.ndim != 1:
        raise ValueError(
            f"expected labels and candidates of the same (N,) shape, got {tuple(labels.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    chosen = []
    for k in range(num_classes):
        positions = torch.nonzero(candidates & (labels == k), as_tuple=True)[0]
        if positions.numel() > max_per_class:
            keep = torch.randperm(positions.numel(), generator=generator, device="cpu")[:max_per_class]
            positions = positions[keep.to(positions.device)]
        chosen.append(positions)
    return torch.cat(chosen) if chosen else labels.new_zeros(0, dtype=torch.long)


class PrototypeContrastLoss(nn.Module):
    """L_c: pull every unreliable voxel to the prototype of its pseudo-class and push the class prototypes apart.

    Features are L2-normalized (as in the authors' code) and the prototypes ``c_k`` are the normalized mean
    features of the reliable voxels of class k (Eq. 6). For an unreliable voxel v with pseudo-class y (Eq. 7)::

        p(y = k | v) = softmax_k( -||f(v) - c_k|| / tau )      over the classes that have a prototype
        L_pull = mean_v  -log p(y | v)

    The prototypes are detached in ``L_pull`` (an unreliable voxel moves to its class centre, the centre does not
    move to the unreliable voxel). ``L_push`` is the mean over pairs of prototypes of ``max(0, cos(c_i, c_j))``,
    which keeps gradient through the reliable voxels and stops pushing once two prototypes are orthogonal.
    ``L_c = L_pull + push_weight * L_push``.

    Classes without reliable voxels have no prototype: their unreliable voxels are left out of ``L_pull``, and the
    loss is an exact (gradient-carrying) zero when nothing is left, never NaN.

    Args:
        temperature: tau > 0 of the distance softmax; 1.0 is Eq. 7 as printed (no temperature).
        push_weight: weight of the prototype separation term (>= 0).

    Shapes:
        reliable_features: (N_r, D); reliable_labels: (N_r,) in ``0..num_classes-1``;
        unreliable_features: (N_u, D); unreliable_labels: (N_u,) in ``0..num_classes-1``. Returns a scalar.
    """

    def __init__(self, num_classes: int, temperature: float = 1.0, push_weight: float = 1.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if push_weight < 0:
            raise ValueError(f"push_weight must be >= 0, got {push_weight}")
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.push_weight = float(push_weight)

    @full_precision  # distances and cosines to prototypes: matmul and cdist in float32
    def forward(
        self,
        reliable_features: torch.Tensor,
        reliable_labels: torch.Tensor,
        unreliable_features: torch.Tensor,
        unreliable_labels: torch.Tensor,
    ) -> torch.Tensor:
        if unreliable_features.ndim != 2 or unreliable_labels.shape != unreliable_features.shape[:1]:
            raise ValueError(
                f"expected unreliable features (N, D) and labels (N,), got {tuple(unreliable_features.shape)} "
                f"and {tuple(unreliable_labels.shape)}"
            )
        if reliable_features.shape[1:] != unreliable_features.shape[1:]:
            raise ValueError(
                f"reliable and unreliable features need the same dimension D, got {reliable_features.shape[1:]} "
                f"and {unreliable_features.shape[1:]}"
            )
        reliable = F.normalize(reliable_features.float(), dim=1)
        unreliable = F.normalize(unreliable_features.float(), dim=1)
        means, counts = class_prototypes(reliable, reliable_labels, self.num_classes)
        present = counts > 0
        # zero that keeps the graph of both inputs: a valid backward pass even when every term is empty
        zero = reliable.sum() * 0.0 + unreliable.sum() * 0.0
        if not present.any():
            return zero
        prototypes = F.normalize(means[present], dim=1)  # (P, D)
        # class k -> its row among the present prototypes (-1: no prototype)
        row_of_class = torch.full((self.num_classes,), -1, dtype=torch.long, device=present.device)
        row_of_class[present] = torch.arange(int(present.sum()), device=present.device)

        loss = zero
        targets = row_of_class[unreliable_labels.long()]
        usable = targets >= 0
        if usable.any() and prototypes.shape[0] > 1:
            distances = torch.cdist(unreliable[usable], prototypes.detach())  # (N, P)
            loss = loss + F.cross_entropy(-distances / self.temperature, targets[usable])
        if self.push_weight > 0 and prototypes.shape[0] > 1:
            cosine = prototypes @ prototypes.T
            pairs = torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)
            loss = loss + self.push_weight * cosine[pairs].clamp_min(0).mean()
        return loss
