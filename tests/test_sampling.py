"""Tests for nnunet_semisup.trainers.secl.cube_sampling (AACS and RACS) and the view augmentation of SECL."""

import pytest
import torch

from nnunet_semisup.trainers.secl.cube_sampling import (
    anatomical_cube_slots,
    class_centres,
    crop_cubes,
    cube_starts,
    effective_cube_size,
    fit_region_grid,
    minimum_crop_size,
    region_grid,
    region_masks,
)
from nnunet_semisup.trainers.secl.view_augmentation import ViewAugmentation


def _curved_label_map():
    """(2, 16, 16, 16): image 0 has a U-shaped class 1 (its centroid lies outside it) and a block of class 2;
    image 1 has only class 2."""
    seg = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    seg[0, 2:12, 2:4, 2:5] = 1
    seg[0, 2:12, 12:14, 2:5] = 1
    seg[0, 10:12, 2:14, 2:5] = 1
    seg[0, 13:16, 13:16, 10:16] = 2
    seg[1, 0:3, 0:2, 0:4] = 2
    return seg


def test_class_centres_lie_inside_the_predicted_class_even_when_the_centroid_does_not():
    seg = _curved_label_map()
    centroid = (seg[0] == 1).nonzero().float().mean(0).round().long()
    assert seg[0][tuple(centroid)] != 1  # the U's centroid is outside it: a naive centre would miss
    centres, present = class_centres(seg, [1, 2])
    assert present.tolist() == [[True, True], [False, True]]
    for b in range(2):
        for i, label in enumerate([1, 2]):
            if present[b, i]:
                assert seg[b][tuple(centres[b, i])] == label
    assert centres[1, 0].tolist() == [-1, -1, -1]


def test_aacs_default_k_is_one_cube_per_class_and_image_centred_inside_the_class():
    seg = _curved_label_map()
    slots = anatomical_cube_slots(seg, [1, 2], generator=torch.Generator().manual_seed(0))
    assert slots.centres.shape == (4, 3)
    pairs = sorted(zip(slots.image_index.tolist(), slots.classes.tolist()))
    assert pairs == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for b, c, centre, anchored in zip(slots.image_index, slots.classes, slots.centres, slots.anchored):
        if (seg[b] == c).any():
            assert anchored and seg[b][tuple(centre)] == c
        else:  # class 1 is absent from image 1: a random centre, flagged
            assert not anchored and (b, c) == (1, 1)


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_aacs_any_k_at_least_c_covers_every_class_without_duplicate_cubes(k):
    seg = _curved_label_map()
    slots = anatomical_cube_slots(seg, [1, 2], num_cubes=k, generator=torch.Generator().manual_seed(k))
    assert slots.centres.shape[0] == k
    assert set(slots.classes.tolist()) == {1, 2}
    for b, c, centre, anchored in zip(slots.image_index, slots.classes, slots.centres, slots.anchored):
        assert anchored == bool((seg[b] == c).any())
        if anchored:
            assert seg[b][tuple(centre)] == c
    keys = {(int(b), *c.tolist()) for b, c in zip(slots.image_index, slots.centres)}
    assert len(keys) == k or k > 4  # beyond B*C, random voxels of the class may rarely coincide


def test_aacs_absent_classes_get_uniform_random_centres_not_copies_of_present_ones():
    seg = torch.zeros(1, 12, 12, 12, dtype=torch.long)  # early training: nothing predicted
    generator = torch.Generator().manual_seed(0)
    centres = torch.cat(
        [anatomical_cube_slots(seg, [1, 2, 3], generator=generator).centres for _ in range(300)]
    ).float()
    assert ((centres >= 0) & (centres < 12)).all()
    # unbiased: uniform over the patch (mean 5.5 per axis), not piled up on a few locations
    assert torch.allclose(centres.mean(0), torch.full((3,), 5.5), atol=0.5)
    assert len({tuple(c.tolist()) for c in centres}) > 500


def test_aacs_rejects_k_below_the_number_of_classes():
    with pytest.raises(ValueError, match="num_cubes"):
        anatomical_cube_slots(_curved_label_map(), [1, 2, 3], num_cubes=2)
    with pytest.raises(ValueError, match="integer"):
        class_centres(torch.zeros(1, 4, 4), [1])


def test_cubes_are_shifted_inside_the_patch_at_borders_and_keep_their_size_and_centre():
    shape = (16, 20, 12)
    centres = torch.tensor([[0, 0, 0], [15, 19, 11], [8, 10, 6], [1, 18, 6]])
    starts = cube_starts(centres, (8, 8, 8), shape)
    assert starts.tolist()[0] == [0, 0, 0]
    assert starts.tolist()[1] == [8, 12, 4]
    assert starts.tolist()[2] == [4, 6, 2]
    for start, centre in zip(starts, centres):
        assert ((start >= 0) & (start + 8 <= torch.tensor(shape))).all()
        assert ((centre >= start) & (centre < start + 8)).all()
    images = torch.arange(2 * 16 * 20 * 12, dtype=torch.float32).reshape(2, 1, *shape)
    cubes = crop_cubes(images, torch.tensor([0, 1, 1, 0]), starts, (8, 8, 8))
    assert cubes.shape == (4, 1, 8, 8, 8)
    assert torch.equal(cubes[1], images[1, :, 8:16, 12:20, 4:12])
    with pytest.raises(ValueError, match="does not fit"):
        cube_starts(centres, (8, 24, 8), shape)


def test_cube_size_adapts_to_small_patches_and_deep_encoders():
    # 32^3 patch, total stride 16: a 1-voxel bottleneck on every axis would break instance norm
    minimum = minimum_crop_size([16, 16, 16], [32, 32, 32])
    assert minimum == (32, 16, 16)
    assert effective_cube_size(24, [32, 32, 32], minimum) == (32, 24, 24)
    assert effective_cube_size(48, [40, 56, 40], minimum_crop_size([8, 8, 8], [40, 56, 40])) == (40, 48, 40)
    assert fit_region_grid((2, 2, 2), (32, 32, 32), minimum) == (1, 2, 2)


def test_region_grid_partitions_the_patch():
    starts, size = region_grid((8, 6, 4), (2, 3, 1))
    assert size == (4, 2, 4)
    assert starts.tolist() == [[0, 0, 0], [0, 2, 0], [0, 4, 0], [4, 0, 0], [4, 2, 0], [4, 4, 0]]
    # a smaller cube sits in the centre of its region; a larger one is capped at the region
    starts, size = region_grid((9, 6, 4), (2, 3, 1), cube_size=(2, 8, 2))
    assert size == (2, 2, 2)
    assert starts.tolist() == [[1, 0, 1], [1, 2, 1], [1, 4, 1], [5, 0, 1], [5, 2, 1], [5, 4, 1]]


def test_racs_masks_on_a_hand_made_example():
    # two images x two regions: samples (image 0, region 0), (0, 1), (1, 0), (1, 1); candidates: view a of the
    # four samples, then view b of the four
    positive, negative = region_masks(torch.tensor([0, 1, 0, 1]))
    expected_positive = torch.tensor(
        [
            # view a: s0 s1 s2 s3 | view b: s0 s1 s2 s3
            [0, 0, 1, 0, 1, 0, 1, 0],  # anchor (0, r0): r0 of image 1 in both views, its own view b
            [0, 0, 0, 1, 0, 1, 0, 1],
            [1, 0, 0, 0, 1, 0, 1, 0],
            [0, 1, 0, 0, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    expected_negative = torch.tensor(
        [
            [0, 1, 0, 1, 0, 1, 0, 1],  # every region-1 sample, both views
            [1, 0, 1, 0, 1, 0, 1, 0],
            [0, 1, 0, 1, 0, 1, 0, 1],
            [1, 0, 1, 0, 1, 0, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(positive, expected_positive)
    assert torch.equal(negative, expected_negative)


def test_view_augmentation_is_identity_with_all_ranges_off_and_changes_views_otherwise():
    torch.manual_seed(0)
    crops = torch.randn(3, 2, 8, 10, 6)
    off = ViewAugmentation(0.0, (1.0, 1.0), 0.0, 4, 0.0, ())
    assert torch.allclose(off(crops), crops, atol=1e-5)
    flip_only = ViewAugmentation(0.0, (1.0, 1.0), 0.0, 4, 0.0, (1,))
    out = flip_only(crops)
    for i in range(3):
        assert torch.allclose(out[i], crops[i], atol=1e-5) or torch.allclose(
            out[i], crops[i].flip(2), atol=1e-5
        )
    view = ViewAugmentation()
    a, b = view(crops), view(crops)
    assert a.shape == crops.shape and not torch.allclose(a, b)
    assert view(torch.randn(2, 1, 12, 12)).shape == (2, 1, 12, 12)  # 2D crops
