"""``LabeledOnlyTrainer``: the labeled-only baseline every semi-supervised method is measured against."""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semisup.schedules import apply_schedule


class LabeledOnlyTrainer(nnUNetTrainer):
    """nnU-Net's ``nnUNetTrainer`` unchanged, except that it honours ``nnUNet_semisup_schedule``, so the
    baseline runs on exactly the schedule (epochs, iterations) of the semi-supervised trainers it is
    compared with. Unlabeled images are ignored."""

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
