"""BCP's copy-paste boxes, mixed targets and mixed loss, and UniMatch's feature perturbation, on hand-made
tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_semisup.segmentation_targets import split_annotated
from nnunet_semisup.trainers.bcp.copy_paste import copy_paste_boxes, paste
from nnunet_semisup.trainers.bcp.mixed_loss import CopyPasteMixedLoss
from nnunet_semisup.trainers.unimatch.feature_perturbation import SkipFeatureDropout, channel_dropout


def test_boxes_are_two_thirds_of_every_side():
    torch.manual_seed(0)
    boxes = copy_paste_boxes(4, (30, 24, 12))
    assert boxes.shape == (4, 1, 30, 24, 12)
    for box in boxes[:, 0]:
        idx = box.nonzero()
        sides = (idx.max(0).values - idx.min(0).values + 1).tolist()
        assert sides == [20, 16, 8] and int(box.sum()) == 20 * 16 * 8
    with pytest.raises(ValueError, match="fraction"):
        copy_paste_boxes(1, (8, 8), fraction=0.0)


def test_mixed_targets_are_ground_truth_in_the_labeled_part_and_pseudo_labels_in_the_other():
    torch.manual_seed(1)
    shape = (2, 1, 9, 12, 6)
    ground_truth = torch.randint(0, 3, shape).float()
    pseudo = torch.randint(0, 3, shape).float()
    boxes = copy_paste_boxes(2, shape[2:])
    # X_in: labeled patch outside the box, unlabeled inside
    target_in = paste(ground_truth, pseudo, boxes)
    assert torch.equal(target_in[~boxes], ground_truth[~boxes])
    assert torch.equal(target_in[boxes], pseudo[boxes])
    # X_out: the reverse
    target_out = paste(pseudo, ground_truth, boxes)
    assert torch.equal(target_out[boxes], ground_truth[boxes])
    assert torch.equal(target_out[~boxes], pseudo[~boxes])
    # images are mixed with the very same box
    labeled, unlabeled = torch.randn(2, 1, *shape[2:]), torch.randn(2, 1, *shape[2:])
    x_in = paste(labeled, unlabeled, boxes)
    assert torch.equal(x_in[boxes], unlabeled[boxes]) and torch.equal(x_in[~boxes], labeled[~boxes])


def test_ignored_voxels_stay_without_loss_after_pasting():
    torch.manual_seed(2)
    ignore = 3
    ground_truth = torch.randint(0, 4, (1, 1, 8, 8)).float()  # 3 = nnU-Net's ignore label
    pseudo = torch.randint(0, 3, (1, 1, 8, 8)).float()
    labels, annotated = split_annotated(ground_truth, region_based=False, ignore_label=ignore)
    boxes = copy_paste_boxes(1, (8, 8))
    box = boxes.float()
    target = paste(labels, pseudo, boxes)
    labeled_part = (1 - box) * annotated
    # the ignored voxels of the labeled patch are in neither part where they were pasted
    assert labeled_part[(ground_truth == ignore) & ~boxes].sum() == 0
    loss = CopyPasteMixedLoss(unlabeled_weight=0.5)
    logits = torch.randn(1, 3, 8, 8)
    value = loss(logits, target, labeled_part, box)
    # changing what the ground truth says at ignored voxels does not change the loss
    other = torch.where(ground_truth == ignore, torch.zeros_like(ground_truth), ground_truth)
    labels_other, _ = split_annotated(other, region_based=False, ignore_label=ignore)
    torch.testing.assert_close(loss(logits, paste(labels_other, pseudo, boxes), labeled_part, box), value)


def test_mixed_loss_weights_the_unlabeled_part_by_alpha():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 6, 6)).float()
    box = copy_paste_boxes(2, (6, 6)).float()
    only_labeled = CopyPasteMixedLoss(unlabeled_weight=0.0)(logits, target, 1 - box, box)
    full = CopyPasteMixedLoss(unlabeled_weight=0.5)(logits, target, 1 - box, box)
    only_unlabeled = CopyPasteMixedLoss(unlabeled_weight=1.0)(logits, target, torch.zeros_like(box), box)
    torch.testing.assert_close(full, only_labeled + 0.5 * only_unlabeled)
    # the cross-entropy half is the mean over the part
    ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    expected_ce = (ce * (1 - box[:, 0])).sum() / (1 - box).sum()
    dice_term = 2 * only_labeled - expected_ce  # only_labeled = (CE + (1 - soft Dice)) / 2
    assert 0 < dice_term.item() < 1


def test_channel_dropout_drops_whole_channels_and_rescales():
    torch.manual_seed(4)
    features = torch.ones(4, 64, 3, 3, 3)
    out = channel_dropout(features, 0.5)
    per_channel = out.flatten(2)
    # every channel is all zeros or all 2 (= 1 / (1 - p))
    assert ((per_channel == 0).all(2) | (per_channel == 2).all(2)).all()
    assert 0.3 < (per_channel[..., 0] == 0).float().mean() < 0.7
    assert channel_dropout(features, 0.0) is features
    with pytest.raises(ValueError):
        channel_dropout(features, 1.0)


def test_skip_dropout_hook_perturbs_only_the_chosen_rows():
    torch.manual_seed(5)
    hook = SkipFeatureDropout(0.5)
    skips = [torch.ones(5, 8, 4, 4), torch.ones(5, 16, 2, 2)]
    assert hook(None, (), skips) is None  # inactive: the encoder's output is kept
    hook.rows = (3, 5)
    out = hook(None, (), skips)
    for clean, perturbed in zip(skips, out):
        assert torch.equal(perturbed[:3], clean[:3])
        assert not torch.equal(perturbed[3:], clean[3:])
        assert set(perturbed[3:].unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(TypeError, match="return_skips"):
        hook(torch.nn.Identity(), (), torch.ones(5, 8, 4, 4))
