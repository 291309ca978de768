"""``BCPTrainer``: Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation",
CVPR 2023, for nnU-Net's patches."""

from __future__ import annotations

import math

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_semisup.nnunet_commands import pretrained_weights_argument
from nnunet_semisup.segmentation_targets import (
    deep_supervised_loss,
    downsample_for_deep_supervision,
    full_resolution,
    pseudo_labels,
    split_annotated,
    split_outputs,
)
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.bcp.copy_paste import copy_paste_boxes, paste
from nnunet_semisup.trainers.bcp.mixed_loss import CopyPasteMixedLoss
from nnunet_semisup.trainers.ema_teacher import EMATeacherMixin


class BCPTrainer(EMATeacherMixin, SemiSupervisedTrainer):
    """Mean teacher trained on bidirectionally copy-pasted patches (Bai et al., CVPR 2023, Sec. 3).

    Per iteration, with a box ``1 - M`` of 2/3 of every side at a random place (one per pair of patches):

    - ``X_in = X_l * M + X_u * (1 - M)`` (an unlabeled box pasted into a labeled patch) and
      ``X_out = X_u * M + X_l * (1 - M)`` (a labeled box pasted into an unlabeled patch); as in BCP's code the
      first half of the labeled and unlabeled batch makes ``X_in``, the second half ``X_out`` (a batch of one
      patch makes both, with the same box);
    - targets mixed with the same box: ground truth on the labeled part, the EMA teacher's hard pseudo-labels
      of the unlabeled patch on the other (argmax of the softmax; region-based datasets: sigmoid > 0.5);
    - ``L = L_in + L_out``, each ``((CE + Dice)[labeled part] + alpha (CE + Dice)[unlabeled part]) / 2``
      (:class:`CopyPasteMixedLoss`, alpha = 0.5, BCP's code), at every deep-supervision level with the mixed targets
      downsampled like nnU-Net's; voxels under nnU-Net's ignore label carry no loss wherever they are pasted;
    - teacher: EMA of the student, decay 0.99 (BCP's code, no warm-up), a float32 copy made after the DDP wrap;
      ``network_weights`` is the student (what nnU-Net validates and ``nnUNetv2_predict`` uses).

    Pre-training: BCP first trains on labeled patches only, copy-pasted among themselves, then starts both
    student and teacher from that model. Two entry points:

    1. in the schedule (default): the first ``pretrain_fraction`` of the iterations train with nnU-Net's loss
       on labeled patches with a box of another labeled patch of the batch pasted in (ignore label and deep
       supervision as in nnU-Net), the teacher a copy of the student; ``pretrain_fraction = 2000 / 17000`` is
       BCP's 3D setting (LA: 2,000 pre-training and 15,000 self-training iterations);
    2. ``-pretrained_weights CHECKPOINT`` (any checkpoint of the same plans, e.g. a ``LabeledOnlyTrainer`` or
       ``BCPTrainer`` run): the stage is skipped, student and teacher start from the checkpoint, and the
       segmentation layers that nnU-Net's ``-pretrained_weights`` leaves out (they are meant for transfer to
       other labels) are loaded from it too when their shapes match, as BCP starts the self-training from the
       whole pre-trained network. ``--c`` remembers which entry point a run used (``semisup_state``).
    """

    unlabeled_region_weight: float = 0.5  # alpha (BCP's code: u_weight = 0.5)
    box_fraction: float = 2 / 3  # beta: side of the pasted box relative to the patch (BCP: mask_ratio = 2/3)
    ema_decay: float = 0.99  # BCP's code: update_ema_variables(model, ema_model, 0.99)
    pretrain_fraction: float = 2000 / 17000  # BCP (LA): 2,000 pre-training of 17,000 iterations in all
    semisup_log_keys = ("loss_in", "loss_out", "pretraining")

    def initialize(self) -> None:
        super().initialize()
        if not 0.0 <= self.pretrain_fraction < 1.0:
            raise ValueError(f"pretrain_fraction must be in [0, 1), got {self.pretrain_fraction}")
        self.pretrained_from: str | None = None
        self.mixed_loss = CopyPasteMixedLoss(
            self.label_manager.has_regions,
            batch_dice=self.configuration_manager.batch_dice,
            unlabeled_weight=self.unlabeled_region_weight,
        )

    @property
    def pretraining_iterations(self) -> int:
        """Iterations of the labeled-only copy-paste stage: 0 when the run started from -pretrained_weights."""
        if self.pretrained_from is not None:
            return 0
        return round(self.pretrain_fraction * self.num_epochs * self.num_iterations_per_epoch)

    def in_pretraining(self) -> bool:
        return self.global_step < self.pretraining_iterations

    def on_fresh_start(self) -> None:
        self.pretrained_from = pretrained_weights_argument()
        if self.pretrained_from is not None:
            self.load_pretrained_segmentation_layers(self.pretrained_from)
            self.print_to_log_file(
                f"BCP: pre-trained network from {self.pretrained_from}: no pre-training stage, self-training "
                f"from the first iteration"
            )
        else:
            self.print_to_log_file(
                f"BCP: labeled-only copy-paste pre-training for {self.pretraining_iterations} iterations"
            )
        super().on_fresh_start()  # the teacher starts as the (pre-trained) student

    def load_pretrained_segmentation_layers(self, checkpoint_path: str) -> None:
        """Load ``decoder.seg_layers`` from ``checkpoint_path`` (which nnU-Net's ``-pretrained_weights`` skips)
        when every one of them has the shape of ours; otherwise keep the fresh ones and say so."""
        weights = torch.load(checkpoint_path, map_location="cpu", weights_only=False)["network_weights"]
        network = unwrap_network(self.network)
        ours = {k: v for k, v in network.state_dict().items() if ".seg_layers." in k}
        theirs = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in weights.items()}
        if all(k in theirs and theirs[k].shape == v.shape for k, v in ours.items()):
            network.load_state_dict({k: theirs[k] for k in ours}, strict=False)
        else:
            self.print_to_log_file(
                f"WARNING: the segmentation layers of {checkpoint_path} do not fit this dataset's labels: they "
                f"start from their initialization (the teacher's first pseudo-labels will be poor)"
            )

    # ------------------------------------------------------------------ losses
    def _deep_supervision(self) -> tuple[list | None, tuple | None]:
        weights = self.loss.weight_factors if isinstance(self.loss, DeepSupervisionWrapper) else None
        return (self._get_deep_supervision_scales() if weights is not None else None), weights

    def pretraining_loss(self, data: torch.Tensor, target) -> tuple[torch.Tensor, dict]:
        """nnU-Net's loss on labeled patches with a box of the previous labeled patch of the batch pasted in
        (BCP's pre-training), the mixed target downsampled for deep supervision like nnU-Net's."""
        full = full_resolution(target)
        boxes = copy_paste_boxes(data.shape[0], data.shape[2:], self.box_fraction, data.device)
        source = torch.roll(torch.arange(data.shape[0], device=data.device), 1)
        images = paste(data, data[source], boxes)
        mixed = paste(full, full[source], boxes)
        if isinstance(target, (list, tuple)):
            mixed = downsample_for_deep_supervision(mixed, self._get_deep_supervision_scales())
        loss = self.loss(self.network(images), mixed)
        return loss, {"loss_in": math.nan, "loss_out": math.nan, "pretraining": 1.0}

    def compute_loss(self, data, target, unlabeled):
        if self.in_pretraining():
            return self.pretraining_loss(data, target)
        n = data.shape[0]
        if unlabeled.shape[0] != n:
            raise ValueError(
                f"BCP pairs every labeled patch with an unlabeled one: the unlabeled batch has {unlabeled.shape[0]} "
                f"patches, the labeled one {n} (leave unlabeled_batch_size at None)"
            )
        region_based = self.label_manager.has_regions
        labels, annotated = split_annotated(
            full_resolution(target), region_based, self.label_manager.ignore_label
        )
        with torch.no_grad():
            pseudo, _ = pseudo_labels(full_resolution(self.teacher(unlabeled)), region_based)
            boxes = copy_paste_boxes(n, data.shape[2:], self.box_fraction, data.device)
        first, second = (
            (slice(0, 1), slice(0, 1)) if n == 1 else (slice(0, (n + 1) // 2), slice((n + 1) // 2, n))
        )
        box_in, box_out = boxes[first].float(), boxes[second].float()
        # X_in: labeled outside the box, unlabeled inside; X_out: the reverse
        x_in = paste(data[first], unlabeled[first], boxes[first])
        x_out = paste(unlabeled[second], data[second], boxes[second])
        target_in = paste(labels[first], pseudo[first], boxes[first])
        target_out = paste(pseudo[second], labels[second], boxes[second])
        labeled_in, unlabeled_in = (1 - box_in) * annotated[first], box_in
        labeled_out, unlabeled_out = box_out * annotated[second], 1 - box_out

        output = self.network(torch.cat([x_in, x_out]))
        output_in, output_out = split_outputs(output, [x_in.shape[0], x_out.shape[0]])
        scales, weights = self._deep_supervision()
        loss_in = deep_supervised_loss(
            self.mixed_loss, output_in, [target_in, labeled_in, unlabeled_in], scales, weights
        )
        loss_out = deep_supervised_loss(
            self.mixed_loss, output_out, [target_out, labeled_out, unlabeled_out], scales, weights
        )
        return loss_in + loss_out, {"loss_in": loss_in, "loss_out": loss_out, "pretraining": 0.0}

    # ------------------------------------------------------------------ teacher
    def teacher_ema_decay(self) -> float:
        # during pre-training the teacher is the student (decay 0): self-training starts with both equal to the
        # pre-trained model, as in BCP; then a constant 0.99 (BCP's code has no warm-up)
        return 0.0 if self.global_step <= self.pretraining_iterations else self.ema_decay

    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        state["pretrained_from"] = self.pretrained_from
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        self.pretrained_from = state.get("pretrained_from")


class BCPTrainer_NoPretrain(BCPTrainer):
    """No labeled-only pre-training stage: bidirectional copy-paste with the EMA teacher from the first
    iteration (the teacher starts from the student's initialization)."""

    pretrain_fraction = 0.0
