"""``LabeledOnlyTrainer``: the labeled-only baseline every semi-supervised method is measured against."""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semisup.schedules import apply_schedule
from nnunet_semisup.trainers.base import (
    FewLabeledCasesSplitMixin,
    MixedPrecisionMixin,
    UserInputErrorExitMixin,
    remove_stale_checkpoint_temporaries,
)


class LabeledOnlyTrainer(
    UserInputErrorExitMixin, FewLabeledCasesSplitMixin, MixedPrecisionMixin, nnUNetTrainer
):
    """nnU-Net's ``nnUNetTrainer`` unchanged, except that it honours ``nnUNet_semisup_schedule``, so the
    baseline runs on exactly the schedule (epochs, iterations) of the semi-supervised trainers it is
    compared with, and that its checkpoints are written atomically (temporary file + rename, so a job killed
    while saving keeps its previous checkpoint). Unlabeled images are ignored. ``cpu_mixed_precision`` (see
    :class:`~nnunet_semisup.trainers.base.MixedPrecisionMixin`) runs nnU-Net's AMP step on CPU. Like every trainer of
    the package it makes a leave-one-out split for 2 to 4 labeled cases
    (:class:`~nnunet_semisup.trainers.base.FewLabeledCasesSplitMixin`) and stops on bad input with the message
    alone (:class:`~nnunet_semisup.trainers.base.UserInputErrorExitMixin`)."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule(self)

    def on_train_start(self) -> None:
        if self.local_rank == 0:
            remove_stale_checkpoint_temporaries(self.output_folder, self.print_to_log_file)
        super().on_train_start()

    def train_step(self, batch: dict) -> dict:
        # nnU-Net's step, which enters autocast on CUDA only; on CPU with cpu_mixed_precision inside bfloat16
        # autocast (nnU-Net's own step then runs its GradScaler branch, as on CUDA)
        with self.autocast_context():
            return super().train_step(batch)

    def save_checkpoint(self, filename: str) -> None:
        tmp = f"{filename}.tmp{os.getpid()}"
        super().save_checkpoint(tmp)  # writes only on rank 0 with checkpointing enabled
        if os.path.exists(tmp):
            os.replace(tmp, filename)
