"""``SelfTrainingMetaTrainer``: the meta-model of annotation sparsification (Zheng et al., AAAI 2020, Sec.
"Self-Training", Eq. 9 and the nearest-neighbour fit).

Data: a *meta dataset* written by ``nnunet-semisup pseudo-labels --meta-id ID``; every case has the image
channels, then the K class probabilities of A(Y^) (the average of the four pseudo-label sets), then the four
pseudo-label sets (3d, xy, xz, yz) as label-valued channels; its label file is the sparse annotation (ignore
label elsewhere; all-ignore for unlabeled cases).

Network: a Y-shaped U-Net (:class:`YShapedUNet`): one encoder for the image, one for A(Y^), their skips summed
stage by stage into one decoder. The pseudo-label channels are not network inputs; they ride along through
nnU-Net's cropping and spatial augmentation so that targets stay aligned with the patch.

Target of each iteration (annotated voxels always keep their annotation):
- stage 1 (``stage1_fraction`` of the iterations): one of the four sets at random (Eq. 9);
- stage 2 (the rest, nearest-neighbour fit): per sample, the set closest to the current output by
  cross-entropy.
"""

from __future__ import annotations

import pydoc

import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from torch import nn

from nnunet_semisup.errors import TrainingInputError
from nnunet_semisup.trainers.base import SemiSupervisedTrainer
from nnunet_semisup.trainers.sparsification.multiview_pseudo_labels import SOURCES, nearest_pseudo_label_set
from nnunet_semisup.trainers.sparsification.networks import YShapedUNet

NUM_SETS = len(SOURCES)
# nnU-Net's intensity augmentations: they would alter the A(Y^) and pseudo-label channels, so they are removed
_INTENSITY_TRANSFORMS = (
    "GaussianNoiseTransform",
    "GaussianBlurTransform",
    "MultiplicativeBrightnessTransform",
    "ContrastTransform",
    "SimulateLowResolutionTransform",
    "GammaTransform",
)


class SelfTrainingMetaTrainer(SemiSupervisedTrainer):
    """Meta-model self-training on a meta dataset (``nnunet-semisup pseudo-labels --meta-id``).

    Attributes:
        stage1_fraction: share of all iterations in stage 1 (random set, Eq. 9); the rest is stage 2
            (nearest-neighbour fit). The paper gives no lengths that carry over to nnU-Net's schedule; half and
            half is our choice (README). ``SelfTrainingMetaTrainer_Stage1Only`` is the stage-1-only variant.
    """

    uses_unlabeled_data = False
    stage1_fraction: float = 0.5
    requires_3d_volumes = (
        "the meta model learns from the sparsification cascade's four pseudo-label sets, a 3D model's and the 2D "
        "models' along the xy, xz and yz planes of 3D volumes"
    )
    semisup_log_keys = ("stage", "set_3d", "set_xy", "set_xz", "set_yz")

    def on_init(self) -> None:
        super().on_init()
        # the pseudo-label channels are only available at full resolution
        self.enable_deep_supervision = False
        self.set_generator = torch.Generator().manual_seed(12345)

    @staticmethod
    def build_network_architecture(
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        kwargs = dict(configuration_manager.network_arch_init_kwargs)
        for key in configuration_manager.network_arch_init_kwargs_req_import:
            if kwargs[key] is not None:
                kwargs[key] = pydoc.locate(kwargs[key])
        image_channels = num_input_channels - num_output_channels - NUM_SETS
        if image_channels < 1:
            raise TrainingInputError(
                f"SelfTrainingMetaTrainer needs a meta dataset (image + {num_output_channels} A(Y^) + {NUM_SETS} "
                f"pseudo-label channels), got {num_input_channels} channels: make one with `nnunet-semisup "
                "pseudo-labels --meta-id ID`"
            )
        return YShapedUNet(image_channels, num_output_channels, kwargs)

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        transforms = SemiSupervisedTrainer.get_training_transforms(*args, **kwargs)
        kept = [
            t
            for t in transforms.transforms
            if not (isinstance(t, RandomTransform) and type(t.transform).__name__ in _INTENSITY_TRANSFORMS)
        ]
        return ComposeTransforms(kept)

    @property
    def stage1_iterations(self) -> int:
        return self.iterations_of(self.stage1_fraction)

    @property
    def stage(self) -> int:
        """1 (random pseudo-label set) or 2 (nearest-neighbour fit), from the iteration counter."""
        return 1 if self.global_step < self.stage1_iterations else 2

    def compute_loss(self, data, target, unlabeled):
        k = self.label_manager.num_segmentation_heads
        sets = data[:, -NUM_SETS:].round().clamp(0, k - 1)  # (B, S, *patch); interpolation undone
        output = self.network(data)
        if self.stage == 1:  # Eq. 9: one set, drawn at random, for the whole iteration
            choice = torch.randint(NUM_SETS, (1,), generator=self.set_generator).expand(data.shape[0])
        else:
            choice = nearest_pseudo_label_set(output.detach(), sets)
        chosen = sets[torch.arange(data.shape[0]), choice.to(data.device)][:, None]
        annotated = target != self.label_manager.ignore_label
        loss = self.loss(output, torch.where(annotated, target, chosen))
        counts = torch.bincount(choice.cpu(), minlength=NUM_SETS).float() / len(choice)
        return loss, {"stage": float(self.stage), **{f"set_{s}": counts[i] for i, s in enumerate(SOURCES)}}

    def get_semisup_state(self) -> dict:
        return {
            **super().get_semisup_state(),
            "stage": self.stage,
            "set_generator": self.set_generator.get_state(),
        }

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        self.set_generator.set_state(state["set_generator"])
        if state["stage"] != self.stage:
            raise TrainingInputError(
                f"checkpoint was saved in stage {state['stage']}, but iteration {self.global_step} is stage "
                f"{self.stage} with stage1_fraction={self.stage1_fraction}: resume with the same schedule"
            )


class SelfTrainingMetaTrainer_Stage1Only(SelfTrainingMetaTrainer):
    """Ablation: no nearest-neighbour fit, a random pseudo-label set every iteration (Eq. 9 only)."""

    stage1_fraction = 1.0
