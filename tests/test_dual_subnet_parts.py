"""DualSubnetContrastTrainer's pieces on hand-made tensors: M_diff and L_reg, entropy filtering and pseudo-label
source selection, class prototypes and the prototype contrast (empty classes, bounded sampling), the partner
architecture, the projection head and the feature tap."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_semisup.trainers.dual_subnet.confident_disagreement_loss import (
    ConfidentDisagreementLoss,
    confident_disagreement_mask,
)
from nnunet_semisup.trainers.dual_subnet.heads import FeatureTap, ProjectionHeadPair, VoxelProjectionHead
from nnunet_semisup.trainers.dual_subnet.prototype_contrast_loss import (
    PrototypeContrastLoss,
    class_prototypes,
    sample_voxels,
)
from nnunet_semisup.trainers.dual_subnet.pseudo_labels import (
    entropy_reliability_mask,
    filtered_pseudo_labels,
    select_pseudo_label_source,
    voxel_entropy,
)
from nnunet_semisup.trainers.dual_subnet.trainer import partner_architecture


def _probs(*columns):
    """(1, K, N) probabilities from N per-voxel class distributions."""
    return torch.tensor(columns, dtype=torch.float32).T.unsqueeze(0)


# ---------------------------------------------------------------------------------------------- M_diff, L_reg
def test_confident_disagreement_mask_on_a_hand_made_example():
    # voxel: 0 both confident, same class | 1 both confident, different classes | 2 A confident, B not |
    #        3 both exactly at T (not > T), different classes | 4 both confident, different (class 2 vs 0)
    probs_a = _probs(
        [0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.85, 0.05], [0.6, 0.4, 0.0], [0.05, 0.05, 0.9]
    )
    probs_b = _probs([0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.4, 0.3, 0.3], [0.0, 0.6, 0.4], [0.65, 0.3, 0.05])
    mask = confident_disagreement_mask(probs_a, probs_b, threshold=0.6)
    assert mask.tolist() == [[False, True, False, False, True]]

    loss, returned_mask = ConfidentDisagreementLoss(0.6)(probs_a, probs_b)
    assert torch.equal(returned_mask, mask)
    l1_voxel_1 = abs(0.8 - 0.1) + abs(0.1 - 0.7) + abs(0.1 - 0.2)
    l1_voxel_4 = abs(0.05 - 0.65) + abs(0.05 - 0.3) + abs(0.9 - 0.05)
    assert loss.item() == pytest.approx((l1_voxel_1 + l1_voxel_4) / 2, abs=1e-6)
    # a lower T admits voxel 3 as well; a per-call T overrides the default
    assert confident_disagreement_mask(probs_a, probs_b, 0.5).tolist() == [[False, True, False, True, True]]
    assert ConfidentDisagreementLoss(0.6)(probs_a, probs_b, threshold=0.95)[1].sum() == 0


def test_confident_disagreement_loss_trains_both_subnets_and_is_zero_when_they_agree():
    logits_a = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]]).requires_grad_()  # (1, 2 classes, 2 voxels)
    logits_b = torch.tensor([[[-4.0, -4.0], [4.0, 4.0]]]).requires_grad_()
    loss, mask = ConfidentDisagreementLoss(0.6)(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
    assert mask.tolist() == [[True, False]]
    loss.backward()
    assert logits_a.grad.abs().sum() > 0 and logits_b.grad.abs().sum() > 0

    same = torch.softmax(torch.randn(2, 3, 4, 4, 4), 1).requires_grad_()
    loss, mask = ConfidentDisagreementLoss(0.6)(same, same.detach().clone())
    assert mask.sum() == 0 and loss.item() == 0.0
    loss.backward()  # an empty M_diff still gives a valid (zero) gradient
    assert torch.equal(same.grad, torch.zeros_like(same))


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_confident_disagreement_rejects_thresholds_outside_0_1(threshold):
    with pytest.raises(ValueError, match="T must be in"):
        ConfidentDisagreementLoss(threshold)


def test_confident_disagreement_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        confident_disagreement_mask(torch.rand(1, 3, 4), torch.rand(1, 2, 4), 0.6)


# ---------------------------------------------------------------------------------------------- entropy filter
@pytest.mark.parametrize("drop_fraction", [0.0, 0.2, 0.5, 0.37])
def test_entropy_filter_keeps_the_lowest_entropy_fraction_of_the_batch(drop_fraction):
    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(2, 4, 5, 6, 7), 1)  # 420 voxels
    reliable = entropy_reliability_mask(probs, drop_fraction, per_class=False)
    assert reliable.shape == (2, 5, 6, 7)
    n = reliable.numel()
    assert int(reliable.sum()) == n - math.floor(drop_fraction * n)
    entropy = voxel_entropy(probs)
    if drop_fraction > 0:
        assert entropy[reliable].max() <= entropy[~reliable].min()


@pytest.mark.parametrize("drop_fraction", [0.0, 0.2, 0.5, 0.37])
def test_entropy_filter_keeps_the_lowest_entropy_fraction_of_every_predicted_class(drop_fraction):
    torch.manual_seed(1)
    logits = 3 * torch.randn(2, 3, 6, 6, 6)
    logits[:, 0] += 4  # class 0 dominates, as background does
    probs = torch.softmax(logits, 1)
    reliable = entropy_reliability_mask(probs, drop_fraction)  # per class is the default
    entropy, predicted = voxel_entropy(probs), probs.argmax(1)
    for k in range(3):
        members = predicted == k
        n = int(members.sum())
        assert n > 0
        assert int((reliable & members).sum()) == n - math.floor(drop_fraction * n), k
        if drop_fraction > 0 and n > 1:
            assert entropy[reliable & members].max() <= entropy[~reliable & members].min(), k


def test_per_class_entropy_filter_keeps_a_small_uncertain_foreground():
    # 90 confident background voxels and 10 less certain foreground voxels: a batch-wide ranking drops all the
    # foreground (the failure seen on hippocampus), the per-class ranking keeps 80 % of it
    probs = torch.cat([torch.tensor([0.999, 0.001]).repeat(90, 1), torch.tensor([0.2, 0.8]).repeat(10, 1)])
    probs = probs.T.unsqueeze(0)  # (1, 2, 100)
    foreground = probs.argmax(1) == 1
    assert int((entropy_reliability_mask(probs, 0.2, per_class=False) & foreground).sum()) == 0
    assert int((entropy_reliability_mask(probs, 0.2) & foreground).sum()) == 8


def test_entropy_filter_keeps_the_exact_fraction_with_ties():
    probs = torch.full((1, 3, 10, 10), 1 / 3)  # every voxel has the same (maximal) entropy
    reliable = entropy_reliability_mask(probs, 0.2)
    assert int(reliable.sum()) == 80


def test_entropy_of_one_hot_is_zero_and_of_uniform_is_log_k():
    entropy = voxel_entropy(_probs([1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]))
    assert entropy[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert entropy[0, 1].item() == pytest.approx(math.log(4), abs=1e-6)


def test_filtered_pseudo_labels_mark_unreliable_voxels_with_the_ignore_index():
    probs = _probs(
        [0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.01, 0.01, 0.98], [0.05, 0.9, 0.05], [0.4, 0.5, 0.1]
    )
    labels, reliable = filtered_pseudo_labels(probs, drop_fraction=0.4, ignore_index=3, per_class=False)
    assert labels.shape == (1, 1, 5)
    # the two highest-entropy voxels (1: near uniform, 4: 0.4/0.5/0.1) are dropped
    assert reliable.tolist() == [[True, False, True, True, False]]
    assert labels.flatten().tolist() == [0, 3, 2, 1, 3]
    with pytest.raises(ValueError, match="ignore_index 2"):
        filtered_pseudo_labels(probs, 0.2, ignore_index=2)
    with pytest.raises(ValueError, match="drop_fraction"):
        entropy_reliability_mask(probs, 1.0)


# ---------------------------------------------------------------------------------------------- source selection
def test_pseudo_label_source_is_the_subnet_with_the_lower_supervised_loss():
    assert select_pseudo_label_source([torch.tensor(0.4), torch.tensor(0.7)]) == 0
    assert select_pseudo_label_source([torch.tensor(0.9), torch.tensor(0.3)]) == 1
    assert select_pseudo_label_source([torch.tensor(0.5), torch.tensor(0.5)]) == 0  # ties: subnet A
    assert select_pseudo_label_source([torch.tensor(float("nan")), torch.tensor(2.0)]) == 1
    loss = torch.tensor(0.2, requires_grad=True) * 2
    assert select_pseudo_label_source([torch.tensor(1.0), loss]) == 1  # works on graph tensors
    with pytest.raises(ValueError):
        select_pseudo_label_source([])


# ---------------------------------------------------------------------------------------------- prototypes
def test_prototypes_are_the_per_class_means():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [-1.0, -1.0], [2.0, 2.0]])
    labels = torch.tensor([0, 0, 2, 3, 0])
    prototypes, counts = class_prototypes(features, labels, num_classes=4)
    assert counts.tolist() == [3, 0, 1, 1]
    expected = torch.tensor([[2.0, 4 / 3], [0.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])
    assert torch.allclose(prototypes, expected)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.3"):
        class_prototypes(features, torch.tensor([0, 0, 4, 1, 1]), 4)


def test_prototype_contrast_is_finite_with_empty_classes_and_empty_sets():
    torch.manual_seed(0)
    loss_fn = PrototypeContrastLoss(num_classes=4)
    cases = {
        # class 3 has no reliable voxel (no prototype) and some unreliable voxels; class 1 is absent entirely
        "class without prototype": (torch.tensor([0, 0, 2, 2]), torch.tensor([3, 3, 0, 2])),
        "only unreliable voxels of classes without prototype": (torch.tensor([0, 0]), torch.tensor([3, 1])),
        "one prototype only": (torch.tensor([2, 2, 2]), torch.tensor([2, 0])),
        "no reliable voxels": (torch.zeros(0, dtype=torch.long), torch.tensor([0, 1])),
        "no unreliable voxels": (torch.tensor([0, 1, 2]), torch.zeros(0, dtype=torch.long)),
        "nothing": (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
    }
    for name, (reliable_labels, unreliable_labels) in cases.items():
        reliable = torch.randn(len(reliable_labels), 8, requires_grad=True)
        unreliable = torch.randn(len(unreliable_labels), 8, requires_grad=True)
        loss = loss_fn(reliable, reliable_labels, unreliable, unreliable_labels)
        assert loss.ndim == 0 and torch.isfinite(loss), name
        loss.backward()
        for grad in (reliable.grad, unreliable.grad):
            assert grad is None or torch.isfinite(grad).all(), name
    # zero-length features stay finite under AMP-like dtypes too
    half = loss_fn(
        torch.randn(3, 8).half(), torch.tensor([0, 1, 1]), torch.randn(2, 8).half(), torch.tensor([0, 1])
    )
    assert torch.isfinite(half)


def test_prototype_contrast_pulls_unreliable_voxels_to_their_class_prototype():
    axes = torch.eye(3)
    reliable = torch.cat([axes[0].repeat(4, 1), axes[1].repeat(4, 1)])  # class 0 along x, class 1 along y
    reliable_labels = torch.tensor([0] * 4 + [1] * 4)
    loss_fn = PrototypeContrastLoss(num_classes=2, push_weight=0.0)
    near_own = loss_fn(reliable, reliable_labels, axes[0:1] + 0.1 * axes[2], torch.tensor([0]))
    near_other = loss_fn(reliable, reliable_labels, axes[1:2] + 0.1 * axes[2], torch.tensor([0]))
    assert near_own < near_other
    # exact value of Eq. 7 for a voxel on its own prototype: distances 0 and sqrt(2)
    on_own = loss_fn(reliable, reliable_labels, axes[0:1], torch.tensor([0]))
    assert on_own.item() == pytest.approx(math.log(1 + math.exp(-math.sqrt(2))), abs=1e-5)

    # the pull term does not move the prototypes (detached); the push term does
    reliable = reliable.clone().requires_grad_()
    unreliable = (axes[1:2] + 0.1).requires_grad_()
    loss_fn(reliable, reliable_labels, unreliable, torch.tensor([0])).backward()
    assert reliable.grad is None or reliable.grad.abs().sum() == 0
    assert unreliable.grad.abs().sum() > 0

    close = torch.tensor([[1.0, 0.1, 0.0], [0.1, 1.0, 0.0]], requires_grad=True)
    push = PrototypeContrastLoss(num_classes=2, push_weight=1.0)(
        close, torch.tensor([0, 1]), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    )
    assert push > 0
    push.backward()
    assert close.grad.abs().sum() > 0
    orthogonal = PrototypeContrastLoss(num_classes=2)(
        axes[:2], torch.tensor([0, 1]), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    )
    assert orthogonal.item() == 0.0


def test_prototype_contrast_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        PrototypeContrastLoss(num_classes=1)
    with pytest.raises(ValueError, match="temperature"):
        PrototypeContrastLoss(num_classes=2, temperature=0)
    with pytest.raises(ValueError, match="same dimension"):
        PrototypeContrastLoss(2)(
            torch.randn(2, 4), torch.tensor([0, 1]), torch.randn(2, 5), torch.tensor([0, 1])
        )


def test_voxel_sample_is_bounded_per_class_and_drawn_from_the_candidates():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor(
        [0] * 500 + [1] * 30 + [2] * 5 + [5] * 10
    )  # 5 is outside the classes: never sampled
    candidates = torch.rand(len(labels), generator=generator) > 0.3
    candidates[530:535] = True
    index = sample_voxels(labels, candidates, num_classes=3, max_per_class=20, generator=generator)
    assert candidates[index].all()
    assert len(set(index.tolist())) == len(index)
    counts = torch.bincount(labels[index], minlength=6).tolist()
    assert counts[0] == 20  # capped
    assert counts[1] == min(20, int((candidates & (labels == 1)).sum()))
    assert counts[2] == 5  # all of a rare class
    assert counts[5] == 0
    assert sample_voxels(labels, torch.zeros_like(candidates), 3, 20).numel() == 0
    with pytest.raises(ValueError, match="max_per_class"):
        sample_voxels(labels, candidates, 3, 0)


# ---------------------------------------------------------------------------------------------- architecture, heads
PLAIN_KWARGS = {
    "n_stages": 3,
    "features_per_stage": [32, 64, 128],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def test_partner_architecture_pairs_plain_and_residual_unets_of_similar_size():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    name, kwargs = partner_architecture(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet", PLAIN_KWARGS
    )
    assert name.endswith("ResidualEncoderUNet")
    assert kwargs["n_blocks_per_stage"] == [1, 1, 1] and "n_conv_per_stage" not in kwargs
    assert PLAIN_KWARGS["n_conv_per_stage"] == [2, 2, 2]  # the plans' dict is not modified
    imports = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    plain = get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet", PLAIN_KWARGS, imports, 1, 3,
        deep_supervision=True,
    )  # fmt: skip
    residual = get_network_from_plans(name, kwargs, imports, 1, 3, deep_supervision=True)
    size_a = sum(p.numel() for p in plain.parameters())
    size_b = sum(p.numel() for p in residual.parameters())
    assert 0.8 < size_b / size_a < 1.25
    x = torch.randn(1, 1, 16, 16, 16)
    assert [o.shape for o in plain(x)] == [o.shape for o in residual(x)]  # same deep-supervision outputs

    back_name, back = partner_architecture(name, kwargs)
    assert back_name.endswith("PlainConvUNet") and back["n_conv_per_stage"] == [2, 2, 2]
    with pytest.raises(ValueError, match="no partner architecture"):
        partner_architecture("some.module.Primus", {})


def test_voxel_projection_head_projects_maps_and_gathered_voxels_alike():
    head = VoxelProjectionHead(5, 3)
    features = torch.randn(2, 5, 4, 3, 2)
    maps = head(features)
    assert maps.shape == (2, 3, 4, 3, 2)
    vectors = features.movedim(1, -1).reshape(-1, 5)
    assert torch.allclose(head(vectors), maps.movedim(1, -1).reshape(-1, 3), atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        head(torch.randn(4, 6))
    pair = ProjectionHeadPair(VoxelProjectionHead(5, 3), VoxelProjectionHead(7, 3))
    a, b = pair(torch.randn(4, 5), torch.randn(6, 7))
    assert a.shape == (4, 3) and b.shape == (6, 3)
    assert {k.split(".")[0] for k in pair.state_dict()} == {"a", "b"}


def test_feature_tap_keeps_the_last_output_without_changing_the_network():
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    keys = set(network.state_dict())
    tap = FeatureTap(network[1])
    x = torch.randn(1, 1, 2, 2, 2)
    network(x)
    assert torch.equal(tap.features, torch.relu(network[0](x)))
    assert set(network.state_dict()) == keys
    tap.clear()
    assert tap.features is None
    tap.remove()
    network(x)
    assert tap.features is None


# ------------------------------------------------------------- the public code's labeled "mistake" term
def test_confident_foreground_disagreement_is_the_public_codes_xor_for_two_classes():
    from nnunet_semisup.trainers.dual_subnet.labeled_disagreement_loss import (
        confident_foreground_disagreement_mask,
    )

    # voxel: 0 both confident fg | 1 A confident fg, B confident bg | 2 A fg below T, B bg | 3 both bg |
    #        4 A bg, B confident fg | 5 A fg exactly at T (counts, >=), B fg below T
    probs_a = _probs([0.1, 0.9], [0.2, 0.8], [0.45, 0.55], [0.9, 0.1], [0.7, 0.3], [0.4, 0.6])
    probs_b = _probs([0.2, 0.8], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.45, 0.55])
    mask = confident_foreground_disagreement_mask(probs_a, probs_b, threshold=0.6)
    fg_a = (probs_a.argmax(1) == 1) & (probs_a.max(1).values >= 0.6)
    fg_b = (probs_b.argmax(1) == 1) & (probs_b.max(1).values >= 0.6)
    assert torch.equal(mask, fg_a ^ fg_b)
    assert mask[0].tolist() == [False, True, False, False, True, True]


def test_confident_foreground_disagreement_with_three_classes():
    from nnunet_semisup.trainers.dual_subnet.labeled_disagreement_loss import (
        confident_foreground_disagreement_mask,
    )

    # voxel: 0 confident class 1 vs confident class 2 | 1 same confident class 2 | 2 class 1 confident vs not
    probs_a = _probs([0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.7, 0.2])
    probs_b = _probs([0.1, 0.2, 0.7], [0.0, 0.3, 0.7], [0.3, 0.4, 0.3])
    mask = confident_foreground_disagreement_mask(probs_a, probs_b, threshold=0.6)
    assert mask[0].tolist() == [True, False, True]


def test_labeled_disagreement_loss_value_ignore_label_and_empty_mask():
    from nnunet_semisup.trainers.dual_subnet.labeled_disagreement_loss import LabeledDisagreementLoss

    probs = _probs([0.2, 0.8, 0.0], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]).requires_grad_(True)
    labels = torch.tensor([[[1, 0, 3]]])  # (B, 1, N); 3 = ignore label
    mask = torch.tensor([[True, True, True]])
    loss = LabeledDisagreementLoss(ignore_index=3)(probs, labels, mask)
    # voxel 0: (0.8-1)^2 + 0^2 = 0.04; voxel 1 (label 0): 0.1^2 + 0.4^2 = 0.17; voxel 2 ignored
    assert loss.item() == pytest.approx((0.04 + 0.17) / 2, abs=1e-6)
    loss.backward()
    assert torch.all(probs.grad[0, :, 2] == 0) and probs.grad[0, 0].abs().sum() == 0  # background not fit
    empty = LabeledDisagreementLoss()(probs, labels.clamp(max=2), torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="shapes do not match"):
        LabeledDisagreementLoss()(probs, labels, mask[:, :2])


def test_unlabeled_loss_fits_reliable_pseudo_labels_and_ignores_unreliable_voxels():
    """L_u on a hand-made batch whose answer is known: the labelling subnet's probabilities are sharp on most
    voxels and uniform (maximal entropy) on a few; those few are dropped, get exactly zero gradient, and
    gradient descent on L_u alone makes the trained logits reproduce the pseudo-labels on every reliable voxel."""
    from nnunet_semisup.trainers.dual_subnet.pseudo_labels import pseudo_label_loss

    generator = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 3, (2, 4, 4, 4), generator=generator)
    teacher = torch.nn.functional.one_hot(classes, 3).movedim(-1, 1).float() * 0.9 + 0.1 / 3
    uncertain = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    uncertain[:, 0] = True  # 32 of 128 voxels: uniform probabilities
    teacher[uncertain.unsqueeze(1).expand_as(teacher)] = 1 / 3
    pseudo, reliable = filtered_pseudo_labels(teacher, 0.25, ignore_index=3, per_class=False)
    assert torch.equal(reliable, ~uncertain)

    logits = torch.zeros(2, 3, 4, 4, 4, requires_grad=True)
    loss_fn = pseudo_label_loss(ignore_index=3, batch_dice=False)
    loss = loss_fn(logits, pseudo)
    loss.backward()
    grad_norm = logits.grad.abs().sum(1)
    assert torch.all(grad_norm[uncertain] == 0)
    assert torch.all(grad_norm[~uncertain] > 0)

    optimizer = torch.optim.SGD([logits], lr=5.0)
    first = loss.item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = loss_fn(logits, pseudo)
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 1.0  # CE ~1.1 -> ~0, Dice 0 -> ~-1
    assert torch.equal(logits.argmax(1)[~uncertain], classes[~uncertain])
