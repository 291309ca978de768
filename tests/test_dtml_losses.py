"""Tests for DTML's losses: DualTaskConsistencyLoss (L_con), SDMMaskDiceLoss (L_mask), SDMRegressionLoss
(L_dis), and that the consistency gradient reaches both networks."""

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_semisup.trainers.dtml.dual_task_consistency_loss import DualTaskConsistencyLoss
from nnunet_semisup.trainers.dtml.sdm_mask_dice_loss import SDMMaskDiceLoss
from nnunet_semisup.trainers.dtml.sdm_network import SDMRegressionNetwork
from nnunet_semisup.trainers.dtml.sdm_regression_loss import SDMRegressionLoss
from nnunet_semisup.trainers.dtml.signed_distance import signed_distance_map

SHAPE = (2, 2, 6, 7, 8)


def _randn(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _masks(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.6


# --- L_con ------------------------------------------------------------------------------------------------


def test_consistency_equals_naive_formula():
    probabilities = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    sdm = _randn(1) * 0.002  # within the soft band of sigmoid(-1500 z)
    expected = ((probabilities - torch.sigmoid(-1500 * sdm)) ** 2).mean()
    torch.testing.assert_close(DualTaskConsistencyLoss()(probabilities, sdm), expected)
    torch.testing.assert_close(
        DualTaskConsistencyLoss(k=2.0)(probabilities, sdm),
        ((probabilities - torch.sigmoid(-2 * sdm)) ** 2).mean(),
    )


def test_consistency_is_zero_when_both_tasks_agree():
    masks = _masks(0)
    sdm = torch.from_numpy(signed_distance_map(masks.numpy()))
    # agreement everywhere except on the boundary, where the SDM's mask is 0.5
    boundary = sdm == 0
    loss = DualTaskConsistencyLoss()(torch.where(boundary, 0.5, masks.float()), sdm)
    assert loss.item() < 1e-10


def test_consistency_gradient_reaches_both_inputs():
    probabilities = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    sdm = (_randn(1) * 0.002).requires_grad_(True)
    DualTaskConsistencyLoss()(probabilities, sdm).backward()
    assert probabilities.grad.abs().sum() > 0
    assert sdm.grad.abs().sum() > 0


def test_consistency_half_inputs_give_float32():
    loss = DualTaskConsistencyLoss()(torch.rand(SHAPE).half(), (_randn(1) * 0.002).half())
    assert loss.dtype == torch.float32


def test_consistency_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"same shape.*\(2, 2, 6, 7, 8\).*\(2, 1, 6, 7, 8\)"):
        DualTaskConsistencyLoss()(torch.rand(SHAPE), torch.rand(2, 1, 6, 7, 8))
    with pytest.raises(ValueError, match="B, C"):
        DualTaskConsistencyLoss()(torch.rand(2, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="k must be positive"):
        DualTaskConsistencyLoss(k=-1)


def test_consistency_gradient_reaches_both_networks():
    """The mutual term trains M_s and M_d: gradients of L_con alone are non-zero in both networks."""
    torch.manual_seed(0)
    seg_net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))  # 3 classes
    backbone = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))  # 2 SDM channels
    with torch.no_grad():  # outputs inside the soft band of sigmoid(-1500 z), as near a boundary
        backbone[-1].weight.mul_(1e-3)
        backbone[-1].bias.zero_()
    dist_net = SDMRegressionNetwork(backbone)
    x = torch.randn(2, 1, 8, 8, 8)
    probabilities = torch.softmax(seg_net(x), 1)[:, 1:]
    DualTaskConsistencyLoss()(probabilities, dist_net(x)).backward()
    for name, net in (("M_s", seg_net), ("M_d", dist_net)):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None for g in grads), name
        assert all(g.abs().sum() > 0 for g in grads), name


# --- L_mask -----------------------------------------------------------------------------------------------


def test_mask_dice_is_zero_for_the_labels_own_sdm_and_one_for_the_inverse():
    masks = torch.zeros(1, 1, 12, 12, 12, dtype=torch.bool)
    masks[..., 2:10, 2:10, 2:10] = True
    sdm = torch.from_numpy(signed_distance_map(masks.numpy()))
    loss = SDMMaskDiceLoss()
    # only the boundary voxels (0.5) cost Dice: 1 - 2 (216 + 148) / (364 + 512)
    assert loss(sdm, masks).item() == pytest.approx(1 - 728 / 876, abs=1e-4)
    assert loss(-sdm * 10, masks).item() > 0.7
    perfect = torch.where(masks, -1.0, 1.0)
    assert loss(perfect, masks).item() < 1e-6
    assert loss(-perfect, masks).item() > 1 - 1e-6


def _naive_dice_loss(sdm, target, k, axes, smooth=1e-5):
    p = torch.sigmoid(-k * sdm)
    t = target.float()
    return 1 - ((2 * (p * t).sum(axes) + smooth) / (p.sum(axes) + t.sum(axes) + smooth)).mean()


@pytest.mark.parametrize("batch_dice", [False, True])
def test_mask_dice_equals_naive_per_sample_or_batch(batch_dice):
    sdm, masks = _randn(1) * 0.01, _masks(2)
    axes = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    torch.testing.assert_close(
        SDMMaskDiceLoss(k=100, batch_dice=batch_dice)(sdm, masks), _naive_dice_loss(sdm, masks, 100, axes)
    )


def test_mask_dice_ignores_unannotated_voxels():
    sdm, masks = _randn(1) * 0.01, _masks(2)
    valid = _masks(3, (2, 1, 6, 7, 8))
    changed = torch.where(valid, masks, ~masks)
    loss = SDMMaskDiceLoss(k=100)
    torch.testing.assert_close(loss(sdm, masks, valid), loss(sdm, changed, valid))
    assert not torch.allclose(loss(sdm, masks), loss(sdm, changed))


def test_mask_dice_empty_class_predicted_empty_costs_nothing():
    masks = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    assert SDMMaskDiceLoss()(torch.ones(1, 1, 4, 4, 4), masks).item() < 1e-6


def test_mask_dice_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        SDMMaskDiceLoss()(_randn(0), _masks(0, (2, 1, 6, 7, 8)))
    with pytest.raises(ValueError, match=r"valid mask must be \(B, 1, \*spatial\)"):
        SDMMaskDiceLoss()(_randn(0), _masks(0), torch.ones(SHAPE))


# --- L_dis ------------------------------------------------------------------------------------------------


def test_regression_equals_mse_and_respects_valid_mask():
    prediction, target = torch.tanh(_randn(0)), torch.tanh(_randn(1))
    loss = SDMRegressionLoss()
    torch.testing.assert_close(loss(prediction, target), ((prediction - target) ** 2).mean())
    valid = _masks(3, (2, 1, 6, 7, 8))
    kept = ((prediction - target) ** 2).permute(0, 2, 3, 4, 1)[valid[:, 0]]
    torch.testing.assert_close(loss(prediction, target, valid), kept.mean())
    assert loss(prediction, target, torch.zeros_like(valid)).item() == 0.0


def test_regression_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        SDMRegressionLoss()(_randn(0), _randn(0, (2, 1, 6, 7, 8)))
    with pytest.raises(ValueError, match="valid mask"):
        SDMRegressionLoss()(_randn(0), _randn(1), torch.ones(2, 6, 7, 8))


def test_sdm_head_applies_tanh_and_rejects_deep_supervision_outputs():
    head = SDMRegressionNetwork(nn.Conv3d(1, 2, 1))
    out = head(torch.randn(1, 1, 4, 4, 4) * 100)
    assert out.shape == (1, 2, 4, 4, 4) and out.abs().max() <= 1
    np.testing.assert_array_less(-1.0001, out.detach().numpy())

    class TwoOutputs(nn.Module):
        def forward(self, x):
            return [x, x]

    with pytest.raises(ValueError, match="deep supervision off"):
        SDMRegressionNetwork(TwoOutputs())(torch.zeros(1, 1, 2, 2, 2))
