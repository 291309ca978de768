"""Tests for nnunet_semisup.trainers.dtml.signed_distance: signed distance maps (DTML Eq. 1) and sigmoid(-k z) (Eq. 2)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from nnunet_semisup.trainers.dtml.signed_distance import sdm_to_mask, signed_distance_map

SIZE, CENTRE, RADIUS = 33, 16, 10


def _sphere(size=SIZE, centre=CENTRE, radius=RADIUS) -> np.ndarray:
    grid = np.indices((size,) * 3) - centre
    return np.sqrt((grid**2).sum(0)) <= radius


def _brute_force_sdm(mask: np.ndarray) -> np.ndarray:
    """Eq. 1 by definition: distance to the nearest inner-boundary voxel, negative inside."""
    boundary = mask & ~binary_erosion(mask, border_value=1)
    points = np.argwhere(boundary).astype(float)
    voxels = np.indices(mask.shape).reshape(mask.ndim, -1).T.astype(float)
    distance = np.sqrt(((voxels[:, None, :] - points[None]) ** 2).sum(-1)).min(1).reshape(mask.shape)
    return np.where(mask, -distance, distance)


# --- unnormalized: Eq. 1 on analytic shapes -------------------------------------------------------------


def test_sphere_centre_is_minus_radius():
    sdm = signed_distance_map(_sphere()[None], normalize=False)[0]
    # the discrete boundary lies within one voxel inside the continuous sphere of radius 10
    assert -RADIUS <= sdm[CENTRE, CENTRE, CENTRE] <= -RADIUS + 1
    assert sdm[CENTRE, CENTRE, CENTRE] == sdm.min()  # the deepest point


def test_sphere_axis_values_are_exact():
    sdm = signed_distance_map(_sphere()[None], normalize=False)[0]
    line = sdm[CENTRE:, CENTRE, CENTRE]  # from the centre outwards along x; boundary voxel at distance 10
    # outside along the axis the nearest boundary voxel is the on-axis one: exact integer distances
    np.testing.assert_allclose(line[RADIUS - 1 :], [-1, 0, 1, 2, 3, 4, 5, 6])


def test_sign_convention_and_zero_exactly_on_the_boundary():
    mask = _sphere()
    sdm = signed_distance_map(mask[None], normalize=False)[0]
    boundary = mask & ~binary_erosion(mask, border_value=1)
    assert np.all(sdm[boundary] == 0)
    assert np.all(sdm[mask & ~boundary] < 0)  # inside: negative
    assert np.all(sdm[~mask] > 0)  # outside: positive
    assert np.count_nonzero(sdm == 0) == boundary.sum()


def test_matches_brute_force_definition_on_an_irregular_shape():
    rng = np.random.default_rng(0)
    mask = np.zeros((9, 10, 11), dtype=bool)
    mask[2:7, 3:9, 1:6] = True
    mask[4:9, 1:4, 5:10] = True
    mask &= rng.random(mask.shape) > 0.1  # holes
    np.testing.assert_allclose(
        signed_distance_map(mask[None], normalize=False)[0], _brute_force_sdm(mask), rtol=1e-6
    )


def test_spacing_scales_distances():
    mask = np.zeros((1, 5, 5, 20), dtype=bool)
    mask[..., :5] = True  # a slab: boundary at z = 4
    sdm = signed_distance_map(mask, spacing=(1.0, 1.0, 2.5), normalize=False)[0]
    np.testing.assert_allclose(sdm[2, 2, :], 2.5 * (np.arange(20) - 4))


def test_patch_edge_is_not_a_boundary():
    mask = np.zeros((1, 4, 4, 10), dtype=bool)
    mask[..., :6] = True  # object cut by the patch edge at z = 0
    sdm = signed_distance_map(mask, normalize=False)[0]
    np.testing.assert_allclose(sdm[0, 0, :], np.arange(10) - 5)


# --- normalized -----------------------------------------------------------------------------------------


def test_normalized_range_sign_and_extremes():
    mask = _sphere()
    raw = signed_distance_map(mask[None], normalize=False)[0]
    sdm = signed_distance_map(mask[None])[0]
    assert sdm.dtype == np.float32
    assert sdm.min() == -1.0 and sdm.max() == 1.0
    np.testing.assert_array_equal(np.sign(sdm), np.sign(raw))
    # inside and outside scaled separately by their own maximum
    np.testing.assert_allclose(sdm[mask], raw[mask] / -raw.min(), rtol=1e-6)
    np.testing.assert_allclose(sdm[~mask], raw[~mask] / raw.max(), rtol=1e-6)


def test_absent_class_is_outside_everywhere():
    masks = np.zeros((1, 1, 6, 7, 8), dtype=bool)
    assert np.all(signed_distance_map(masks) == 1.0)
    assert np.all(signed_distance_map(masks, normalize=False) == np.inf)
    assert sdm_to_mask(torch.from_numpy(signed_distance_map(masks))).max() < 1e-6


def test_class_filling_the_patch_is_inside_everywhere():
    masks = np.ones((1, 1, 6, 7, 8), dtype=bool)
    assert np.all(signed_distance_map(masks) == -1.0)
    assert np.all(signed_distance_map(masks, normalize=False) == -np.inf)
    assert sdm_to_mask(torch.from_numpy(signed_distance_map(masks))).min() > 1 - 1e-6


def test_single_voxel_object_has_zero_inside_and_no_nan():
    masks = np.zeros((1, 1, 7, 7, 7), dtype=bool)
    masks[0, 0, 3, 3, 3] = True
    sdm = signed_distance_map(masks)[0, 0]
    assert np.isfinite(sdm).all()
    assert sdm[3, 3, 3] == 0 and sdm.max() == 1.0


def test_multi_class_batch_is_computed_per_sample_and_channel():
    sphere = _sphere()
    cube = np.zeros_like(sphere)
    cube[3:12, 5:20, 8:30] = True
    masks = np.stack([np.stack([sphere, cube]), np.stack([cube, np.zeros_like(cube)])])  # (2, 2, X, Y, Z)
    sdm = signed_distance_map(masks)
    assert sdm.shape == masks.shape
    for b in range(2):
        for c in range(2):
            np.testing.assert_array_equal(sdm[b, c], signed_distance_map(masks[b, c][None])[0])
    assert np.all(sdm[1, 1] == 1.0)  # the absent class


def test_2d_masks():
    disk = np.sqrt(((np.indices((21, 21)) - 10) ** 2).sum(0)) <= 6
    sdm = signed_distance_map(disk[None, None], spatial_dims=2, normalize=False)[0, 0]
    np.testing.assert_allclose(sdm, _brute_force_sdm(disk), rtol=1e-6)


def test_torch_in_torch_out_same_device():
    masks = torch.from_numpy(_sphere()[None, None])
    sdm = signed_distance_map(masks)
    assert isinstance(sdm, torch.Tensor) and sdm.dtype == torch.float32 and sdm.device == masks.device
    np.testing.assert_array_equal(sdm.numpy(), signed_distance_map(masks.numpy()))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="spacing must have 3"):
        signed_distance_map(np.zeros((1, 4, 4, 4), bool), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="at least spatial_dims=3"):
        signed_distance_map(np.zeros((4, 4), bool))


# --- sdm_to_mask ----------------------------------------------------------------------------------------


def test_sdm_to_mask_is_sigmoid_of_minus_k_z():
    z = torch.linspace(-1, 1, 201).view(1, 1, -1)
    torch.testing.assert_close(sdm_to_mask(z, 1500), torch.sigmoid(-1500 * z))
    torch.testing.assert_close(sdm_to_mask(z, 3.0), torch.sigmoid(-3.0 * z))


def test_sdm_to_mask_inside_is_one_outside_zero_boundary_half():
    z = torch.tensor([-1.0, -0.01, 0.0, 0.01, 1.0])
    mask = sdm_to_mask(z)
    assert mask[0] == 1.0 and mask[1] > 0.999999
    assert mask[2] == 0.5
    assert mask[3] < 1e-6 and mask[4] == 0.0


def test_sdm_to_mask_recovers_the_mask_from_its_normalized_sdm():
    mask = _sphere()
    recovered = sdm_to_mask(torch.from_numpy(signed_distance_map(mask[None])))[0].numpy()
    boundary = mask & ~binary_erosion(mask, border_value=1)
    np.testing.assert_allclose(recovered[~boundary], mask[~boundary].astype(np.float32), atol=1e-6)
    assert np.all(recovered[boundary] == 0.5)


def test_sdm_to_mask_half_input_gives_float32_and_bad_k_raises():
    assert sdm_to_mask(torch.zeros(2, dtype=torch.float16)).dtype == torch.float32
    with pytest.raises(ValueError, match="k must be positive"):
        sdm_to_mask(torch.zeros(2), 0)
