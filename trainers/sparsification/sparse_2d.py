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
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_semisup.errors import TrainingInputError
from nnunet_semisup.networks import freeze_deep_supervision_seg_layers
from nnunet_semisup.trainers.base import SemiSupervisedTrainer
from nnunet_semisup.trainers.sparsification.networks import SliceWiseNetwork, network_axis, plainconv_unet_2d
from nnunet_semisup.trainers.sparsification.selection import PLANES
from nnunet_semisup.trainers.sparsification.slice_loader import SparseSliceLoader


class SparseMultiPlane2DTrainer(SemiSupervisedTrainer):
    """2D base model on sparse (ignore-labeled) 3D data, one network for the xy, xz and yz planes (Eq. 1).

    Attributes:
        batch_size_2d: 2D patches per iteration (the paper trains on 2D slices; nnU-Net's 2D configurations use
            far larger batches than 3D ones, 12-49; 16 here keeps CPU iterations cheap).
        planes: planes sampled (all three, as in the paper).
    """

    uses_unlabeled_data = False
    batch_size_2d: int = 16
    requires_3d_volumes = (
        "its 2D network is trained on slices of the 3D volumes along the xy, xz and yz planes, and the cascade's "
        "pseudo-labels fuse those three planes with a 3D model"
    )
    planes: tuple[str, ...] = PLANES
    # slices sampled: at least this share of their voxels annotated (the annotated slices of the plane; README)
    min_annotated_fraction: float = 0.5
    # Dice over the whole batch of slices, as nnU-Net's own 2D configurations (its planner sets batch_dice=True
    # for 2d); the 3D plans read here say False
    batch_dice_2d: bool = True

    def on_init(self) -> None:
        super().on_init()
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
            raise TrainingInputError(
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
