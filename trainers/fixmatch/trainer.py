"""``FixMatchTrainer``: Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020, for nnU-Net's patches."""

from __future__ import annotations

import re

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_semisup.losses.masked_cross_entropy import MaskedCrossEntropyLoss
from nnunet_semisup.losses.masked_soft_dice import MaskedSoftDiceLoss
from nnunet_semisup.segmentation_targets import (
    deep_supervised_loss,
    full_resolution,
    pseudo_labels,
    split_outputs,
)
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.ema_teacher import EMATeacherMixin
from nnunet_semisup.trainers.fixmatch.cutmix import cutmix, random_boxes, rolled_source
from nnunet_semisup.trainers.fixmatch.strong_augmentation import StrongIntensityAugmentation
from nnunet_semisup.training_log import SemiSupLocalLogger

TEACHER_SOURCES = ("ema", "student")


def confident_fraction_keys(label_manager, dataset_json: dict) -> list[str]:
    """Log names ``conf_<name>`` of the per-class (label-based: every class, background included) or per-region
    confident-voxel fractions, named after dataset.json's labels."""
    labels = {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}
    if label_manager.has_regions:
        names = [k for k in labels if k != "background"]
    else:
        by_value = {int(v): k for k, v in labels.items() if not isinstance(v, (list, tuple))}
        names = [by_value.get(c, str(c)) for c in range(label_manager.num_segmentation_heads)]
    return [f"conf_{re.sub(r'[^0-9A-Za-z]+', '_', name)}" for name in names]


class FixMatchTrainer(EMATeacherMixin, SemiSupervisedTrainer):
    """nnU-Net's supervised loss plus FixMatch's unlabeled loss: hard pseudo-labels from a weak view of each
    unlabeled patch, kept where the teacher is confident, train the student on a strong view of the same patch.

    ``L = L_sup + lambda_u * L_u``, ``L_u = sum_v 1(c_v >= tau) H(y^_v, p_student(strong view)_v) / N``
    (Sohn et al., NeurIPS 2020, Sec. 2: the loss l_u), with

    - weak view: the unlabeled patch after nnU-Net's training augmentation (the unlabeled loader's);
    - pseudo-label ``y^_v`` and confidence ``c_v``: argmax and maximum of the teacher's softmax on the weak view
      (region-based datasets: sigmoid > 0.5 per region, ``c = max(p, 1 - p)`` per region);
    - strong view: :class:`StrongIntensityAugmentation` (intensity only, so the pseudo-labels stay aligned) plus
      CutMix boxes between the unlabeled patches of the batch, pseudo-labels and confidences mixed with the same
      box (UniMatch, Yang et al., CVPR 2023, Sec. 3; French et al., BMVC 2020);
    - ``N``: *all* voxels of the unlabeled batch, confident or not (FixMatch's l_u divides by all mu*B unlabeled samples);
    - deep supervision: ``L_u`` at every output level, pseudo-labels and masks downsampled like nnU-Net's targets,
      weighted like nnU-Net's levels.

    Teacher: by default an exponential moving average of the student (``teacher_source = "ema"``). FixMatch as
    published labels with the model itself (``FixMatchTrainer_SelfTeacher``); with nnU-Net's SGD (lr 0.01,
    Nesterov momentum 0.99) the student's predictions move noticeably from one iteration to the next, and an
    EMA teacher averages them over the last ~100 iterations, which gives steadier pseudo-labels for the same
    cost (one forward pass without gradient either way; Tarvainen & Valpola, NeurIPS 2017; the EMA teacher is
    also what BCP and most medical pseudo-label methods use). The teacher is a float32 copy, never
    DDP-wrapped, saved in ``semisup_state['teacher']``; ``network_weights`` is the student, which nnU-Net
    validates and ``nnUNetv2_predict`` uses.

    Logged per epoch: ``loss_sup``, ``loss_unsup``, ``unsup_weight``, ``conf_frac`` (fraction of unlabeled voxels with
    ``c >= tau``) and ``conf_<label>`` per class (fraction of the voxels pseudo-labeled as that class that are
    confident) or per region.
    """

    confidence_threshold: float = 0.95  # tau (Sohn et al. 2020, Sec. 4; UniMatch's medical config too)
    unlabeled_loss_weight: float = 1.0  # lambda_u (Sohn et al. 2020, Sec. 4)
    ramp_up_unlabeled_weight: bool = False  # FixMatch uses a constant lambda_u (see FixMatchTrainer_RampUp)
    teacher_source: str = "ema"  # "ema" or "student" (FixMatch as published)
    ema_decay: float = 0.99  # as the 3D mean-teacher implementations (UA-MT, SSL4MIS) and BCP's code
    # soft Dice on the confident voxels besides the cross-entropy (FixMatchTrainer_ConfidentDice)
    use_unlabeled_dice: bool = False
    use_cutmix: bool = True
    cutmix_probability: float = 0.5  # UniMatch's medical code: a box for half of the strong views
    cutmix_volume_range: tuple[float, float] = (0.02, 0.4)  # UniMatch: box area 2-40 % of the image
    cutmix_aspect_range: tuple[float, float] = (0.3, 1 / 0.3)  # UniMatch's aspect ratio range
    strong_augmentation: StrongIntensityAugmentation = StrongIntensityAugmentation()
    semisup_log_keys = ("loss_sup", "loss_unsup", "unsup_weight", "conf_frac")

    def on_init(self) -> None:
        if self.teacher_source not in TEACHER_SOURCES:
            raise ValueError(f"teacher_source must be one of {TEACHER_SOURCES}, got {self.teacher_source!r}")
        # one curve per class or region of this dataset, known only now that the label manager exists
        self.confidence_log_keys = confident_fraction_keys(self.label_manager, self.dataset_json)
        self.semisup_log_keys = (*type(self).semisup_log_keys, *self.confidence_log_keys)
        self.logger.local_logger = SemiSupLocalLogger(self.semisup_log_keys)

    def initialize(self) -> None:
        super().initialize()  # also the EMA teacher, unless teacher_source == "student" (EMATeacherMixin)
        region_based = self.label_manager.has_regions
        self.unlabeled_ce = MaskedCrossEntropyLoss(region_based, normalization="all")
        self.unlabeled_dice = (
            MaskedSoftDiceLoss(region_based, batch_dice=self.configuration_manager.batch_dice)
            if self.use_unlabeled_dice
            else None
        )

    @property
    def uses_ema_teacher(self) -> bool:
        return self.teacher_source == "ema"

    # ------------------------------------------------------------------ views and pseudo-labels
    @torch.no_grad()
    def teacher_pseudo_labels(self, weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-labels and confidences of the weak view (see :func:`pseudo_labels` for shapes), from the EMA
        teacher or, with ``teacher_source = "student"``, from the student without gradient."""
        teacher = self.teacher if self.teacher is not None else unwrap_network(self.network)
        logits = full_resolution(teacher(weak))
        return pseudo_labels(logits, self.label_manager.has_regions)

    @torch.no_grad()
    def strong_view(
        self, weak: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Strong view of the weak batch: intensity perturbations, then CutMix boxes from the previous patch of
        the batch (images, pseudo-labels and confidences with the same box).

        Shapes:
            weak: (B_u, C, *patch). labels, confidence: (B_u, 1 or R, *patch). Returns the three, same shapes.
        """
        strong = self.strong_augmentation(weak)
        if not self.use_cutmix or weak.shape[0] < 2:  # a single patch has nothing to mix with
            return strong, labels, confidence
        boxes = random_boxes(
            weak.shape[0],
            weak.shape[2:],
            self.cutmix_probability,
            self.cutmix_volume_range,
            self.cutmix_aspect_range,
            device=weak.device,
        )
        strong, labels, confidence = cutmix(
            [strong, labels, confidence], boxes, rolled_source(weak.shape[0], weak.device)
        )
        return strong, labels, confidence

    # ------------------------------------------------------------------ losses
    def confident_voxel_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy on the confident voxels, divided by all voxels (plus soft Dice on them with
        ``use_unlabeled_dice``), at one output level."""
        loss = self.unlabeled_ce(logits, labels, mask)
        if self.unlabeled_dice is not None:
            loss = loss + self.unlabeled_dice(logits, labels, mask)
        return loss

    def unlabeled_loss(
        self, output: torch.Tensor | list[torch.Tensor], labels: torch.Tensor, confidence: torch.Tensor
    ) -> torch.Tensor:
        """FixMatch's ``L_u`` of the student's ``output`` for full-resolution ``labels``/``confidence``, at
        every deep-supervision level."""
        mask = (confidence >= self.confidence_threshold).float()
        weights = self.loss.weight_factors if isinstance(self.loss, DeepSupervisionWrapper) else None
        scales = self._get_deep_supervision_scales() if weights is not None else None
        return deep_supervised_loss(self.confident_voxel_loss, output, [labels, mask], scales, weights)

    def unlabeled_weight(self) -> float:
        """lambda_u now: constant, or sigmoid-ramped (``ramp_up_unlabeled_weight``) on the trainer's clock."""
        if self.ramp_up_unlabeled_weight:
            return self.rampup_weight(self.unlabeled_loss_weight)
        return self.unlabeled_loss_weight

    @torch.no_grad()
    def confidence_terms(self, labels: torch.Tensor, confidence: torch.Tensor) -> dict[str, float]:
        """``conf_frac`` and the per-class (or per-region) confident fractions of a weak batch (NaN for a class
        no voxel was pseudo-labeled as; the epoch mean skips NaNs)."""
        confident = confidence >= self.confidence_threshold
        if self.label_manager.has_regions:
            fractions = confident.float().mean(dim=[0, *range(2, confident.ndim)])
        else:
            n_classes = len(self.confidence_log_keys)
            classes = labels.long().flatten()
            per_class = torch.bincount(classes, minlength=n_classes).float()
            confident_per_class = torch.bincount(classes[confident.flatten()], minlength=n_classes).float()
            fractions = confident_per_class / per_class  # 0/0 = NaN for a class nobody was labeled as
        return {"conf_frac": confident.float().mean(), **dict(zip(self.confidence_log_keys, fractions))}

    def compute_loss(self, data, target, unlabeled):
        n_labeled, n_unlabeled = data.shape[0], unlabeled.shape[0]
        labels, confidence = self.teacher_pseudo_labels(unlabeled)
        terms = self.confidence_terms(labels, confidence)
        strong, strong_labels, strong_confidence = self.strong_view(unlabeled, labels, confidence)
        # one forward of the (DDP-wrapped) student on labeled + strong patches
        output = self.network(torch.cat([data, strong]))
        supervised, unsupervised = split_outputs(output, [n_labeled, n_unlabeled])
        loss_sup = self.loss(supervised, target)
        loss_u = self.unlabeled_loss(unsupervised, strong_labels, strong_confidence)
        weight = self.unlabeled_weight()
        return loss_sup + weight * loss_u, {
            "loss_sup": loss_sup,
            "loss_unsup": loss_u,
            "unsup_weight": weight,
            **terms,
        }


class FixMatchTrainer_SelfTeacher(FixMatchTrainer):
    """FixMatch as published: the pseudo-labels come from the student itself (no gradient), no EMA teacher."""

    teacher_source = "student"


class FixMatchTrainer_NoCutMix(FixMatchTrainer):
    """Strong view = intensity perturbations only (FixMatch's Cutout/CutMix part removed)."""

    use_cutmix = False


class FixMatchTrainer_Threshold0(FixMatchTrainer):
    """Every pseudo-labeled voxel counts (tau = 0): plain hard pseudo-labeling with weak-to-strong views, the
    ablation of the confidence threshold in Sohn et al. (2020, Sec. 5)."""

    confidence_threshold = 0.0


class FixMatchTrainer_ConfidentDice(FixMatchTrainer):
    """``L_u`` = cross-entropy + soft Dice on the confident voxels, the two terms of nnU-Net's supervised loss
    (UniMatch's medical code trains its unlabeled streams with Dice on the confident pixels)."""

    use_unlabeled_dice = True


class FixMatchTrainer_RampUp(FixMatchTrainer):
    """lambda_u ramped up with the sigmoid schedule of the other trainers (``rampup_fraction`` of the run),
    instead of FixMatch's constant weight."""

    ramp_up_unlabeled_weight = True
