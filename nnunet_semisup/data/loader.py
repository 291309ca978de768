"""Patch loader for preprocessed unlabeled cases (nnU-Net's loader without label-dependent sampling)."""

from __future__ import annotations

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's ``nnUNetDataLoader`` for cases without labels: patches are placed uniformly at random.

    Unlabeled cases have no class locations, so foreground oversampling and ignore-label-aware sampling
    are switched off; everything else (patch size, padding, transforms, batch layout) is nnU-Net's.
    Batches are ``{'data': (B, C, *patch), 'target': (B, 1, *patch) nonzero mask, 'keys': case ids}``
    (``'target'`` is (B, 0), empty, with :class:`ImageOnlyTransforms`).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["oversample_foreground_percent"] = 0.0
        kwargs["probabilistic_oversampling"] = False
        super().__init__(*args, **kwargs)
        self.has_ignore = False


class ImageOnlyTransforms:
    """nnU-Net's training transforms applied to the image of a sample alone, for patches whose segmentation is
    never used (unlabeled images): the segmentation is returned empty instead of being resampled along.

    The image comes out exactly as with the segmentation: nnU-Net's transforms draw their random parameters
    independently of it, and the only transform that reads it to change the image (``MaskImageTransform``, on
    when the plans normalize with a nonzero mask, ``use_mask_for_norm``) is rejected here. Resampling the
    segmentation costs more than the image itself in nnU-Net's spatial transform (one interpolation per
    label), so this roughly halves the cost of an unlabeled batch (``benchmarks/loader_throughput.py``).

    Args:
        transforms: nnU-Net's ``get_training_transforms(...)`` without deep-supervision targets.
        use_mask_for_norm: the configuration's ``use_mask_for_norm``.

    Raises:
        ValueError: when ``use_mask_for_norm`` is on for a channel.
    """

    def __init__(self, transforms, use_mask_for_norm) -> None:
        if any(use_mask_for_norm or ()):
            raise ValueError(
                "image-only augmentation needs the segmentation when the plans normalize with a nonzero mask "
                f"(use_mask_for_norm = {list(use_mask_for_norm)}): nnU-Net's MaskImageTransform reads it"
            )
        self.transforms = transforms

    def __call__(self, image, segmentation):
        return {"image": self.transforms(image=image)["image"], "segmentation": segmentation.new_empty((0,))}


def gaussian_centre_bbox(
    data_shape, patch_size, lower_bounds, upper_bounds, sigma_fraction: float = 0.25, rng=None
) -> tuple[list[int], list[int]]:
    """A patch box whose centre is drawn from a Gaussian around the image centre.

    Sital et al. (WTA autoencoders) place patch centres ``~ N(size / 2, (sigma_fraction * size)^2)`` per axis
    (sigma = 1/4 of the size) when all images show the same region, so the organ in the middle is seen most.

    Args:
        data_shape: spatial shape of the image.
        patch_size: spatial shape of the patch.
        lower_bounds, upper_bounds: the allowed range of the box's lower corner per axis (nnU-Net's ``get_bbox``
            bounds, which include padding); the drawn corner is clipped into it.
        sigma_fraction: sigma as a fraction of the image size per axis.
        rng: a ``numpy.random.Generator`` (default: numpy's global state, as nnU-Net's loader uses).

    Returns:
        ``(lower corner, upper corner)`` lists, ``upper = lower + patch_size``.
    """
    draw = rng.normal if rng is not None else np.random.normal
    lower = []
    for size, patch, lb, ub in zip(data_shape, patch_size, lower_bounds, upper_bounds):
        centre = draw(size / 2.0, sigma_fraction * size)
        lower.append(int(np.clip(round(centre - patch / 2.0), lb, ub)))
    return lower, [lo + p for lo, p in zip(lower, patch_size)]


class CentreGaussianDataLoader(UnlabeledDataLoader):
    """:class:`UnlabeledDataLoader` whose patch centres follow a Gaussian around the image centre (sigma = 1/4
    of the image size per axis, :func:`gaussian_centre_bbox`) instead of a uniform distribution."""

    sigma_fraction: float = 0.25

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        need_to_pad = self.need_to_pad.copy()
        dim = len(data_shape)
        for d in range(dim):  # nnU-Net's bounds (padding included), as in nnUNetDataLoader.get_bbox
            if need_to_pad[d] + data_shape[d] < self.patch_size[d]:
                need_to_pad[d] = self.patch_size[d] - data_shape[d]
        lbs = [-need_to_pad[i] // 2 for i in range(dim)]
        ubs = [
            data_shape[i] + need_to_pad[i] // 2 + need_to_pad[i] % 2 - self.patch_size[i] for i in range(dim)
        ]
        return gaussian_centre_bbox(data_shape, self.patch_size, lbs, ubs, self.sigma_fraction)
