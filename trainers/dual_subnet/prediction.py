"""Predicting with a DualSubnetContrastTrainer model's subnet B, or with the mean of both subnets' probabilities,
through nnU-Net's own predictor (preprocessing, sliding window, test-time mirroring, fold ensembling and export
unchanged).

``nnUNetv2_predict -tr DualSubnetContrastTrainer`` predicts with subnet A (the checkpoint's ``network_weights``).
Subnet B and its architecture are saved in ``semisup_state``; :class:`DualSubnetPredictor` swaps nnU-Net's
network for :class:`DualSubnetInferenceNetwork`. Command line: ``nnunet-semisup predict-dual-subnet --source
b|average`` (same arguments as nnUNetv2_predict).
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import nn

from nnunet_semisup.extra_network_prediction import ExtraNetworkPredictor

SOURCES = ("b", "average")
_EPS = 1e-8


class DualSubnetInferenceNetwork(nn.Module):
    """Logits for nnU-Net's predictor from subnet B alone (``a=None``: B's logits unchanged) or from both subnets:
    ``log((softmax(A(x)) + softmax(B(x))) / 2)``, whose softmax is the mean of the two subnets' probabilities,
    which nnU-Net then averages over windows, mirrors and folds as usual.

    Shapes:
        x: (B, C_in, *spatial). Returns (B, K, *spatial) logits (K = segmentation heads).
    """

    def __init__(self, b: nn.Module, a: nn.Module | None = None) -> None:
        super().__init__()
        self.b = b
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits_b = self.b(x)
        if self.a is None:
            return logits_b
        logits_a = self.a(x)
        if logits_a.shape != logits_b.shape:
            raise ValueError(
                f"subnet A gives {tuple(logits_a.shape)}, subnet B {tuple(logits_b.shape)}: not the two subnets "
                f"of one DualSubnetContrastTrainer model"
            )
        mean = (torch.softmax(logits_a.float(), 1) + torch.softmax(logits_b.float(), 1)) / 2
        return torch.log(mean.clamp_min(_EPS))


def build_subnet_b(architecture: dict, num_input_channels: int, num_output_channels: int) -> nn.Module:
    """Subnet B (deep supervision off) from ``semisup_state['subnet_b_architecture']`` (``network_class_name``,
    ``arch_kwargs``, ``arch_kwargs_requires_import``, as in a plans file)."""
    return get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["arch_kwargs_requires_import"],
        num_input_channels,
        num_output_channels,
        allow_init=False,
        deep_supervision=False,
    )


class DualSubnetPredictor(ExtraNetworkPredictor):
    """``nnUNetPredictor`` for DualSubnetContrastTrainer models that predicts with subnet B (``source='b'``) or
    with the mean of both subnets' probabilities (``source='average'``, the default); everything else is
    nnU-Net's."""

    sources, default_source = SOURCES, "average"
    command, trainer_hint = "predict-dual-subnet", "DualSubnetContrastTrainer"
    state_key, config_key, extra_name = "subnet_b", "subnet_b_architecture", "subnet B"
    extra_prefix, main_prefix = "b", "a"

    def build_inference_network(self, config: dict, main_network: nn.Module | None) -> nn.Module:
        subnet_b = build_subnet_b(
            config,
            determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json),
            self.label_manager.num_segmentation_heads,
        )
        return DualSubnetInferenceNetwork(subnet_b, main_network)
