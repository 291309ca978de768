"""Small operations on nnU-Net's planned networks that several methods need."""

from __future__ import annotations

from torch import nn


def freeze_deep_supervision_seg_layers(decoder: nn.Module) -> None:
    """Freeze every segmentation layer of an nnU-Net ``UNetDecoder`` but the last (full-resolution) one.

    For networks trained without deep supervision, where only the last seg layer runs: DDP (``-num_gpus > 1``)
    would otherwise wait for gradients the other layers never get. Their weights stay in the checkpoint, unused.
    """
    for layer in decoder.seg_layers[:-1]:
        layer.requires_grad_(False)
