"""FixMatch's parts on hand-made tensors: pseudo-labels and confidences, the confidence mask and its
normalization, CutMix with one box for images, labels and confidences, the strong view's intensity-only
perturbations, and deep-supervision targets downsampled like nnU-Net's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semisup.losses.masked_cross_entropy import MaskedCrossEntropyLoss
from nnunet_semisup.losses.masked_soft_dice import MaskedSoftDiceLoss
from nnunet_semisup.segmentation_targets import (
    deep_supervised_loss,
    downsample_for_deep_supervision,
    pseudo_labels,
    split_annotated,
    split_outputs,
)
from nnunet_semisup.trainers.fixmatch.cutmix import cutmix, random_boxes, rolled_source
from nnunet_semisup.trainers.fixmatch.strong_augmentation import (
    StrongIntensityAugmentation,
    gaussian_blur,
    simulate_low_resolution,
)


def _logits_from_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    return probabilities.log()


def test_pseudo_labels_are_argmax_and_max_probability():
    probabilities = torch.tensor([[0.96, 0.02, 0.02], [0.30, 0.50, 0.20], [0.01, 0.04, 0.95]])  # 3 voxels
    logits = _logits_from_probabilities(probabilities.T.reshape(1, 3, 3, 1, 1))
    labels, confidence = pseudo_labels(logits, region_based=False)
    assert labels.shape == confidence.shape == (1, 1, 3, 1, 1)
    assert labels.flatten().tolist() == [0, 1, 2]
    torch.testing.assert_close(confidence.flatten(), torch.tensor([0.96, 0.50, 0.95]))


def test_region_pseudo_labels_threshold_each_sigmoid_at_half():
    p = torch.tensor([0.97, 0.40, 0.03, 0.5001]).reshape(1, 1, 4, 1)
    labels, confidence = pseudo_labels(torch.logit(p.repeat(1, 2, 1, 1)), region_based=True)
    assert labels.shape == (1, 2, 4, 1)
    assert labels[0, 0].flatten().tolist() == [1, 0, 0, 1]
    torch.testing.assert_close(confidence[0, 0].flatten(), torch.tensor([0.97, 0.60, 0.97, 0.5001]))


def test_confidence_mask_is_exact_and_loss_is_averaged_over_all_voxels():
    # a hand-made probability map over 2 x 4 voxels: confident (>= 0.95) exactly where marked
    probabilities = torch.tensor(
        [[0.95, 0.949, 0.99, 0.50], [0.10, 0.97, 0.9499, 1.0 - 1e-6]], dtype=torch.float64
    )  # probability of class 1 per voxel
    two_class = torch.stack([1 - probabilities, probabilities], 1).float().reshape(2, 2, 4, 1, 1)
    labels, confidence = pseudo_labels(two_class.log(), region_based=False)
    mask = (confidence >= 0.95).float()
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.float32)
    assert torch.equal(mask.reshape(2, 4), expected)

    student = torch.randn(2, 2, 4, 1, 1)
    loss = MaskedCrossEntropyLoss(normalization="all")(student, labels, mask)
    per_voxel = F.cross_entropy(student, labels[:, 0].long(), reduction="none")
    # divided by all 8 voxels, not by the 4 confident ones
    torch.testing.assert_close(loss, (per_voxel * mask[:, 0]).sum() / 8)
    masked_mean = MaskedCrossEntropyLoss(normalization="mask")(student, labels, mask)
    torch.testing.assert_close(masked_mean, (per_voxel * mask[:, 0]).sum() / 4)
    # nothing confident: the "all" loss is zero, not NaN
    zero = MaskedCrossEntropyLoss()(student, labels, torch.zeros_like(mask))
    assert zero.item() == 0.0


def test_masked_losses_never_read_labels_of_voxels_with_zero_weight():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 1, 4, 4)).float()
    weight = torch.ones(1, 1, 4, 4)
    weight[..., 0] = 0
    corrupted = labels.clone()
    corrupted[..., 0] = 7  # an ignore label: out of the class range
    for loss in (MaskedCrossEntropyLoss(), MaskedSoftDiceLoss()):
        torch.testing.assert_close(loss(logits, corrupted, weight), loss(logits, labels, weight))


def test_masked_dice_equals_soft_dice_on_the_kept_voxels():
    logits = torch.randn(2, 3, 5, 5)
    labels = torch.randint(0, 3, (2, 1, 5, 5)).float()
    weight = (torch.rand(2, 1, 5, 5) > 0.4).float()
    loss = MaskedSoftDiceLoss(batch_dice=True, smooth=0.0)(logits, labels, weight)
    p = torch.softmax(logits, 1)
    kept = weight[:, 0].bool()
    dices = []
    for c in (1, 2):
        pc, tc = p[:, c][kept], (labels[:, 0] == c)[kept].float()
        dices.append(2 * (pc * tc).sum() / (pc.sum() + tc.sum()))
    torch.testing.assert_close(loss, 1 - torch.stack(dices).mean())


def test_cutmix_mixes_images_labels_and_confidences_with_one_identical_box():
    torch.manual_seed(0)
    b, shape = 3, (8, 10, 12)
    boxes = random_boxes(b, shape, probability=1.0, volume_range=(0.1, 0.3))
    assert boxes.shape == (b, 1, *shape) and boxes.dtype == torch.bool
    images = torch.randn(b, 2, *shape)
    labels = torch.randint(0, 3, (b, 1, *shape)).float()
    confidence = torch.rand(b, 1, *shape)
    source = rolled_source(b)
    assert source.tolist() == [2, 0, 1]
    mixed_images, mixed_labels, mixed_confidence = cutmix([images, labels, confidence], boxes, source)
    for i in range(b):
        box = boxes[i, 0]
        # a single axis-aligned box of 10-30 % of the patch (up to rounding of the sides)
        idx = box.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        assert box.sum() == torch.prod(hi - lo)
        assert 0.05 < box.float().mean() < 0.4
        for mixed, original in (
            (mixed_images, images),
            (mixed_labels, labels),
            (mixed_confidence, confidence),
        ):
            assert torch.equal(mixed[i][:, box], original[source[i]][:, box])
            assert torch.equal(mixed[i][:, ~box], original[i][:, ~box])


def test_random_boxes_respect_the_probability_and_2d_patches():
    torch.manual_seed(1)
    assert not random_boxes(4, (6, 6), probability=0.0).any()
    boxes = random_boxes(200, (16, 16), probability=0.5)
    with_box = boxes.flatten(1).any(1).float().mean()
    assert 0.35 < with_box < 0.65
    with pytest.raises(ValueError, match="volume_range"):
        random_boxes(1, (4, 4, 4), volume_range=(0.0, 0.4))


@pytest.mark.parametrize("shape", [(2, 1, 12, 14, 10), (3, 2, 20, 18)])
def test_strong_view_keeps_shape_dtype_device_and_geometry(shape):
    torch.manual_seed(2)
    images = torch.zeros(*shape)
    # a bright cube off the centre: its intensity-weighted centre must stay where it is (no flips, shifts,
    # rotations; blur and simulated low resolution smooth it in place)
    cube = tuple(slice(2, 6) for _ in shape[2:])
    images[(slice(None), slice(None), *cube)] = 1
    every = StrongIntensityAugmentation(
        noise_probability=0.0,
        blur_probability=1.0,
        brightness_probability=1.0,
        contrast_probability=1.0,
        lowres_probability=1.0,
        gamma_probability=1.0,
    )
    strong = every(images)
    assert strong.shape == images.shape and strong.dtype == images.dtype and strong.device == images.device
    assert not torch.equal(strong, images)
    assert torch.isfinite(strong).all()
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape[2:]], indexing="ij")

    def centre(x):
        w = x - x.amin(tuple(range(2, x.ndim)), keepdim=True)
        return torch.stack(
            [(w * g).sum(tuple(range(2, x.ndim))) / w.sum(tuple(range(2, x.ndim))) for g in grids]
        )

    assert (centre(strong) - centre(images)).abs().max() < 0.5
    # a flipped cube would have moved by several voxels
    assert (centre(images.flip(2)) - centre(images)).abs().max() > 3
    # the default configuration on half precision input keeps dtype
    assert StrongIntensityAugmentation()(images.half()).dtype == torch.float16


def test_blur_and_low_resolution_leave_unselected_samples_untouched():
    images = torch.randn(3, 1, 9, 9, 9)
    blurred = gaussian_blur(images, torch.tensor([0.0, 1.5, 0.0]))
    assert torch.equal(blurred[0], images[0]) or torch.allclose(blurred[0], images[0], atol=1e-6)
    assert not torch.allclose(blurred[1], images[1])
    # blurring a constant image keeps it constant (replicated edges, normalized kernel)
    flat = gaussian_blur(torch.full((1, 1, 7, 7), 3.0), torch.tensor([2.0]))
    torch.testing.assert_close(flat, torch.full((1, 1, 7, 7), 3.0))
    low = simulate_low_resolution(images, torch.tensor([1.0, 0.5, 1.0]))
    assert torch.equal(low[0], images[0]) and torch.equal(low[2], images[2])
    assert not torch.equal(low[1], images[1])


def test_split_annotated_handles_ignore_label_for_labels_and_regions():
    target = torch.tensor([0, 1, 2, 3]).reshape(1, 1, 4, 1).float()
    labels, annotated = split_annotated(target, region_based=False, ignore_label=3)
    assert labels.flatten().tolist() == [0, 1, 2, 0] and annotated.flatten().tolist() == [1, 1, 1, 0]
    regions = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]]).reshape(1, 3, 4, 1).float()
    labels, annotated = split_annotated(regions, region_based=True, ignore_label=3)
    assert labels.shape == (1, 2, 4, 1) and annotated.flatten().tolist() == [1, 1, 1, 0]


def test_deep_supervision_targets_match_nnunet_downsampling():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    scales = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.5, 0.5]]
    seg = torch.randint(0, 4, (2, 1, 8, 12, 10)).to(torch.int16)
    ours = downsample_for_deep_supervision(seg, scales)
    for b in range(2):
        theirs = DownsampleSegForDSTransform(scales)(segmentation=seg[b].clone())["segmentation"]
        for level in range(3):
            assert torch.equal(ours[level][b], theirs[level])

    # levels weighted as nnU-Net's wrapper; a level of weight 0 is not evaluated
    output = [torch.randn(2, 4, *t.shape[2:]) for t in ours]
    calls = []

    def loss(logits, labels):
        calls.append(logits.shape)
        return logits.mean() * 0 + labels.float().mean()

    total = deep_supervised_loss(loss, output, [seg], scales, [0.6, 0.4, 0.0])
    assert len(calls) == 2
    torch.testing.assert_close(total, 0.6 * ours[0].float().mean() + 0.4 * ours[1].float().mean())
    parts = split_outputs(output, [1, 1])
    assert len(parts) == 2 and all(len(p) == 3 and p[0].shape[0] == 1 for p in parts)


def test_box_volume_matches_the_requested_fraction_on_average():
    torch.manual_seed(3)
    boxes = random_boxes(300, (32, 32, 32), probability=1.0, volume_range=(0.2, 0.2), aspect_range=(1.0, 1.0))
    side = round(32 * 0.2 ** (1 / 3))
    assert torch.allclose(boxes.flatten(1).float().sum(1), torch.full((300,), float(side**3)))
    assert math.isclose(side**3 / 32**3, 0.2, rel_tol=0.15)
