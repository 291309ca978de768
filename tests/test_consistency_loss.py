"""Tests for nnunet_semisup.losses.consistency.ProbabilityMSELoss."""

import pytest
import torch

from nnunet_semisup.losses.consistency import ProbabilityMSELoss

SHAPE = (2, 3, 4, 5, 6)


def _logits(seed: int, shape=SHAPE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 2


def _naive(student, teacher, nonlinearity=lambda x: torch.softmax(x, 1)):
    return ((nonlinearity(student) - nonlinearity(teacher)) ** 2).mean()


def test_equals_naive_softmax_mse():
    student, teacher = _logits(0), _logits(1)
    loss = ProbabilityMSELoss()(student, teacher)
    assert loss.ndim == 0
    torch.testing.assert_close(loss, _naive(student, teacher))
    assert loss.item() > 0


def test_naive_computation_by_hand_on_two_voxels():
    # two classes, two voxels: probabilities (0.5, 0.5) vs (sigmoid(2), sigmoid(-2))
    student = torch.zeros(1, 2, 2, 1, 1)
    teacher = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 1, 1).clone()
    p = torch.sigmoid(torch.tensor(2.0))
    expected = (0.5 - p) ** 2  # same squared difference for both classes and both voxels
    torch.testing.assert_close(ProbabilityMSELoss()(student, teacher), expected)


def test_zero_for_identical_logits():
    logits = _logits(2)
    assert ProbabilityMSELoss()(logits, logits.clone()).item() == 0.0


def test_symmetric_in_student_and_teacher():
    student, teacher = _logits(0), _logits(1)
    loss = ProbabilityMSELoss()
    torch.testing.assert_close(loss(student, teacher), loss(teacher, student))


def test_gradient_flows_to_student_only():
    student = _logits(0).requires_grad_(True)
    teacher = _logits(1).requires_grad_(True)
    loss = ProbabilityMSELoss()(student, teacher)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_half_precision_logits_give_float32_loss():
    student, teacher = _logits(0), _logits(1)
    loss = ProbabilityMSELoss()(student.half(), teacher.half())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, _naive(student.half().float(), teacher.half().float()))


# --- masks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_shape", [(2, 1, 4, 5, 6), (2, 4, 5, 6)])
def test_mask_of_ones_equals_no_mask(mask_shape):
    student, teacher = _logits(0), _logits(1)
    loss = ProbabilityMSELoss()
    torch.testing.assert_close(loss(student, teacher, torch.ones(mask_shape)), loss(student, teacher))


def _random_mask(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand((2, 1, 4, 5, 6), generator=generator) > 0.5).float()
    assert 0 < mask.sum() < mask.numel()
    return mask


@pytest.mark.parametrize("squeeze", [False, True], ids=["B1XYZ", "BXYZ"])
def test_masked_out_voxels_do_not_matter(squeeze):
    student, teacher = _logits(0), _logits(1)
    mask = _random_mask(3)
    changed_teacher = torch.where(mask.bool(), teacher, _logits(4) * 10)
    assert not torch.equal(changed_teacher, teacher)
    given_mask = mask[:, 0] if squeeze else mask
    loss = ProbabilityMSELoss()
    torch.testing.assert_close(loss(student, teacher, given_mask), loss(student, changed_teacher, given_mask))


@pytest.mark.parametrize("squeeze", [False, True], ids=["B1XYZ", "BXYZ"])
def test_masked_loss_is_mean_over_kept_voxels_and_classes(squeeze):
    student, teacher = _logits(0), _logits(1)
    mask = _random_mask(5)
    squared = (torch.softmax(student, 1) - torch.softmax(teacher, 1)) ** 2  # (B, C, X, Y, Z)
    kept = squared.permute(0, 2, 3, 4, 1)[mask[:, 0].bool()]  # (N kept, C)
    expected = kept.mean()
    given_mask = mask[:, 0] if squeeze else mask
    torch.testing.assert_close(ProbabilityMSELoss()(student, teacher, given_mask), expected)


def test_boolean_mask_is_accepted():
    student, teacher = _logits(0), _logits(1)
    mask = _random_mask(6)
    loss = ProbabilityMSELoss()
    torch.testing.assert_close(loss(student, teacher, mask.bool()), loss(student, teacher, mask))


def test_all_zero_mask_gives_zero_not_nan():
    student, teacher = _logits(0), _logits(1)
    loss = ProbabilityMSELoss()(student, teacher, torch.zeros(2, 1, 4, 5, 6))
    assert loss.item() == 0.0


# --- nonlinearity ----------------------------------------------------------------------------------------


def test_sigmoid_nonlinearity_option():
    student, teacher = _logits(0), _logits(1)
    loss = ProbabilityMSELoss("sigmoid")(student, teacher)
    torch.testing.assert_close(loss, _naive(student, teacher, torch.sigmoid))
    assert not torch.allclose(loss, _naive(student, teacher))


# --- errors ----------------------------------------------------------------------------------------------


def test_shape_mismatch_raises_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5, 6\).*\(2, 3, 4, 5, 5\)"):
        ProbabilityMSELoss()(_logits(0), _logits(1, (2, 3, 4, 5, 5)))


def test_logits_without_spatial_dims_raise():
    with pytest.raises(ValueError, match="B, C"):
        ProbabilityMSELoss()(torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize(
    "mask_shape",
    [
        (1, 1, 4, 5, 6),  # wrong batch
        (2, 1, 4, 5, 5),  # wrong spatial size
        (2, 4, 5, 5),  # wrong spatial size, no channel dim
        (4, 5, 6),  # no batch dim
        (2, 1, 1, 4, 5, 6),  # too many dims
    ],
)
def test_bad_mask_shape_raises(mask_shape):
    with pytest.raises(ValueError, match="mask shape"):
        ProbabilityMSELoss()(_logits(0), _logits(1), torch.ones(mask_shape))


def test_mask_with_one_channel_per_class_is_rejected():
    with pytest.raises(ValueError, match="mask shape"):
        ProbabilityMSELoss()(_logits(0), _logits(1), torch.ones(SHAPE))


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="softmax"):
        ProbabilityMSELoss("relu")
