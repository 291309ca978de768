"""Patch loader for preprocessed unlabeled cases (nnU-Net's loader without label-dependent sampling)."""

from __future__ import annotations

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's ``nnUNetDataLoader`` for cases without labels: patches are placed uniformly at random.

    Unlabeled cases have no class locations, so foreground oversampling and ignore-label-aware sampling
    are switched off; everything else (patch size, padding, transforms, batch layout) is nnU-Net's.
    Batches are ``{'data': (B, C, *patch), 'target': (B, 1, *patch) nonzero mask, 'keys': case ids}``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["oversample_foreground_percent"] = 0.0
        kwargs["probabilistic_oversampling"] = False
        super().__init__(*args, **kwargs)
        self.has_ignore = False
