"""Small operations on nnU-Net's planned networks that several methods need."""

from __future__ import annotations

import copy

import torch
from torch import nn


def freeze_deep_supervision_seg_layers(decoder: nn.Module | None) -> None:
    """Freeze every segmentation layer of an nnU-Net ``UNetDecoder`` but the last (full-resolution) one.

    For networks trained without deep supervision, where only the last seg layer runs: DDP (``-num_gpus > 1``)
    would otherwise wait for gradients the other layers never get. Their weights stay in the checkpoint, unused.
    A decoder without ``seg_layers`` (or None: a network without a decoder) is left alone.
    """
    for layer in getattr(decoder, "seg_layers", [])[:-1]:
        layer.requires_grad_(False)


def make_teacher(student: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``student`` (an nnU-Net network) for EMA: no gradients, no deep supervision
    (the teacher only provides full-resolution targets, so the lower-resolution heads are skipped)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if hasattr(teacher, "decoder") and hasattr(teacher.decoder, "deep_supervision"):
        teacher.decoder.deep_supervision = False
    return teacher.eval()
