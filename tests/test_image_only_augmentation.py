"""Image-only augmentation of unlabeled patches gives the same images as nnU-Net's augmentation of image +
segmentation under the same random state, without the segmentation; refused where the image needs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semisup.data.loader import ImageOnlyTransforms


def _transforms(use_mask_for_norm: bool):
    patch = (24, 24, 24)
    rotation = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    return nnUNetTrainer.get_training_transforms(
        patch, {"x": rotation, "y": rotation, "z": rotation}, None, (0, 1, 2), False,
        use_mask_for_norm=[use_mask_for_norm], is_cascaded=False, foreground_labels=[1, 2], regions=None,
        ignore_label=None,
    )  # fmt: skip


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (nnU-Net's transforms draw from the legacy global state)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_images_without_the_segmentation(seed):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 34, 34, 34, generator=generator)
    segmentation = torch.randint(-1, 3, (1, 34, 34, 34), generator=generator).to(torch.int16)
    transforms = _transforms(False)
    _seed(seed)
    full = transforms(image=image.clone(), segmentation=segmentation.clone())
    _seed(seed)
    image_only = ImageOnlyTransforms(transforms, [False])(image.clone(), segmentation.clone())
    assert full["image"].shape == (1, 24, 24, 24)
    torch.testing.assert_close(image_only["image"], full["image"], rtol=0, atol=0)
    assert image_only["segmentation"].numel() == 0


def test_refused_when_the_plans_normalize_with_a_nonzero_mask():
    with pytest.raises(ValueError, match="use_mask_for_norm"):
        ImageOnlyTransforms(_transforms(True), [True])
