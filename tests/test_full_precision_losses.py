"""Losses that must run in float32 do so inside an autocast region (AMP): given bfloat16 inputs under CPU autocast
they return float32 and exactly the value they compute outside autocast on the same inputs cast to float32. A
matrix product or a sigmoid left to autocast would run in bfloat16 and differ by far more than the tolerance."""

from __future__ import annotations

import pytest
import torch

from nnunet_semisup.losses.consistency import ProbabilityMSELoss
from nnunet_semisup.trainers.dtml.dual_task_consistency_loss import DualTaskConsistencyLoss
from nnunet_semisup.trainers.dtml.sdm_mask_dice_loss import SDMMaskDiceLoss
from nnunet_semisup.trainers.dtml.sdm_network import SDMRegressionNetwork
from nnunet_semisup.trainers.dtml.sdm_regression_loss import SDMRegressionLoss
from nnunet_semisup.trainers.dtml.signed_distance import sdm_to_mask
from nnunet_semisup.trainers.dual_subnet.confident_disagreement_loss import ConfidentDisagreementLoss
from nnunet_semisup.trainers.dual_subnet.labeled_disagreement_loss import LabeledDisagreementLoss
from nnunet_semisup.trainers.dual_subnet.prototype_contrast_loss import PrototypeContrastLoss
from nnunet_semisup.trainers.dual_subnet.pseudo_labels import voxel_entropy
from nnunet_semisup.trainers.secl.info_nce_loss import InfoNCELoss
from nnunet_semisup.trainers.sparsification.multiview_pseudo_labels import nearest_pseudo_label_set


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _probabilities(shape=(2, 3, 6, 6, 6)) -> torch.Tensor:
    return torch.softmax(torch.randn(shape, generator=_generator()) * 3, 1)


def _cases():
    g = _generator()
    labels = torch.randint(0, 3, (2, 6, 6, 6), generator=g)
    yield "info_nce", InfoNCELoss(0.1), (torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g))
    yield (
        "prototype_contrast",
        PrototypeContrastLoss(3, temperature=0.1),
        (
            torch.randn(30, 8, generator=g),
            torch.arange(30) % 3,
            torch.randn(20, 8, generator=g),
            torch.arange(20) % 3,
        ),
    )
    yield (
        "probability_mse",
        ProbabilityMSELoss(),
        (torch.randn(2, 3, 6, 6, 6, generator=g), torch.randn(2, 3, 6, 6, 6, generator=g)),
    )
    sdm = torch.tanh(
        torch.randn(2, 2, 6, 6, 6, generator=g) * 0.01
    )  # near the boundary, where k = 1500 bites
    yield "sdm_to_mask", sdm_to_mask, (sdm,)
    yield "sdm_mask_dice", SDMMaskDiceLoss(), (sdm, torch.rand(2, 2, 6, 6, 6, generator=g) > 0.5)
    yield "sdm_regression", SDMRegressionLoss(), (sdm, torch.tanh(torch.randn(2, 2, 6, 6, 6, generator=g)))
    yield "dual_task_consistency", DualTaskConsistencyLoss(), (_probabilities()[:, 1:], sdm)
    yield (
        "confident_disagreement",
        lambda a, b: ConfidentDisagreementLoss(0.4)(a, b)[0],
        (_probabilities(), _probabilities().roll(1, dims=1)),
    )
    yield (
        "labeled_disagreement",
        LabeledDisagreementLoss(),
        (_probabilities(), labels, torch.ones(2, 6, 6, 6, dtype=torch.bool)),
    )
    yield "voxel_entropy", voxel_entropy, (_probabilities(),)
    yield (
        "nearest_pseudo_label_set",
        nearest_pseudo_label_set,
        (torch.randn(2, 3, 6, 6, 6, generator=g), labels[:, None].repeat(1, 4, 1, 1, 1)),
    )


CASES = {name: (fn, inputs) for name, fn, inputs in _cases()}


@pytest.mark.parametrize("name", list(CASES))
def test_runs_in_float32_under_autocast(name):
    fn, inputs = CASES[name]
    half = [x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs]
    reference = fn(*[x.float() if x.is_floating_point() else x for x in half])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = fn(*half)
    if result.is_floating_point():
        assert result.dtype == torch.float32, result.dtype
        torch.testing.assert_close(result, reference, rtol=1e-6, atol=1e-7)
    else:  # an index (nearest pseudo-label set): the same choice
        assert torch.equal(result, reference)


def test_sdm_head_output_is_float32_under_autocast():
    network = SDMRegressionNetwork(torch.nn.Conv3d(1, 2, 1))
    x = torch.randn(1, 1, 4, 4, 4, generator=_generator())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = network(x)
    assert out.dtype == torch.float32
    assert out.abs().max() <= 1.0


def test_info_nce_under_autocast_differs_from_a_bfloat16_matmul():
    """The tolerance above can tell: the same InfoNCE with its similarities in bfloat16 is off by more."""
    z_a, z_b = CASES["info_nce"][1]
    exact = InfoNCELoss(0.1)(z_a, z_b)
    a = torch.nn.functional.normalize(z_a, dim=1).bfloat16()
    b = torch.nn.functional.normalize(z_b, dim=1).bfloat16()
    logits = (a @ torch.cat([a, b]).T).float() / 0.1
    n = z_a.shape[0]
    positives = logits[torch.arange(n), n + torch.arange(n)]
    negatives = logits.masked_fill(torch.eye(n, 2 * n, dtype=torch.bool), float("-inf"))
    negatives[torch.arange(n), n + torch.arange(n)] = float("-inf")
    lowered = torch.nn.functional.softplus(torch.logsumexp(negatives, 1) - positives).mean()
    assert (lowered - exact).abs() > 1e-4
