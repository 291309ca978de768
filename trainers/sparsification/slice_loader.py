"""Training batches of the sparse 2D base model: 2D patches from the annotated slices of 3D cases (Zheng et al.,
AAAI 2020, Eq. 1)."""

from __future__ import annotations

import numpy as np
import torch

from nnunet_semisup.errors import TrainingInputError


class SparseSliceLoader:
    """Batches of 2D patches from annotated slices (Eq. 1): per batch a random plane, per sample a random case,
    a random annotated slice of that plane and a patch around a random annotated voxel of it (shifted by up to
    half a patch), random flips. Iterates forever like nnU-Net's loaders.

    Yields ``{"data": (B, C, h, w) float32, "target": (B, 1, h, w) float32}`` where (h, w) is the 3D patch size
    without the plane's axis; padding and unannotated voxels carry ``ignore_label``.

    A slice of a plane is sampled when at least ``min_annotated_fraction`` of its voxels are annotated: the
    annotated slices of that plane. Slices that only cross annotated slices of the other planes hold a single
    annotated line and are not sampled (if no slice of any plane qualifies, every slice holding an annotated
    voxel is used instead).
    """

    def __init__(
        self,
        cases: dict[str, tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        patch_size: list[int],
        plane_axes: dict[str, int],
        ignore_label: int,
        augment: bool = True,
        seed: int | None = None,
        min_annotated_fraction: float = 0.5,
    ):
        self.cases = cases
        self.batch_size = batch_size
        self.patch_size = list(patch_size)
        self.ignore_label = ignore_label
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        # per plane: case -> indices of the slices to sample (annotated fraction >= min_annotated_fraction)
        fractions = {
            plane: {
                case: (seg != ignore_label).mean(axis=tuple(a for a in range(3) if a != axis))
                for case, (_, seg) in cases.items()
            }
            for plane, axis in plane_axes.items()
        }
        for threshold in (min_annotated_fraction, 0.0):
            self.annotated: dict[str, dict[str, np.ndarray]] = {}
            self.plane_axes = {}
            for plane, axis in plane_axes.items():
                per_case = {}
                for case, fraction in fractions[plane].items():
                    idx = np.flatnonzero((fraction >= threshold) & (fraction > 0))
                    if len(idx):
                        per_case[case] = idx
                if per_case:
                    self.annotated[plane] = per_case
                    self.plane_axes[plane] = axis
            if self.annotated:
                break
        if not self.annotated:
            raise TrainingInputError(
                "no annotated voxel in any training case (every voxel is the ignore label). If the raw labels do "
                "have annotated slices, the plans' resampling erased them: nnU-Net resamples the ignore label like "
                "any class, so single annotated slices vanish when the target spacing is coarser than the raw "
                "spacing. Resample the raw dataset to the target spacing before sparsifying (see the README)."
            )

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        plane = list(self.annotated)[self.rng.integers(len(self.annotated))]
        axis = self.plane_axes[plane]
        patch = [p for a, p in enumerate(self.patch_size) if a != axis]
        keys = list(self.annotated[plane])
        data, target = [], []
        for _ in range(self.batch_size):
            case = keys[self.rng.integers(len(keys))]
            image, seg = self.cases[case]
            index = int(self.rng.choice(self.annotated[plane][case]))
            img2d = np.take(image, index, axis=1 + axis)  # (C, H, W)
            seg2d = np.take(seg, index, axis=axis)  # (H, W)
            points = np.argwhere(seg2d != self.ignore_label)
            half = (np.array(patch) - 1) // 2  # shift keeping the chosen annotated voxel inside the patch
            center = points[self.rng.integers(len(points))] + self.rng.integers(-half, half + 1)
            lo = [int(c) - p // 2 for c, p in zip(center, patch)]
            d, t = self._crop(img2d, seg2d, lo, patch)
            if self.augment:
                for ax in (0, 1):
                    if self.rng.random() < 0.5:
                        d, t = np.flip(d, 1 + ax), np.flip(t, ax)
            data.append(np.ascontiguousarray(d))
            target.append(np.ascontiguousarray(t))
        return {
            "data": torch.from_numpy(np.stack(data)).float(),
            "target": torch.from_numpy(np.stack(target)[:, None]).float(),
            "plane": plane,
        }

    def _crop(self, img: np.ndarray, seg: np.ndarray, lo: list[int], patch: list[int]):
        out_img = np.zeros((img.shape[0], *patch), dtype=np.float32)
        out_seg = np.full(patch, self.ignore_label, dtype=np.int16)
        src = tuple(slice(max(lo[i], 0), min(lo[i] + patch[i], seg.shape[i])) for i in range(2))
        dst = tuple(slice(s.start - lo[i], s.stop - lo[i]) for i, s in enumerate(src))
        out_img[(slice(None), *dst)] = img[(slice(None), *src)]
        out_seg[dst] = seg[src]
        return out_img, out_seg
