"""Tests for nnunet_semisup.trainers.dtml.prediction.DualTaskInferenceNetwork: M_d's (or the averaged) logits that
nnU-Net's predictor turns into segmentations."""

import pytest
import torch
from torch import nn

from nnunet_semisup.trainers.dtml.prediction import DualTaskInferenceNetwork, DualTaskPredictor


class _Fixed(nn.Module):
    """Returns a fixed tensor whatever the input (stands in for a trained network)."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("output", output)

    def forward(self, x):
        return self.output


def _two_class_sdm() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, 6, 4, 4) SDMs: class 1 inside x < 2, class 2 inside x >= 4, background between; and the labels."""
    labels = torch.zeros(6, 4, 4, dtype=torch.long)
    labels[:2] = 1
    labels[4:] = 2
    sdm = torch.stack([torch.where(labels == c, -0.5, 0.5) for c in (1, 2)])[None]
    return sdm, labels


def test_distance_network_alone_gives_its_masks_segmentation():
    sdm, labels = _two_class_sdm()
    net = DualTaskInferenceNetwork(_Fixed(sdm), None, k=1500.0, has_regions=False)
    logits = net(torch.zeros(1, 1, 6, 4, 4))
    assert logits.shape == (1, 3, 6, 4, 4)
    torch.testing.assert_close(torch.softmax(logits, 1).sum(1), torch.ones(1, 6, 4, 4))
    assert torch.equal(logits.argmax(1)[0], labels)


def test_background_exactly_when_every_mask_is_below_one_half():
    # masks (0.4, 0.3): background; (0.6, 0.3): class 1; (0.6, 0.7): class 2
    masks = torch.tensor([[0.4, 0.6, 0.6], [0.3, 0.3, 0.7]]).view(1, 2, 3, 1, 1)
    sdm = -torch.logit(masks) / 1500  # sdm_to_mask(sdm) == masks
    logits = DualTaskInferenceNetwork(_Fixed(sdm), None, k=1500.0, has_regions=False)(torch.zeros(1))
    assert logits.argmax(1).flatten().tolist() == [0, 1, 2]


def test_average_of_both_networks():
    sdm, _ = _two_class_sdm()
    seg_logits = torch.randn(1, 3, 6, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    dist_only = torch.softmax(DualTaskInferenceNetwork(_Fixed(sdm), None, 1500.0, False)(torch.zeros(1)), 1)
    averaged = DualTaskInferenceNetwork(_Fixed(sdm), _Fixed(seg_logits), 1500.0, False)(torch.zeros(1))
    expected = (torch.softmax(seg_logits, 1) + dist_only) / 2
    torch.testing.assert_close(torch.softmax(averaged, 1), expected, atol=1e-5, rtol=1e-4)


def test_region_based_logits_are_sigmoid_inverse_of_the_masks():
    sdm = torch.tensor([-1e-3, 0.0, 1e-3]).view(1, 1, 3, 1, 1)
    logits = DualTaskInferenceNetwork(_Fixed(sdm), None, 1500.0, has_regions=True)(torch.zeros(1))
    torch.testing.assert_close(logits, -1500 * sdm, atol=1e-4, rtol=1e-4)


def test_mismatched_networks_raise():
    sdm, _ = _two_class_sdm()
    net = DualTaskInferenceNetwork(_Fixed(sdm), _Fixed(torch.zeros(1, 2, 6, 4, 4)), 1500.0, False)
    with pytest.raises(ValueError, match="not the two networks of one DTML model"):
        net(torch.zeros(1))


def test_predictor_rejects_unknown_source():
    with pytest.raises(ValueError, match="source must be one of"):
        DualTaskPredictor(device=torch.device("cpu"), source="both")
