"""DTML's distance network M_d: a planned nnU-Net backbone turned into a signed-distance regressor."""

from __future__ import annotations

import torch
from torch import nn


class SDMRegressionNetwork(nn.Module):
    """A segmentation backbone turned into a signed-distance regressor: ``tanh(backbone(x))``.

    DTML's distance network M_d (Zhang & Zhang, PRCV 2021; the authors' V-Net ends in a 1x1x1 conv + tanh):
    with nnU-Net's planned network as backbone, its final 1x1x1 conv (``decoder.seg_layers``) is the regression
    conv and the tanh bounds the output to the [-1, 1] range of a normalized signed distance map.

    Args:
        backbone: a network mapping (B, C_in, *spatial) to one (B, C_out, *spatial) tensor (deep supervision
            off), e.g. nnU-Net's ``build_network_architecture(..., num_output_channels=C_out,
            enable_deep_supervision=False)``.

    Shapes:
        x: (B, C_in, *spatial). Returns (B, C_out, *spatial) float32 in [-1, 1], one SDM channel per
        foreground class or region.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        if isinstance(out, (list, tuple)):
            raise ValueError(
                "the SDM backbone returned several outputs: build it with deep supervision off "
                "(enable_deep_supervision=False)"
            )
        # float32 from here on: DTML compares sigmoid(-1500 * SDM) maps, a near step that half precision blurs
        return torch.tanh(out.float())


def num_sdm_channels(label_manager) -> int:
    """SDM channels of a DTML distance network: one per foreground class (label-based training) or per region
    (region-based), for an nnU-Net ``LabelManager``. The ignore label gets none."""
    if label_manager.has_regions:
        return len(label_manager.foreground_regions)
    return len(label_manager.foreground_labels)
