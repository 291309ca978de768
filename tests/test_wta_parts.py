"""Unit tests of the winner-take-all pieces: the WTA operator, receptive-field decoders, Huber loss, phi, and the
per-group poly learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_semisup.trainers.wta.autoencoder import (
    WTAAutoencoderHeads,
    encoder_level_convs,
    encoder_level_features,
    level_receptive_field,
    weight_norm_phi,
    winner_take_all,
    wta_heads_for_plans,
)
from nnunet_semisup.trainers.wta.poly_lr import PerGroupPolyLRScheduler
from nnunet_semisup.trainers.wta.reconstruction_loss import WTAReconstructionLoss

PLAIN_ARCH = {
    "n_stages": 3,
    "features_per_stage": [4, 8, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3], [3, 3, 3], [1, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2]],
    "n_conv_per_stage": [2, 2, 2],
}


@pytest.mark.parametrize("k", [1, 5, 17])
def test_winner_take_all_keeps_exactly_k_per_feature_map(k):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 7, 5)
    y = winner_take_all(x, k)
    nonzero = (y != 0).flatten(2).sum(-1)
    assert torch.equal(nonzero, torch.full((3, 4), k))
    # the survivors are the k largest of their map, unchanged
    kept = torch.sort(y.flatten(2), -1, descending=True).values[..., :k]
    assert torch.equal(kept, torch.topk(x.flatten(2), k, -1).values)


def test_winner_take_all_exactly_k_with_ties_and_gradient_only_through_winners():
    x = torch.ones(2, 3, 4, 4, 4, requires_grad=True)  # every activation tied
    y = winner_take_all(x, 5)
    assert torch.equal((y != 0).flatten(2).sum(-1), torch.full((2, 3), 5))
    y.sum().backward()
    assert torch.equal(x.grad.flatten(2).sum(-1), torch.full((2, 3), 5.0))
    # k at least the map size keeps everything
    z = torch.randn(1, 2, 2, 2, 2)
    assert torch.equal(winner_take_all(z, 8), z)
    with pytest.raises(ValueError, match="k must be >= 1"):
        winner_take_all(z, 0)


def test_receptive_field_of_nnunet_levels():
    assert level_receptive_field(*encoder_level_convs(PLAIN_ARCH, 0)) == ([5, 5, 5], [1, 1, 1])
    assert level_receptive_field(*encoder_level_convs(PLAIN_ARCH, 1)) == ([7, 7, 7], [2, 2, 2])
    # anisotropic: kernel 1 along the first axis, no stride there
    assert level_receptive_field(*encoder_level_convs(PLAIN_ARCH, 2)) == ([1, 7, 7], [1, 2, 2])
    res = {
        **{k: v for k, v in PLAIN_ARCH.items() if k != "n_conv_per_stage"},
        "n_blocks_per_stage": [1, 1, 1],
    }
    # ResidualEncoder: stem conv + one block (two convs) at level 0
    assert level_receptive_field(*encoder_level_convs(res, 0)) == ([7, 7, 7], [1, 1, 1])
    with pytest.raises(ValueError, match="n_conv_per_stage"):
        encoder_level_convs({"kernel_sizes": [[3, 3, 3]], "strides": [[1, 1, 1]]}, 0)


def _plain_encoder():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        1, 3, [4, 8, 16], torch.nn.Conv3d, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [2, 2, 2], 2,
        [2, 2], conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    ).encoder  # fmt: skip


def test_heads_reconstruct_each_level_input_with_matching_shapes():
    torch.manual_seed(0)
    encoder = _plain_encoder()
    arch = {**PLAIN_ARCH, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "kernel_sizes": [[3, 3, 3]] * 3}
    heads = wta_heads_for_plans(arch, 1, 3, k=5)
    x = torch.randn(2, 1, 9, 14, 11)  # odd sizes: the transposed convs must hit them exactly
    inputs, outputs = encoder_level_features(encoder, x, 3)
    assert [tuple(t.shape) for t in inputs] == [(2, 1, 9, 14, 11), (2, 4, 9, 14, 11), (2, 8, 5, 7, 6)]
    assert inputs[0] is x
    for level in range(3):
        recon = heads.reconstruct(level, outputs[level], inputs[level].shape[2:])
        assert recon.shape == inputs[level].shape
    loss, per_level = heads(inputs, outputs)
    assert len(per_level) == 3 and torch.isclose(loss, torch.stack(per_level).mean())
    # pretraining detaches level inputs: level 1's loss trains stage 1 only, not stage 0
    encoder.zero_grad()
    per_level[1].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder.stages[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.stages[1].parameters())
    # multi-task: not detached, level 1's loss reaches stage 0 too
    encoder.zero_grad()
    inputs, outputs = encoder_level_features(encoder, x, 2, detach_level_inputs=False)
    with pytest.raises(ValueError, match="expected 3 level inputs"):
        heads(inputs, outputs)
    _, per_level = WTAAutoencoderHeads([1, 4], [4, 8], [[5] * 3, [7] * 3], [[1] * 3, [2] * 3])(
        inputs, outputs
    )
    per_level[1].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.stages[0].parameters())


def test_huber_loss_matches_definition_and_validates():
    loss = WTAReconstructionLoss()
    recon = torch.tensor([0.0, 0.5, 3.0]).view(1, 1, 3)
    target = torch.zeros(1, 1, 3)
    # 0, 0.5 * 0.5^2, |3| - 0.5
    assert math.isclose(float(loss(recon, target)), (0 + 0.125 + 2.5) / 3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        loss(recon, torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="delta"):
        WTAReconstructionLoss(0)


def test_weight_norm_phi():
    fresh = {"a": torch.full((2, 2), 1.0), "b": torch.zeros(3)}
    pretrained = {"a": torch.full((2, 2), 4.0), "b": torch.zeros(3)}
    assert math.isclose(weight_norm_phi(fresh, pretrained), 0.25)
    with pytest.raises(ValueError):
        weight_norm_phi(fresh, {"a": fresh["a"]})


def test_per_group_poly_lr_keeps_low_lr_groups_low():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD(
        [{"params": [a]}, {"params": [b], "lr": 8e-5, "initial_lr": 8e-5}], 1e-2, momentum=0.99
    )
    scheduler = PerGroupPolyLRScheduler(optimizer, 1e-2, 10)
    scheduler.step(5)
    factor = (1 - 5 / 10) ** 0.9
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-2 * factor)
    assert math.isclose(optimizer.param_groups[1]["lr"], 8e-5 * factor)
    # a restored optimizer state keeps each group's initial lr
    state = optimizer.state_dict()
    optimizer2 = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], 1e-2)
    optimizer2.load_state_dict(state)
    PerGroupPolyLRScheduler(optimizer2, 1e-2, 10).step(0)
    assert math.isclose(optimizer2.param_groups[1]["lr"], 8e-5)


def test_gaussian_patch_centres_around_the_image_centre():
    import numpy as np

    from nnunet_semisup.data.loader import gaussian_centre_bbox

    rng = np.random.default_rng(0)
    shape, patch = (400, 200, 120), (10, 10, 10)
    lbs, ubs = [-50, -50, -50], [s + 50 for s in shape]
    centres = []
    for _ in range(4000):
        lower, upper = gaussian_centre_bbox(shape, patch, lbs, ubs, rng=rng)
        assert [u - lo for lo, u in zip(lower, upper)] == list(patch)
        centres.append([lo + p / 2 for lo, p in zip(lower, patch)])
    centres = np.array(centres)
    np.testing.assert_allclose(centres.mean(0), np.array(shape) / 2, rtol=0.03)
    np.testing.assert_allclose(centres.std(0), np.array(shape) / 4, rtol=0.05)
    # the box never leaves nnU-Net's bounds
    lower, _ = zip(*(gaussian_centre_bbox((20, 20), (16, 16), [0, 0], [4, 4], rng=rng) for _ in range(200)))
    assert all(0 <= v <= 4 for box in lower for v in box)


def test_decoder_kernel_is_the_receptive_field_within_the_encoder_stage_budget():
    from nnunet_semisup.trainers.wta.autoencoder import decoder_kernel_size, encoder_level_weights

    # fits: the receptive field itself
    assert decoder_kernel_size([7, 7, 7], [2, 2, 2], 4, 2, budget=4 * 2 * 343) == [7, 7, 7]
    # over budget: largest axes shrink by 2 in turn, odd sizes, never below the stride's footprint
    assert decoder_kernel_size([7, 7, 7], [2, 2, 2], 4, 2, budget=4 * 2 * 125) == [5, 5, 5]
    assert decoder_kernel_size([1, 9, 7], [1, 2, 2], 4, 2, budget=4 * 2 * 50) == [1, 7, 7]
    assert decoder_kernel_size([47, 47, 47], [2, 2, 2], 320, 320, budget=1) == [3, 3, 3]
    assert decoder_kernel_size([5, 5], [1, 1], 320, 320, budget=1) == [1, 1]
    # the budget: the stage's convolutions (first one from the level input, the rest within the level)
    assert encoder_level_weights(PLAIN_ARCH, 1, 4) == 4 * 8 * 27 + 8 * 8 * 27


def test_wta_decoders_of_residual_encoder_presets_stay_within_their_encoder_stages():
    """nnU-Net's ResEnc presets (32-320 features, 1, 3, 4, 6, 6, 6 blocks): receptive-field kernels would need
    about 23 billion weights; every decoder now has at most its stage's encoder weights."""
    from nnunet_semisup.trainers.wta.autoencoder import encoder_level_weights

    arch = {
        "features_per_stage": [32, 64, 128, 256, 320, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
        "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    }
    with torch.device("meta"):  # shapes only, no memory
        heads = wta_heads_for_plans(arch, 1, 6)
    inputs = [1, 32, 64, 128, 256, 320]
    for level, decoder in enumerate(heads.decoders):
        weights = decoder.conv.weight.numel()
        assert weights <= encoder_level_weights(arch, level, inputs[level])
        assert all(k % 2 == 1 and k >= 3 for k in decoder.conv.kernel_size)
    assert sum(p.numel() for p in heads.parameters()) < 60_000_000
