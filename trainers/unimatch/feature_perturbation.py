"""UniMatch's feature perturbation (Yang et al., CVPR 2023, Sec. 3): channel dropout on the encoder features
that feed the decoder, applied to chosen rows of a batch by a forward hook, so nnU-Net's network class (and its
checkpoint) stays stock."""

from __future__ import annotations

import torch


def channel_dropout(features: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole channels of each sample with probability ``p`` and scale the kept ones by ``1/(1-p)``
    (``nn.Dropout2d``/``Dropout3d`` in training mode; UniMatch uses ``Dropout2d(0.5)`` on every encoder
    feature of its 2D U-Net).

    Shapes:
        features: (B, C, *spatial). Returns the same shape and dtype (a new tensor, differentiable).

    Raises:
        ValueError: ``p`` outside [0, 1).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0:
        return features
    keep = torch.rand(features.shape[:2], device=features.device) >= p
    scale = keep.to(features.dtype) / (1.0 - p)
    return features * scale.view(*features.shape[:2], *([1] * (features.ndim - 2)))


class SkipFeatureDropout:
    """A forward hook on an nnU-Net encoder (``PlainConvEncoder``/``ResidualEncoder``, whose forward returns the
    list of skip features, bottleneck last) that applies :func:`channel_dropout` to rows ``rows`` of every
    skip feature while ``rows`` is set, and does nothing otherwise.

    One forward of a concatenated batch then gives clean outputs for some patches and feature-perturbed outputs
    for others, through nnU-Net's own (DDP-wrapped) network: no second network class, no change to the
    checkpoint's ``network_weights``.
    """

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rows: tuple[int, int] | None = None

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: list[torch.Tensor] | torch.Tensor):
        if self.rows is None:
            return None
        if not isinstance(output, (list, tuple)):
            raise TypeError(
                f"{type(module).__name__} returned one tensor, not the list of skip features: build the encoder "
                f"with return_skips=True (nnU-Net's U-Nets do)"
            )
        start, stop = self.rows
        return [
            torch.cat([skip[:start], channel_dropout(skip[start:stop], self.p), skip[stop:]])
            for skip in output
        ]
