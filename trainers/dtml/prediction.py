"""Predicting with a DTML model's distance network M_d, or with the average of M_s and M_d, through nnU-Net's
own predictor (preprocessing, sliding window, test-time mirroring, fold ensembling and export unchanged).

``nnUNetv2_predict -tr DTMLTrainer`` predicts with M_s (the checkpoint's ``network_weights``). M_d is saved in
``semisup_state['dist_network']``; :class:`DualTaskPredictor` swaps nnU-Net's network for
:class:`DualTaskInferenceNetwork`, which turns M_d's signed distance maps into the logits nnU-Net expects.
Command line: ``nnunet-semisup predict-dtml --source dist|average`` (same arguments as nnUNetv2_predict).
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import nn

from nnunet_semisup.extra_network_prediction import ExtraNetworkPredictor
from nnunet_semisup.trainers.dtml.sdm_network import SDMRegressionNetwork, num_sdm_channels
from nnunet_semisup.trainers.dtml.signed_distance import sdm_to_mask

SOURCES = ("dist", "average")
_EPS = 1e-6


class DualTaskInferenceNetwork(nn.Module):
    """Logits for nnU-Net's predictor from DTML's distance network, alone or averaged with the segmentation
    network.

    M_d's soft masks ``m_c = sigmoid(-k * sdm_c)`` become probabilities: region-based, ``m_c`` is the region's
    probability; label-based, the class scores ``(1 - max_c m_c, m_1, ..., m_C)`` normalized to sum 1, so a
    voxel is background exactly when every ``m_c < 0.5`` and otherwise the class with the largest mask.
    ``average`` takes the mean of these and M_s's softmax (or sigmoid) probabilities. The output is
    ``log p`` (label-based; softmax of it is ``p`` again) or ``logit(p)`` (region-based; sigmoid of it is ``p``),
    which nnU-Net averages over windows, mirrors and folds and converts to a segmentation as usual.

    Args:
        dist_network: M_d, (B, C_in, *spatial) -> (B, C_fg, *spatial) signed distance maps in [-1, 1].
        seg_network: M_s for ``average`` (deep supervision off), or None for M_d alone.
        k: steepness of the SDM -> mask transform used in training.
        has_regions: region-based (sigmoid) instead of label-based (softmax) training.

    Shapes:
        x: (B, C_in, *spatial). Returns (B, C_fg + 1, *spatial) label-based, (B, C_fg, *spatial) region-based.
    """

    def __init__(
        self, dist_network: nn.Module, seg_network: nn.Module | None, k: float, has_regions: bool
    ) -> None:
        super().__init__()
        self.dist = dist_network
        self.seg = seg_network
        self.k = k
        self.has_regions = has_regions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = sdm_to_mask(self.dist(x), self.k)
        if self.has_regions:
            probabilities = masks
        else:
            scores = torch.cat([1 - masks.amax(1, keepdim=True), masks], 1)
            probabilities = scores / scores.sum(1, keepdim=True).clamp_min(_EPS)
        if self.seg is not None:
            seg_logits = self.seg(x).float()
            seg_probabilities = (
                torch.sigmoid(seg_logits) if self.has_regions else torch.softmax(seg_logits, 1)
            )
            if seg_probabilities.shape != probabilities.shape:
                raise ValueError(
                    f"segmentation network gives {tuple(seg_probabilities.shape)}, distance network "
                    f"{tuple(probabilities.shape)}: not the two networks of one DTML model"
                )
            probabilities = (probabilities + seg_probabilities) / 2
        probabilities = probabilities.clamp(_EPS, 1 - _EPS)
        if self.has_regions:
            return torch.log(probabilities) - torch.log1p(-probabilities)
        return torch.log(probabilities)


class DualTaskPredictor(ExtraNetworkPredictor):
    """``nnUNetPredictor`` for DTML models that predicts with M_d (``source='dist'``, the default) or with the
    average of M_s and M_d (``source='average'``); everything else is nnU-Net's predictor."""

    sources, default_source, command, trainer_hint = SOURCES, "dist", "predict-dtml", "DTMLTrainer"
    state_key, config_key, extra_name = "dist_network", "sdm_k", "DTML distance network"
    extra_prefix, main_prefix = "dist", "seg"

    def build_inference_network(self, config: float, main_network: nn.Module | None) -> nn.Module:
        trainer_class = recursive_find_trainer_class_by_name(self.trainer_name)
        backbone = trainer_class.build_network_architecture(
            self.plans_manager,
            self.configuration_manager,
            determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json),
            num_sdm_channels(self.label_manager),
            enable_deep_supervision=False,
        )
        return DualTaskInferenceNetwork(
            SDMRegressionNetwork(backbone), main_network, config, self.label_manager.has_regions
        )
