"""``SparseMultiPlane2DTrainer``: the 2D base model of annotation sparsification (Zheng et al., AAAI 2020, Eq. 1).

Design: the trainer reads the dataset's **3d_fullres** preprocessed data (same spacing and normalization as the
3D base model, no extra planner or preprocessing) and trains a 2D U-Net on slices of it. Each iteration picks a
random plane (xy, xz or yz); each sample of the batch a random case and a random *annotated* slice of that plane,
and a 2D patch around an annotated voxel of the slice (Eq. 1: one 2D model for all three planes). Unannotated
voxels carry nnU-Net's ignore label and are masked out of the loss by nnU-Net's own ``DC_and_CE_loss``.

``self.network`` is a :class:`SliceWiseNetwork`: it applies the 2D U-Net to every slice of a 3D input along
``plane_axis``, so ``nnUNetv2_predict -tr SparseMultiPlane2DTrainer`` works unchanged (xy plane) and
``nnunet-semisup pseudo-labels`` predicts along each plane by setting ``plane_axis``.

Run with ``nnUNetv2_train D 3d_fullres FOLD -tr SparseMultiPlane2DTrainer`` on a dataset with sparse labels.
"""

from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_semisup.heads import freeze_deep_supervision_seg_layers
from nnunet_semisup.selection import PLANES
from nnunet_semisup.slice_network import SliceWiseNetwork, network_axis, plainconv_unet_2d
from nnunet_semisup.trainers.base import SemiSupervisedTrainer


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
            raise RuntimeError(
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


class SparseMultiPlane2DTrainer(SemiSupervisedTrainer):
    """2D base model on sparse (ignore-labeled) 3D data, one network for the xy, xz and yz planes (Eq. 1).

    Attributes:
        batch_size_2d: 2D patches per iteration (the paper trains on 2D slices; nnU-Net's 2D configurations use
            far larger batches than 3D ones, 12-49; 16 here keeps CPU iterations cheap).
        planes: planes sampled (all three, as in the paper).
    """

    uses_unlabeled_data = False
    batch_size_2d: int = 16
    planes: tuple[str, ...] = PLANES
    # slices sampled: at least this share of their voxels annotated (the annotated slices of the plane; README)
    min_annotated_fraction: float = 0.5
    # Dice over the whole batch of slices, as nnU-Net's own 2D configurations (its planner sets batch_dice=True
    # for 2d); the 3D plans read here say False
    batch_dice_2d: bool = True

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # one output per 2D slice: nnU-Net's deep-supervision scales are 3D
        self.enable_deep_supervision = False

    @staticmethod
    def build_network_architecture(
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        net, divisor = plainconv_unet_2d(
            configuration_manager.network_arch_init_kwargs, num_input_channels, num_output_channels, False
        )
        freeze_deep_supervision_seg_layers(net.decoder)  # no deep supervision: DDP-safe
        return SliceWiseNetwork(net, divisor, network_axis("xy", plans_manager.transpose_forward))

    def _build_loss(self):
        loss = super()._build_loss()
        dice = loss.loss.dc if isinstance(loss, DeepSupervisionWrapper) else loss.dc
        getattr(dice, "_orig_mod", dice).batch_dice = self.batch_dice_2d  # _orig_mod: torch.compile'd
        return loss

    def labeled_batch_setting(self) -> tuple[int, str]:
        return (
            self.batch_size_2d,
            f"the class attribute batch_size_2d (a subclass of {self.__class__.__name__})",
        )

    def _load_cases(self, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        cases = {}
        for key in keys:
            data, seg, _, _ = dataset.load_case(key)
            seg = np.asarray(seg[0]).astype(np.int16)
            seg[seg < 0] = 0  # nnU-Net marks voxels outside the nonzero mask -1: background
            cases[key] = (np.asarray(data, dtype=np.float32), seg)
        return cases

    def get_dataloaders(self):
        ignore = self.label_manager.ignore_label
        if ignore is None:
            raise RuntimeError(
                f"{self.__class__.__name__} trains on sparse labels, but {self.plans_manager.dataset_name}'s "
                f"dataset.json ({self.preprocessed_dataset_folder_base}/dataset.json, copied from nnUNet_raw) has "
                "no 'ignore' label. Make a sparse dataset with `nnunet-semisup sparsify`, or, for your own partial "
                'annotations, declare the value of unannotated voxels as "ignore" (the highest label value) in '
                "nnUNet_raw's dataset.json and run nnUNetv2_plan_and_preprocess again."
            )
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets inference mirroring axes
        tr_keys, val_keys = self.do_split()
        axes = {p: network_axis(p, self.plans_manager.transpose_forward) for p in self.planes}
        patch = list(self.configuration_manager.patch_size)
        frac = self.min_annotated_fraction
        train = SparseSliceLoader(
            self._load_cases(tr_keys), self.batch_size_2d, patch, axes, ignore, min_annotated_fraction=frac
        )
        val = SparseSliceLoader(
            self._load_cases(val_keys), self.batch_size_2d, patch, axes, ignore, False, 0, frac
        )
        return train, val
