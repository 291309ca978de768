"""Tests for nnunet_semisup.trainers.secl.info_nce_loss: InfoNCE against a naive per-sample loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semisup.trainers.secl.cube_sampling import region_masks
from nnunet_semisup.trainers.secl.info_nce_loss import InfoNCELoss, pair_masks


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _naive(z_a, z_b, positive, negative, tau):
    """Eq. 2 written out term by term: one term per (anchor, positive) pair."""
    candidates = torch.cat([z_a, z_b]).double()
    anchors = z_a.double()
    terms = []
    for i in range(anchors.shape[0]):
        for p in range(candidates.shape[0]):
            if not positive[i, p]:
                continue
            numerator = math.exp(_cos(anchors[i], candidates[p]) / tau)
            denominator = numerator + sum(
                math.exp(_cos(anchors[i], candidates[n]) / tau)
                for n in range(candidates.shape[0])
                if negative[i, n]
            )
            terms.append(-math.log(numerator / denominator))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("tau", [0.07, 0.1, 0.5, 1.0])
def test_pair_form_matches_naive_loop(tau):
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 16), torch.randn(6, 16)
    positive, negative = pair_masks(6)
    loss = InfoNCELoss(temperature=tau)(z_a, z_b)
    assert float(loss) == pytest.approx(_naive(z_a, z_b, positive, negative, tau), rel=1e-5)


def test_pair_form_has_one_positive_and_two_k_minus_one_negatives():
    positive, negative = pair_masks(4)
    assert positive.sum(1).tolist() == [1] * 4
    assert negative.sum(1).tolist() == [2 * (4 - 1)] * 4
    assert positive[0, 4] and not negative[0, 0] and negative[0, 1] and negative[0, 5]


def test_mask_form_matches_naive_loop_for_region_masks():
    torch.manual_seed(1)
    z_a, z_b = torch.randn(6, 8), torch.randn(6, 8)
    positive, negative = region_masks(torch.tensor([0, 1, 2, 0, 1, 2]))
    loss = InfoNCELoss(temperature=0.2)(z_a, z_b, positive, negative)
    assert float(loss) == pytest.approx(_naive(z_a, z_b, positive, negative, 0.2), rel=1e-5)


def test_pair_form_equals_cross_entropy_over_candidates():
    # an independent formulation: softmax cross-entropy over [positive, negatives]
    torch.manual_seed(2)
    z_a, z_b = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    candidates = torch.cat([z_a, z_b])
    logits = (z_a @ candidates.T / 0.1).masked_fill(torch.eye(5, 10, dtype=torch.bool), float("-inf"))
    expected = F.cross_entropy(logits, torch.arange(5) + 5)
    assert float(InfoNCELoss(0.1)(z_a, z_b)) == pytest.approx(float(expected), rel=1e-5)


def test_loss_is_scale_invariant_and_low_for_aligned_views():
    torch.manual_seed(3)
    z = torch.randn(8, 32)
    loss = InfoNCELoss(0.1)
    assert float(loss(z, 3 * z)) == pytest.approx(float(loss(z, z)), rel=1e-5)
    assert float(loss(z, z)) < float(loss(z, torch.randn(8, 32)))


def test_gradient_matches_naive_autograd_and_reaches_both_views():
    torch.manual_seed(4)
    z_a = torch.randn(4, 6, requires_grad=True)
    z_b = torch.randn(4, 6, requires_grad=True)
    InfoNCELoss(0.3)(z_a, z_b).backward()

    a2, b2 = z_a.detach().clone().requires_grad_(), z_b.detach().clone().requires_grad_()
    an, cand = F.normalize(a2, dim=1), F.normalize(torch.cat([a2, b2]), dim=1)
    sim = an @ cand.T / 0.3
    naive = 0
    for i in range(4):
        negatives = [sim[i, n] for n in range(8) if n not in (i, 4 + i)]
        naive = naive - sim[i, 4 + i] + torch.logsumexp(torch.stack([sim[i, 4 + i], *negatives]), 0)
    (naive / 4).backward()
    assert torch.allclose(z_a.grad, a2.grad, atol=1e-6)
    assert torch.allclose(z_b.grad, b2.grad, atol=1e-6)
    assert z_b.grad.abs().sum() > 0


def test_half_precision_inputs_give_float32_loss():
    z_a, z_b = torch.randn(4, 8).half(), torch.randn(4, 8).half()
    assert InfoNCELoss()(z_a, z_b).dtype == torch.float32


@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan")])
def test_bad_temperature_raises(tau):
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=tau)


def test_bad_shapes_and_masks_raise():
    loss = InfoNCELoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 8, 2), torch.randn(4, 8, 2))
    positive, negative = pair_masks(4)
    with pytest.raises(ValueError, match="together"):
        loss(torch.randn(4, 8), torch.randn(4, 8), positive, None)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.randn(4, 8), torch.randn(4, 8), positive[:, :6], negative[:, :6])
    with pytest.raises(ValueError, match="both"):
        loss(torch.randn(4, 8), torch.randn(4, 8), positive, negative | positive)
    self_positive = positive.clone()
    self_positive[0, 0] = True
    with pytest.raises(ValueError, match="own"):
        loss(torch.randn(4, 8), torch.randn(4, 8), self_positive, negative)
    no_positive = positive.clone()
    no_positive[1] = False
    with pytest.raises(ValueError, match="at least one positive"):
        loss(torch.randn(4, 8), torch.randn(4, 8), no_positive, negative)
