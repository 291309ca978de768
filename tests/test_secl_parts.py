"""SECL's teacher and schedule on small modules: the teacher gets no gradient, the EMA update is exact, and
lambda(t) follows the paper's ramp-up."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_semisup.schedules import ema_update
from nnunet_semisup.trainers.secl.info_nce_loss import InfoNCELoss
from nnunet_semisup.trainers.secl.projection_head import ProjectionHead
from nnunet_semisup.trainers.secl.trainer import (
    SECLTrainer,
    SECLTrainer_alpha0,
    SECLTrainer_alpha099,
    SECLTrainer_NoContrast,
    SECLTrainer_RACS,
    half_resolution_logits,
    make_ema_teacher,
)


class TinyEncoder(nn.Module):
    """Returns a skip list like nnU-Net's encoders (bottleneck last)."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 8, 3, stride=2, padding=1)])

    def forward(self, x):
        skips = []
        for stage in self.stages:
            x = torch.relu(stage(x))
            skips.append(x)
        return skips


class TinyDecoder(nn.Module):
    """Holds the encoder as a submodule, as dynamic_network_architectures' UNetDecoder does."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.deep_supervision = True
        self.head = nn.Conv3d(4, 3, 1)

    def forward(self, skips):
        return self.head(skips[0])


def _parts(with_decoder=False):
    torch.manual_seed(0)
    encoder = TinyEncoder()
    parts = nn.ModuleDict({"encoder": encoder, "projector": ProjectionHead(8, 3, 16, 4)})
    if with_decoder:
        parts["decoder"] = TinyDecoder(encoder)
    return parts


def test_teacher_gets_no_gradient_and_the_student_does():
    student = _parts()
    teacher = make_ema_teacher(student)
    cubes = torch.randn(4, 1, 8, 8, 8)
    z_student = student["projector"](student["encoder"](cubes)[-1])
    with torch.no_grad():
        z_teacher = teacher["projector"](teacher["encoder"](cubes + 0.1)[-1])
    InfoNCELoss(0.1)(z_student, z_teacher).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert not teacher.training


@pytest.mark.parametrize("with_decoder", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.9, 0.99])
def test_ema_update_is_exact_over_encoder_projector_and_shared_decoder(alpha, with_decoder):
    student = _parts(with_decoder)
    teacher = make_ema_teacher(student)
    if with_decoder:
        assert teacher["decoder"].encoder is teacher["encoder"]  # sharing survives the copy
        assert teacher["decoder"].deep_supervision is False and student["decoder"].deep_supervision
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    ema_update(teacher, student, alpha)
    after, current = teacher.state_dict(), student.state_dict()
    assert after.keys() == current.keys()
    for key in after:
        expected = alpha * before[key] + (1 - alpha) * current[key]
        assert torch.allclose(after[key], expected, atol=1e-6, rtol=0), key
    if alpha == 0.0:
        assert all(torch.equal(after[k], current[k]) for k in after)


def test_contrast_weight_follows_the_paper_rampup():
    clock = SimpleNamespace(
        rampup_fraction=SECLTrainer.rampup_fraction, num_epochs=4, num_iterations_per_epoch=5
    )
    clock.total_iterations = SECLTrainer.total_iterations.fget(clock)
    clock.iterations_of = functools.partial(SECLTrainer.iterations_of, clock)
    t_max = SECLTrainer.rampup_length.fget(clock)
    assert t_max == 20  # t_max = the whole run by default

    def weight(step):
        return SECLTrainer.rampup_weight(
            SimpleNamespace(global_step=step, rampup_length=t_max), SECLTrainer.contrast_weight
        )

    assert weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert weight(10) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert weight(20) == pytest.approx(0.1)
    assert weight(25) == pytest.approx(0.1)


def test_variants_change_only_what_their_names_say():
    assert SECLTrainer.sampling == "anatomical" and SECLTrainer.ema_decay == 0.9
    assert SECLTrainer_RACS.sampling == "region" and SECLTrainer_RACS.ema_decay == 0.9
    assert SECLTrainer_alpha0.ema_decay == 0.0 and SECLTrainer_alpha099.ema_decay == 0.99
    assert SECLTrainer_NoContrast.contrast_weight == 0.0 and not SECLTrainer_NoContrast.uses_unlabeled_data
    for variant in (SECLTrainer_RACS, SECLTrainer_alpha0, SECLTrainer_alpha099, SECLTrainer_NoContrast):
        assert variant.temperature == SECLTrainer.temperature and variant.cube_size == SECLTrainer.cube_size


def test_half_resolution_pseudo_logits_equal_the_networks_deep_supervision_head():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    net = PlainConvUNet(
        1,
        3,
        (4, 8, 16),
        nn.Conv3d,
        3,
        ((1, 1, 1), (2, 2, 2), (2, 2, 1)),
        1,
        3,
        1,
        norm_op=nn.InstanceNorm3d,
        nonlin=nn.LeakyReLU,
        deep_supervision=True,
    )
    x = torch.randn(2, 1, 8, 12, 8)
    with torch.no_grad():
        expected = net(x)[1]
    logits = half_resolution_logits(net.encoder, net.decoder, x)
    assert logits.shape == (2, 3, 4, 6, 4)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert half_resolution_logits(net.encoder, TinyDecoder(net.encoder), x) is None  # not a UNetDecoder


def test_projector_tells_apart_inputs_with_equal_channel_means():
    # instance-normalized bottlenecks have (nearly) input-independent channel means: a globally pooled
    # projector would map these two feature maps to the same embedding
    torch.manual_seed(0)
    head = ProjectionHead(8, spatial_dims=3, hidden_dim=16, out_dim=4)
    features = torch.randn(1, 8, 4, 4, 4)
    shuffled = features.flatten(2)[:, :, torch.randperm(64)].reshape(1, 8, 4, 4, 4)
    assert torch.allclose(features.mean((2, 3, 4)), shuffled.mean((2, 3, 4)), atol=1e-6)
    assert not torch.allclose(head(features), head(shuffled), atol=1e-4)
    assert head(torch.randn(5, 8, 3, 1, 2)).shape == (5, 4)  # any bottleneck size
    assert ProjectionHead(8, spatial_dims=2)(torch.randn(2, 8, 3, 3)).shape == (2, 128)
    with pytest.raises(ValueError, match="spatial dims"):
        head(torch.randn(2, 8, 4, 4))
