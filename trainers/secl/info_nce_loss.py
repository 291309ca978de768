"""InfoNCE with cosine similarity between two views, in the pair form and in a positive/negative-mask form
(Xiang et al., "Self-Ensembling Contrastive Learning for Semi-Supervised Medical Image Segmentation", Eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from nnunet_semisup.precision import full_precision


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 (rank order), keeping the gradient of the local part."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def pair_masks(
    num_anchors: int, offset: int = 0, total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the pair form: anchor ``i`` has one positive (the other view of sample ``i``) and every other
    embedding of both views as a negative (``2(K-1)`` negatives for ``K`` samples, as in SimCLR).

    Candidates are ordered ``[view a of all samples, view b of all samples]``; ``total`` samples in all
    (default ``num_anchors``), of which the anchors are ``offset .. offset + num_anchors - 1``.

    Returns:
        positive_mask, negative_mask: (num_anchors, 2 * total) bool.
    """
    total = num_anchors if total is None else total
    rows = torch.arange(num_anchors)
    positive = torch.zeros(num_anchors, 2 * total, dtype=torch.bool)
    positive[rows, total + offset + rows] = True
    negative = ~positive
    negative[rows, offset + rows] = False  # an anchor is not its own negative
    return positive, negative


class InfoNCELoss(nn.Module):
    """InfoNCE (Oord et al. 2018) with cosine similarity and temperature, as SECL's contrastive loss L_c.

    For an anchor ``a`` and one of its positives ``p`` (Xiang et al., Eq. 2; the per-pair form of Chaitanya
    et al., NeurIPS 2020, for several positives)::

        l(a, p) = -log( exp(cos(a, p)/tau) / (exp(cos(a, p)/tau) + sum_{n in Lambda^-(a)} exp(cos(a, n)/tau)) )

    averaged over all (anchor, positive) pairs. Other positives of the same anchor are in neither the numerator
    nor the denominator of a pair's term.

    The anchors are the first view ``z_a`` (the student's projections in SECL). The candidates are both views,
    ``[z_a; z_b]`` (2N rows). Without masks (pair form) row ``i`` of ``z_b`` is the only positive of anchor
    ``i`` and all other 2N-2 candidates are negatives. With masks (e.g. region-aware sampling) any candidate can
    be a positive or a negative; candidates in neither mask are ignored.

    The similarities are computed in float32 (under AMP, half-precision cosines divided by a small temperature
    lose the differences the loss is made of).

    Args:
        temperature: tau > 0.
        gather_distributed: under torch.distributed, add the other ranks' embeddings as candidates (more
            negatives); anchors stay local and gradients flow back to the local embeddings only. Masks passed
            to ``forward`` must then cover the gathered candidates ``[z_a of all ranks; z_b of all ranks]``;
            every rank must pass the same N.

    Shapes:
        z_a, z_b: (N, D), row ``i`` of both is the same sample; N >= 1.
        positive_mask, negative_mask (optional, together): (N, 2N) bool (2NW columns when gathering over W
        ranks). Every anchor needs at least one positive; no anchor may be its own positive or negative; a
        candidate cannot be both.
        Returns a scalar.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if gather_distributed and not dist.is_available():
            raise ValueError("gather_distributed=True needs torch.distributed, which is not available")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    @full_precision  # cosine similarities over tau = 0.1: a half-precision matmul would blur them
    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        positive_mask: torch.Tensor | None = None,
        negative_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if z_a.ndim != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 1:
            raise ValueError(
                f"expected two (N, D) embeddings of the same shape with N >= 1, got {tuple(z_a.shape)} and "
                f"{tuple(z_b.shape)}"
            )
        if (positive_mask is None) != (negative_mask is None):
            raise ValueError("pass positive_mask and negative_mask together, or neither (pair form)")
        n = z_a.shape[0]
        anchors = F.normalize(z_a.float(), dim=1)
        view_b = F.normalize(z_b.float(), dim=1)
        rank = 0
        if self.gather_distributed and dist.is_initialized() and dist.get_world_size() > 1:
            rank = dist.get_rank()
            candidates = torch.cat([_gather(anchors), _gather(view_b)])
        else:
            candidates = torch.cat([anchors, view_b])
        total = candidates.shape[0] // 2
        if positive_mask is None:
            positive_mask, negative_mask = pair_masks(n, offset=rank * n, total=total)
        positive_mask = positive_mask.to(anchors.device, torch.bool)
        negative_mask = negative_mask.to(anchors.device, torch.bool)
        self._check_masks(positive_mask, negative_mask, n, candidates.shape[0], rank * n)

        logits = anchors @ candidates.T / self.temperature  # (N, 2N)
        negative_lse = torch.logsumexp(logits.masked_fill(~negative_mask, float("-inf")), dim=1, keepdim=True)
        # -log(e^p / (e^p + sum_n e^n)) = log(1 + sum_n e^(n - p)) = softplus(logsumexp(n) - p); exact also
        # when an anchor has no negative (softplus(-inf) = 0)
        pair_losses = F.softplus(negative_lse - logits)
        return pair_losses[positive_mask].mean()

    @staticmethod
    def _check_masks(positive: torch.Tensor, negative: torch.Tensor, n: int, m: int, offset: int) -> None:
        if positive.shape != (n, m) or negative.shape != (n, m):
            raise ValueError(
                f"masks must have shape (N, 2N) = {(n, m)} over the candidates [z_a; z_b], got "
                f"{tuple(positive.shape)} and {tuple(negative.shape)}"
            )
        if (positive & negative).any():
            raise ValueError("a candidate cannot be both a positive and a negative of the same anchor")
        rows = torch.arange(n, device=positive.device)
        if (positive[rows, offset + rows] | negative[rows, offset + rows]).any():
            raise ValueError(
                "an anchor cannot be its own positive or negative (its diagonal entry must be False)"
            )
        if not positive.any(dim=1).all():
            raise ValueError("every anchor needs at least one positive")
