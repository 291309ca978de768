"""``DualSubnetContrastTrainer``: Karimijafarbigloo, Azad et al., "Leveraging Unlabeled Data for 3D Medical Image
Segmentation through Self-Supervised Contrastive Learning" (2023; public code: github.com/xmindflow/SSL-contrastive,
a binary V-Net + ResNet-34 fork of MCF), and its ablations without L_reg and without L_c."""

from __future__ import annotations

import math

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.dual_subnet.confident_disagreement_loss import ConfidentDisagreementLoss
from nnunet_semisup.trainers.dual_subnet.heads import FeatureTap, ProjectionHeadPair, VoxelProjectionHead
from nnunet_semisup.trainers.dual_subnet.labeled_disagreement_loss import (
    LabeledDisagreementLoss,
    confident_foreground_disagreement_mask,
)
from nnunet_semisup.trainers.dual_subnet.prototype_contrast_loss import PrototypeContrastLoss, sample_voxels
from nnunet_semisup.trainers.dual_subnet.pseudo_labels import (
    filtered_pseudo_labels,
    pseudo_label_loss,
    select_pseudo_label_source,
)

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL_ENCODER_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
_RESIDUAL_ONLY_KWARGS = ("block", "bottleneck_channels", "stem_channels")


def partner_architecture(arch_class_name: str, arch_kwargs: dict) -> tuple[str, dict]:
    """Subnet B's architecture: a different encoder-decoder of similar size, with the planned network's stages,
    features, kernels and strides (so its deep-supervision outputs match subnet A's).

    The plain-convolution U-Net (nnU-Net's default plans) is paired with the residual-encoder U-Net (one residual
    block of two convolutions per stage for every two planned convolutions), and the residual-encoder U-Net
    (ResEnc plans) with the plain U-Net (two convolutions per residual block); the decoders stay as planned.

    Args:
        arch_class_name: the plans' ``network_class_name`` (full dotted path or the bare class name).
        arch_kwargs: the plans' ``arch_kwargs`` (strings for the classes to import, as in the plans file).

    Returns:
        Subnet B's class name (full dotted path) and keyword arguments (same format).
    """
    short_name = arch_class_name.rsplit(".", 1)[-1]
    kwargs = dict(arch_kwargs)
    if short_name == "PlainConvUNet":
        convs = kwargs.pop("n_conv_per_stage")
        convs = [convs] * kwargs["n_stages"] if isinstance(convs, int) else list(convs)
        kwargs.pop("nonlin_first", None)
        kwargs["n_blocks_per_stage"] = [max(1, math.ceil(n / 2)) for n in convs]
        return RESIDUAL_ENCODER_UNET, kwargs
    if short_name == "ResidualEncoderUNet":
        blocks = kwargs.pop("n_blocks_per_stage")
        blocks = [blocks] * kwargs["n_stages"] if isinstance(blocks, int) else list(blocks)
        for key in _RESIDUAL_ONLY_KWARGS:
            kwargs.pop(key, None)
        kwargs["n_conv_per_stage"] = [2 * n for n in blocks]
        return PLAIN_UNET, kwargs
    raise ValueError(
        f"DualSubnetContrastTrainer pairs nnU-Net's PlainConvUNet with a ResidualEncoderUNet (and back); the plans "
        f"use {arch_class_name}, for which no partner architecture is defined. Use plans with one of these two "
        f"architectures (nnUNetPlannerResEnc* plans give ResidualEncoderUNet) or override "
        f"build_subnet_b in a subclass."
    )


class DualSubnetContrastTrainer(SemiSupervisedTrainer):
    """Two different subnets trained together; pseudo-labels from the better one, confident-disagreement
    regularization and prototype contrast on unlabeled patches.

    - Subnet A is ``self.network``, nnU-Net's planned network (``network_weights``, what ``nnUNetv2_predict``
      and nnU-Net's validation use). Subnet B (``self.subnet_b``) is the partner architecture built from the same
      plans (:func:`partner_architecture`: residual-encoder U-Net for the plain U-Net). Both have deep
      supervision; one SGD optimizer with a parameter group per subnet (nnU-Net's settings and poly schedule),
      each subnet clipped on its own.
    - L_s (Eq. 1): nnU-Net's Dice + CE with deep supervision, for both subnets on the labeled patches.
    - L_u (Eq. 2-3): the subnet with the lower L_s on this labeled batch labels the unlabeled patches (argmax);
      the ``entropy_drop_fraction`` highest-entropy voxels of each predicted class are unreliable and ignored;
      Dice + CE of both subnets' full-resolution outputs on the reliable pseudo-labels,
      ``+ regularization_weight * L_reg``.
    - L_reg (Eq. 4-5): L1 between the two subnets' probabilities where both are confident (max p > T) and
      disagree (argmax differs), T scheduled from ``confidence_threshold_start`` to ``..._end``.
    - L_c (Eq. 6-7): per-voxel features (a 1x1x1 projection of each subnet's last decoder stage, taken with a
      forward hook); prototypes from a bounded sample of reliable voxels per class, a bounded sample of
      unreliable voxels pulled to the prototype of their pseudo-class, prototypes pushed apart; for both subnets.
    - ``L = L_s^A + L_s^B + lambda_u L_u + lambda_c(t) (L_c^A + L_c^B)``.

    Label-based (softmax) datasets with any number of classes; region-based datasets are refused. Subnet B, the
    heads and B's architecture are saved in ``semisup_state`` and restored by ``--c``; the optimizer state holds
    both subnets' momentum. ``nnunet-semisup predict-dual-subnet --source b|average`` predicts with subnet B or
    with the mean of both subnets' probabilities.
    """

    unlabeled_weight: float = 1.0  # lambda_u = 1 (paper, Eq. 8)
    # lambda_u constant (paper); True = the sigmoid ramp-up to unlabeled_weight (variant _RampU, see README)
    unlabeled_weight_rampup: bool = False
    regularization_weight: float = 1.0  # L_reg enters L_u with weight 1 (paper, Eq. 2; authors' code: 0.5)
    uses_regularization: bool = True
    uses_prototype_contrast: bool = True
    # lambda_c(t): "rampup" = contrast_weight * exp(-5 (1 - t/t_max)^2), the authors' code (--consistency 0.1,
    # sigmoid ramp-up over 40 x 150 = all 6000 iterations); "printed" = contrast_weight * exp(4 (1 - t/t_max)^2),
    # the paper's formula as printed (decays from ~5.5 to 0.1); see README
    contrast_weight: float = 0.1
    contrast_schedule: str = "rampup"
    rampup_fraction: float = 1.0
    # T of M_diff: the authors' code uses a constant 0.6 (Thresh = 0.6); linear from start to end over training
    confidence_threshold_start: float = 0.6
    confidence_threshold_end: float = 0.6
    entropy_drop_fraction: float = 0.2  # the authors' code: percent=20 (see README for its percentile)
    # rank entropies within each predicted class (True) or over the whole batch as the authors' code (False;
    # variant _GlobalEntropy): batch-wide, a small foreground is never reliable (README, hippocampus)
    entropy_filter_per_class: bool = True
    feature_dim: int = 16  # D; the authors' features are the 16 channels of the last decoder block
    prototype_temperature: float = 1.0  # Eq. 7 as printed: softmax of -distance, no temperature
    prototype_push_weight: float = (
        1.0  # separation of the prototypes next to the pull term (Sec. 2.3: push apart; no weight given)
    )
    max_reliable_voxels_per_class: int = 1024  # bounded samples: memory independent of the patch size
    max_unreliable_voxels_per_class: int = 1024
    semisup_log_keys = (
        "loss_sup_a",
        "loss_sup_b",
        "loss_unsup",
        "loss_reg",
        "loss_contrast",
        "contrast_weight",
        "unsup_weight",
        "threshold",
        "source_b",
        "m_diff_fraction",
    )

    # ------------------------------------------------------------------ building
    def subnet_b_architecture(self) -> tuple[str, dict, list[str]]:
        """Subnet B's (class name, arch kwargs, kwargs to import), as in a plans file."""
        cm = self.configuration_manager
        name, kwargs = partner_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs)
        return name, kwargs, list(cm.network_arch_init_kwargs_req_import)

    def build_subnet_b(self) -> nn.Module:
        name, kwargs, requires_import = self.subnet_b_architecture()
        return get_network_from_plans(
            name,
            kwargs,
            requires_import,
            self.num_input_channels,
            self.label_manager.num_segmentation_heads,
            allow_init=True,
            deep_supervision=self.enable_deep_supervision,
        ).to(self.device)

    def configure_optimizers(self):
        # called by nnU-Net's initialize() after building self.network and before its DDP wrap: subnet B and the
        # heads are built here so they get parameter groups of nnU-Net's optimizer (same SGD settings; PolyLR sets
        # every group's lr) and their momentum is part of the optimizer state that --c restores
        if self.label_manager.has_regions:
            raise ValueError(
                f"{self.__class__.__name__} needs label-based training (softmax over classes): pseudo-labels, "
                f"entropy and prototypes are per class. The dataset {self.plans_manager.dataset_name} is "
                f"region-based (dataset.json 'labels' with lists of labels); use label-based labels or another "
                f"trainer."
            )
        self.subnet_b = self.build_subnet_b()
        if self._do_i_compile():
            self.subnet_b = torch.compile(self.subnet_b)
        optimizer, lr_scheduler = super().configure_optimizers()
        optimizer.add_param_group({"params": list(self.subnet_b.parameters())})
        self.heads = None
        if self.uses_prototype_contrast:
            width_a = unwrap_network(self.network).encoder.output_channels[0]
            width_b = unwrap_network(self.subnet_b).encoder.output_channels[0]
            self.heads = ProjectionHeadPair(
                VoxelProjectionHead(width_a, self.feature_dim), VoxelProjectionHead(width_b, self.feature_dim)
            ).to(self.device)
            optimizer.add_param_group({"params": list(self.heads.parameters())})
        return optimizer, lr_scheduler

    def initialize(self) -> None:
        for name in ("entropy_drop_fraction",):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{self.__class__.__name__}.{name} must be in [0, 1), got {value}")
        if self.contrast_schedule not in ("rampup", "printed"):
            raise ValueError(
                f"{self.__class__.__name__}.contrast_schedule must be 'rampup' or 'printed', "
                f"got {self.contrast_schedule!r}"
            )
        super().initialize()
        if self.is_ddp:  # their own wraps, as nnU-Net wraps self.network (broadcasts rank 0's weights)
            self.subnet_b = self.wrap_ddp(self.subnet_b)
        self.heads_for_training = (
            self.wrap_ddp(self.heads, sync_batchnorm=False)
            if self.is_ddp and self.heads is not None
            else self.heads
        )
        # last decoder stage (full resolution) of each subnet; hooks on the plain modules, so DDP and
        # torch.compile wrappers and the state dicts stay untouched
        self.feature_taps = (
            [
                FeatureTap(unwrap_network(self.network).decoder.stages[-1]),
                FeatureTap(unwrap_network(self.subnet_b).decoder.stages[-1]),
            ]
            if self.uses_prototype_contrast
            else None
        )
        self.regularization_loss = ConfidentDisagreementLoss(self.confidence_threshold_start)
        self.contrast_loss = PrototypeContrastLoss(
            self.label_manager.num_segmentation_heads, self.prototype_temperature, self.prototype_push_weight
        )
        # Dice + CE as nnU-Net's L_s (full resolution), with the unreliable voxels as ignore label
        self.pseudo_label_ignore_index = self.label_manager.num_segmentation_heads
        self.unlabeled_loss = pseudo_label_loss(
            self.pseudo_label_ignore_index, self.configuration_manager.batch_dice, self.is_ddp
        )
        name, _, _ = self.subnet_b_architecture()
        self.print_to_log_file(
            f"DualSubnetContrast: subnet A {self.configuration_manager.network_arch_class_name} (network_weights), "
            f"subnet B {name}; L_reg {'on' if self.uses_regularization else 'off'}, L_c "
            f"{'on' if self.uses_prototype_contrast else 'off'} ({self.contrast_schedule} lambda_c)"
        )

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.subnet_b.train()
        if self.heads is not None:
            self.heads.train()

    def gradient_clipping_groups(self):
        # each subnet with its head clipped to norm 12 on its own, as nnU-Net clips its one network
        groups = [list(self.network.parameters()), list(self.subnet_b.parameters())]
        if self.heads is not None:
            groups[0] += list(self.heads["a"].parameters())
            groups[1] += list(self.heads["b"].parameters())
        return groups

    # ------------------------------------------------------------------ schedules
    def confidence_threshold(self) -> float:
        """T at the current iteration: linear from ``confidence_threshold_start`` to ``..._end``."""
        start, end = self.confidence_threshold_start, self.confidence_threshold_end
        return start + (end - start) * self.training_progress

    def contrast_weight_now(self) -> float:
        """lambda_c at the current iteration (``contrast_schedule``)."""
        if self.contrast_schedule == "printed":
            return self.contrast_weight * math.exp(4.0 * (1.0 - self.training_progress) ** 2)
        return self.rampup_weight(self.contrast_weight)

    # ------------------------------------------------------------------ losses
    def _prototype_contrast(
        self, features: list[torch.Tensor], labels: torch.Tensor, reliable: torch.Tensor
    ) -> torch.Tensor:
        """L_c^A + L_c^B from both subnets' unlabeled decoder features ((B_u, C_s, *patch) each), on one bounded
        class-stratified voxel sample; ``labels`` and ``reliable`` are the flattened (B_u * prod(patch),)
        pseudo-labels and reliability mask."""
        num_classes = self.label_manager.num_segmentation_heads
        reliable_index = sample_voxels(labels, reliable, num_classes, self.max_reliable_voxels_per_class)
        unreliable_index = sample_voxels(labels, ~reliable, num_classes, self.max_unreliable_voxels_per_class)
        index = torch.cat([reliable_index, unreliable_index])
        gathered = [f.movedim(1, -1).reshape(-1, f.shape[1])[index] for f in features]
        embedded = self.heads_for_training(*gathered)  # only the sampled voxels are projected
        n_reliable = reliable_index.numel()
        return sum(
            self.contrast_loss(
                e[:n_reliable], labels[reliable_index], e[n_reliable:], labels[unreliable_index]
            )
            for e in embedded
        )

    def compute_loss(self, data, target, unlabeled):
        n_labeled = data.shape[0]
        images = self.joint_batch(data, unlabeled)
        outputs = [self.network(images), self.subnet_b(images)]
        features = [tap.features for tap in self.feature_taps] if self.feature_taps else None
        if self.feature_taps:
            for tap in self.feature_taps:
                tap.clear()
        # L_s (Eq. 1) of both subnets on the labeled patches (nnU-Net's loss, deep supervision when on)
        supervised, full_resolution = zip(
            *(self.labeled_loss_and_logits(out, target, n_labeled) for out in outputs)
        )
        source = select_pseudo_label_source(supervised)

        # L_u (Eq. 2-3): the better subnet's filtered pseudo-labels train both subnets
        logits_u = [out[n_labeled:].float() for out in full_resolution]
        probs_u = [torch.softmax(logits, 1) for logits in logits_u]
        pseudo, reliable = filtered_pseudo_labels(
            probs_u[source].detach(),
            self.entropy_drop_fraction,
            self.pseudo_label_ignore_index,
            self.entropy_filter_per_class,
        )
        loss_unsup = sum(self.unlabeled_loss(logits, pseudo) for logits in logits_u)
        loss_reg = torch.zeros((), device=data.device)
        m_diff_fraction = 0.0
        threshold = self.confidence_threshold()
        if self.uses_regularization:
            loss_reg, m_diff = self.regularization_loss(probs_u[0], probs_u[1], threshold)
            m_diff_fraction = m_diff.float().mean()

        # L_c (Eq. 6-7) of both subnets, on the same bounded voxel sample
        loss_contrast = torch.zeros((), device=data.device)
        weight_c = self.contrast_weight_now()
        if self.uses_prototype_contrast:
            labels_flat = probs_u[source].detach().argmax(1).flatten()
            loss_contrast = self._prototype_contrast(
                [f[n_labeled:] for f in features], labels_flat, reliable.flatten()
            )

        loss_u = loss_unsup + self.regularization_weight * loss_reg
        weight_u = (
            self.rampup_weight(self.unlabeled_weight)
            if self.unlabeled_weight_rampup
            else self.unlabeled_weight
        )
        total = supervised[0] + supervised[1] + weight_u * loss_u + weight_c * loss_contrast
        return total, {
            "loss_sup_a": supervised[0],
            "loss_sup_b": supervised[1],
            "loss_unsup": loss_unsup,
            "loss_reg": loss_reg,
            "loss_contrast": loss_contrast,
            "contrast_weight": weight_c,
            "unsup_weight": weight_u,
            "threshold": threshold,
            "source_b": float(source),
            "m_diff_fraction": m_diff_fraction,
        }

    # ------------------------------------------------------------------ checkpoints
    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        name, kwargs, requires_import = self.subnet_b_architecture()
        state["subnet_b"] = unwrap_network(self.subnet_b).state_dict()
        # what predict-dual-subnet needs to rebuild subnet B without this class
        state["subnet_b_architecture"] = {
            "network_class_name": name,
            "arch_kwargs": kwargs,
            "arch_kwargs_requires_import": requires_import,
        }
        if self.heads is not None:
            state["heads"] = self.heads.state_dict()
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        unwrap_network(self.subnet_b).load_state_dict(state["subnet_b"])
        if self.heads is not None:
            if "heads" not in state:
                raise ValueError(
                    f"the checkpoint has no projection heads (saved by a {self.__class__.__name__} variant without "
                    f"prototype contrast?): resume it with the trainer that wrote it"
                )
            self.heads.load_state_dict(state["heads"])


class DualSubnetContrastTrainer_NoReg(DualSubnetContrastTrainer):
    """Ablation without the confident-disagreement regularization L_reg (paper, ablation table)."""

    uses_regularization = False


class DualSubnetContrastTrainer_NoProto(DualSubnetContrastTrainer):
    """Ablation without the prototype contrast L_c (paper, ablation table); no projection heads."""

    uses_prototype_contrast = False


class DualSubnetContrastTrainer_PrintedLambda(DualSubnetContrastTrainer):
    """lambda_c = 0.1 exp(4 (1 - t/t_max)^2) as printed in the paper (decays from ~5.5 to 0.1) instead of the
    authors' code's ramp-up."""

    contrast_schedule = "printed"


class DualSubnetContrastTrainer_RisingT(DualSubnetContrastTrainer):
    """T of M_diff rising linearly from 0.6 to 0.9 over training ("T is adjusted during training" in the paper,
    without values; the authors' code keeps 0.6): only ever more confident disagreements are regularized as
    the subnets sharpen."""

    confidence_threshold_end = 0.9


class DualSubnetContrastTrainer_RampU(DualSubnetContrastTrainer):
    """lambda_u ramped up like lambda_c (``exp(-5 (1 - t/t_max)^2)`` to 1) instead of the paper's constant 1: on
    short schedules the constant weight lets the early all-background pseudo-labels of the unlabeled patches
    outweigh the labeled loss (see README, hippocampus demo)."""

    unlabeled_weight_rampup = True


class DualSubnetContrastTrainer_GlobalEntropy(DualSubnetContrastTrainer):
    """Entropy filter over all voxels of the batch together, as the authors' code, instead of per predicted
    class (on the hippocampus demo every foreground voxel was then unreliable; see README)."""

    entropy_filter_per_class = False


class DualSubnetContrastTrainer_Drop80(DualSubnetContrastTrainer):
    """The authors' code's reading of its entropy filter: ``np.percentile(entropy, 20)`` with ``entropy >= it``
    marks the 80 % highest-entropy voxels unreliable (we drop the highest 20 % by default; see README); per
    class as the default."""

    entropy_drop_fraction = 0.8


class DualSubnetContrastTrainer_CodeObjective(DualSubnetContrastTrainer):
    """What the authors' public code (xmindflow/SSL-contrastive, ``train_LA.py``) actually optimizes. There, the
    unlabeled cross-entropy is computed on ``softmax(...).clone().detach()`` and the prototype loss inside
    ``torch.no_grad()``, so neither L_u nor L_c sends any gradient to either subnet (verified by reading the code;
    see README). Each subnet's loss is its supervised loss (CE + Dice) plus ``0.5 *`` a "mistake" term on the
    *labeled* patches: the squared error to the label where exactly one subnet confidently (>= 0.6) predicts
    foreground (:class:`~nnunet_semisup.trainers.dual_subnet.labeled_disagreement_loss.LabeledDisagreementLoss`). Unlabeled patches
    only pass through the code's batch normalization; nnU-Net's instance normalization makes that a no-op, so this
    variant draws no unlabeled batch at all (and so does not need ``imagesUnlabeled``)."""

    uses_unlabeled_data = False
    uses_regularization = False
    uses_prototype_contrast = False
    mistake_weight: float = 0.5  # train_LA.py: (loss_seg + loss_seg_dice) + 0.5 * mistake
    mistake_threshold: float = 0.6  # train_LA.py: Thresh = 0.6
    semisup_log_keys = ("loss_sup_a", "loss_sup_b", "loss_mistake_a", "loss_mistake_b", "m_diff_fraction")

    def initialize(self) -> None:
        super().initialize()
        self.mistake_loss = LabeledDisagreementLoss(ignore_index=self.label_manager.ignore_label)

    def compute_loss(self, data, target, unlabeled):
        outputs = [self.network(data), self.subnet_b(data)]
        supervised = [self.loss(out, target) for out in outputs]
        if isinstance(outputs[0], (list, tuple)):
            full_resolution, labels = [out[0] for out in outputs], target[0]
        else:
            full_resolution, labels = outputs, target
        probs = [torch.softmax(o.float(), 1) for o in full_resolution]
        mask = confident_foreground_disagreement_mask(probs[0], probs[1], self.mistake_threshold)
        mistakes = [self.mistake_loss(p, labels, mask) for p in probs]
        total = sum(supervised) + self.mistake_weight * sum(mistakes)
        return total, {
            "loss_sup_a": supervised[0],
            "loss_sup_b": supervised[1],
            "loss_mistake_a": mistakes[0],
            "loss_mistake_b": mistakes[1],
            "m_diff_fraction": mask.float().mean(),
        }


class DualSubnetContrastTrainer_TwoSupervised(DualSubnetContrastTrainer_CodeObjective):
    """Control: subnets A and B trained side by side on the labeled patches with nnU-Net's loss only (no
    coupling term, no unlabeled data). Compared with ``_CodeObjective`` it isolates the effect of the public
    code's labeled "mistake" term; compared with ``LabeledOnlyTrainer`` the effect of training two subnets in one
    optimizer (none is expected: the subnets share no parameter and no loss term)."""

    mistake_weight = 0.0
