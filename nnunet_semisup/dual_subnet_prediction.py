"""Predicting with a DualSubnetContrastTrainer model's subnet B, or with the mean of both subnets' probabilities,
through nnU-Net's own predictor (preprocessing, sliding window, test-time mirroring, fold ensembling and export
unchanged).

``nnUNetv2_predict -tr DualSubnetContrastTrainer`` predicts with subnet A (the checkpoint's ``network_weights``).
Subnet B and its architecture are saved in ``semisup_state``; :class:`DualSubnetPredictor` swaps nnU-Net's
network for :class:`DualSubnetInferenceNetwork`. Command line: ``nnunet-semisup predict-dual-subnet --source
b|average`` (same arguments as nnUNetv2_predict).
"""

from __future__ import annotations

import os

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import nn
from torch._dynamo import OptimizedModule

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


class DualSubnetPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` for DualSubnetContrastTrainer models that predicts with subnet B (``source='b'``) or
    with the mean of both subnets' probabilities (``source='average'``); everything else is nnU-Net's."""

    def __init__(self, *args, source: str = "average", **kwargs) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        super().__init__(*args, **kwargs)
        self.source = source

    def initialize_from_trained_model_folder(
        self,
        model_training_output_dir: str,
        use_folds: tuple[int | str, ...] | None,
        checkpoint_name: str = "checkpoint_final.pth",
    ) -> None:
        # nnU-Net builds subnet A and reads each fold's network_weights; subnet B is read here beside them
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(
                model_training_output_dir, checkpoint_name
            )
        if isinstance(use_folds, str):
            use_folds = [use_folds]
        parameters, architecture = [], None
        for fold, weights_a in zip(use_folds, self.list_of_parameters):
            path = os.path.join(model_training_output_dir, f"fold_{fold}", checkpoint_name)
            state = torch.load(path, map_location="cpu", weights_only=False).get("semisup_state") or {}
            if "subnet_b" not in state:
                raise ValueError(
                    f"{path} has no subnet B (semisup_state['subnet_b']): predict-dual-subnet needs a model trained "
                    f"with DualSubnetContrastTrainer or one of its variants"
                )
            if architecture is not None and state["subnet_b_architecture"] != architecture:
                raise ValueError(
                    f"folds of {model_training_output_dir} have different subnet B architectures"
                )
            architecture = state["subnet_b_architecture"]
            weights = {f"b.{key}": value for key, value in state["subnet_b"].items()}
            if self.source == "average":
                weights.update({f"a.{key}": value for key, value in weights_a.items()})
            parameters.append(weights)

        subnet_b = build_subnet_b(
            architecture,
            determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json),
            self.label_manager.num_segmentation_heads,
        )
        subnet_a = self.network
        if isinstance(subnet_a, OptimizedModule):
            subnet_a = subnet_a._orig_mod
        self.network = DualSubnetInferenceNetwork(subnet_b, subnet_a if self.source == "average" else None)
        self.network.load_state_dict(parameters[0])
        self.list_of_parameters = parameters
