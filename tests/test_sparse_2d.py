"""The 2D base model's parts: slice-wise application along each plane (xz/yz results transposed back correctly on
an asymmetric volume) and the sampler of annotated slices (Eq. 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_semisup.trainers.sparsification.networks import SliceWiseNetwork, network_axis, plainconv_unet_2d
from nnunet_semisup.trainers.sparsification.sparse_2d import SparseSliceLoader


class _ShiftAlongWidth(nn.Module):
    """A 2D 'network' whose output at (h, w) is the input at (h, w + 1) (zero at the border) in channel 0 and
    the row index h in channel 1: results that depend on the slice's orientation."""

    decoder = nn.Module()

    def forward(self, x):
        shifted = torch.zeros_like(x[:, :1])
        shifted[..., :-1] = x[:, :1, :, 1:]
        rows = torch.arange(x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1).expand_as(shifted)
        return torch.cat([shifted, rows], 1)


@pytest.mark.parametrize("plane_axis", [0, 1, 2])
def test_slice_wise_prediction_puts_every_plane_back_in_place_on_an_asymmetric_volume(plane_axis):
    volume = torch.randn(2, 1, 5, 7, 9)  # three different extents: a swapped axis changes the shape
    net = SliceWiseNetwork(_ShiftAlongWidth(), (1, 1), plane_axis)
    out = net(volume).numpy()
    assert out.shape == (2, 2, 5, 7, 9)
    v = volume.numpy()[:, 0]
    expected = np.zeros_like(v)
    expected_rows = np.zeros_like(v)
    other = [a for a in range(3) if a != plane_axis]  # the slice's (h, w) axes, in order
    for i in range(v.shape[1 + plane_axis]):
        slc = np.take(v, i, axis=1 + plane_axis)  # (B, h, w)
        shifted = np.zeros_like(slc)
        shifted[..., :-1] = slc[..., 1:]
        rows = np.broadcast_to(np.arange(slc.shape[1])[None, :, None], slc.shape)
        index = [slice(None)] * 4
        index[1 + plane_axis] = i
        expected[tuple(index)] = shifted
        expected_rows[tuple(index)] = rows
    assert np.allclose(out[:, 0], expected)
    assert np.array_equal(out[:, 1], expected_rows)
    assert other  # documents the convention: h is the first remaining axis, w the second


def test_real_2d_unet_pads_odd_slices_and_network_axis_follows_transpose_forward():
    arch = {"n_stages": 3, "features_per_stage": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}  # fmt: skip
    net2d, divisor = plainconv_unet_2d(arch, 1, 3, False)
    assert divisor == (4, 4)
    net = SliceWiseNetwork(net2d, divisor, 2)
    assert net(torch.randn(1, 1, 5, 7, 9)).shape == (1, 3, 5, 7, 9)
    assert network_axis("xy", [0, 1, 2]) == 0 and network_axis("yz", [0, 1, 2]) == 2
    # plans that transpose raw (z, y, x) to (x, z, y): raw axis 2 (yz slices) is the network's axis 0
    assert network_axis("yz", [2, 0, 1]) == 0 and network_axis("xy", [2, 0, 1]) == 1


def test_sparse_slice_loader_samples_only_annotated_slices_of_every_plane():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 6, 8, 10)).astype(np.float32)
    seg = np.full((6, 8, 10), 3, dtype=np.int16)
    seg[2] = rng.integers(0, 3, size=(8, 10))  # one xy slice annotated
    seg[:, :, 7] = rng.integers(0, 3, size=(6, 8))  # one yz slice annotated
    image[0, 2] = 100.0  # mark the annotated xy slice in the image
    loader = SparseSliceLoader(
        {"c": (image, seg)}, 4, [4, 4, 4], {"xy": 0, "xz": 1, "yz": 2}, 3, augment=False, seed=1
    )
    # sampled: the annotated slices of each plane (xy 2, yz 7); slices that only cross an annotated slice of
    # another plane hold one annotated line and are not sampled, so no xz slice qualifies
    assert sorted(loader.annotated) == ["xy", "yz"]
    assert list(loader.annotated["xy"]["c"]) == [2]
    assert list(loader.annotated["yz"]["c"]) == [7]
    # every slice holding an annotated voxel, as before, when the threshold is 0
    anywhere = SparseSliceLoader({"c": (image, seg)}, 4, [4, 4, 4], {"xy": 0, "xz": 1, "yz": 2}, 3,
                                 min_annotated_fraction=0.0)  # fmt: skip
    assert list(anywhere.annotated["xy"]["c"]) == list(range(6))
    assert list(anywhere.annotated["xz"]["c"]) == list(range(8))
    assert list(anywhere.annotated["yz"]["c"]) == list(range(10))
    only_xy = SparseSliceLoader({"c": (image, np.where(np.arange(6)[:, None, None] == 2, seg, 3))}, 2, [4, 4, 4],
                                {"xy": 0, "yz": 2}, 3)  # fmt: skip
    assert list(only_xy.annotated["xy"]["c"]) == [2] and "yz" not in only_xy.annotated
    batch = next(only_xy)
    if batch["plane"] == "xy":
        assert (batch["data"][batch["target"] != 3] == 100.0).all()
    planes = set()
    loader = anywhere
    for _ in range(30):
        batch = next(loader)
        planes.add(batch["plane"])
        assert batch["data"].shape == (4, 1, 4, 4) and batch["target"].shape == (4, 1, 4, 4)
        assert (batch["target"] != 3).any(dim=(1, 2, 3)).all()  # every patch holds annotated voxels
    assert planes == {"xy", "xz", "yz"}
    with pytest.raises(RuntimeError, match="resampling erased them"):
        SparseSliceLoader({"c": (image, np.full_like(seg, 3))}, 4, [4, 4, 4], {"xy": 0}, 3)


def test_sparse_slice_loader_trains_on_annotated_slices_not_on_the_lines_other_planes_cross():
    """Real sparse data: per case one annotated slice per plane crosses every slice of the other planes, so most
    slices holding an annotated voxel carry a single line. The loader samples whole annotated slices."""
    rng = np.random.default_rng(3)
    image = rng.uniform(1, 2, size=(1, 9, 12, 10)).astype(np.float32)  # nonzero: patch padding is 0
    seg = np.full((9, 12, 10), 3, dtype=np.int16)
    seg[4] = rng.integers(0, 3, size=(12, 10))
    seg[:, 6] = rng.integers(0, 3, size=(9, 10))
    seg[:, :, 1] = rng.integers(0, 3, size=(9, 12))
    loader = SparseSliceLoader(
        {"c": (image, seg)}, 8, [9, 12, 10], {"xy": 0, "xz": 1, "yz": 2}, 3, augment=False, seed=0
    )
    assert {p: list(v["c"]) for p, v in loader.annotated.items()} == {"xy": [4], "xz": [6], "yz": [1]}
    planes = set()
    for _ in range(20):
        batch = next(loader)
        planes.add(batch["plane"])
        # every voxel of a patch that lies in the image is annotated (whole annotated slices, no lines)
        assert ((batch["data"] != 0) == (batch["target"] != 3)).all()
    assert planes == {"xy", "xz", "yz"}
    # only lines annotated anywhere (no slice reaches the threshold): falls back to any annotated voxel
    lines = np.full((9, 12, 10), 3, dtype=np.int16)
    lines[4, 6] = 1
    fallback = SparseSliceLoader({"c": (image, lines)}, 2, [9, 12, 10], {"xy": 0, "xz": 1}, 3)
    assert {p: list(v["c"]) for p, v in fallback.annotated.items()} == {"xy": [4], "xz": [6]}


def test_2d_trainer_uses_batch_dice_like_nnunet_2d_configurations():
    from types import SimpleNamespace

    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_semisup.trainers.sparsification.sparse_2d import SparseMultiPlane2DTrainer

    trainer = object.__new__(SparseMultiPlane2DTrainer)  # only what nnU-Net's _build_loss reads
    trainer.label_manager = SimpleNamespace(has_regions=False, ignore_label=3)
    trainer.configuration_manager = SimpleNamespace(batch_dice=False)  # the 3D plans' value
    trainer.is_ddp = False
    trainer.enable_deep_supervision = False
    trainer._do_i_compile = lambda: False
    loss = trainer._build_loss()
    assert loss.dc.batch_dice is True
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, 7)
    target = torch.randint(0, 4, (4, 1, 6, 7)).float()
    target[1:][target[1:] == 2] = 0  # class 2 only in the first slice: batch and per-slice Dice differ
    kwargs = {"smooth": 1e-5, "do_bg": False, "ddp": False}
    batch = DC_and_CE_loss({"batch_dice": True, **kwargs}, {}, 1, 1, 3, MemoryEfficientSoftDiceLoss)
    per_slice = DC_and_CE_loss({"batch_dice": False, **kwargs}, {}, 1, 1, 3, MemoryEfficientSoftDiceLoss)
    assert torch.allclose(loss(logits, target), batch(logits, target))
    assert not torch.allclose(loss(logits, target), per_slice(logits, target))
