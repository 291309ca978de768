"""S-TL, the transfer step of Sital et al. ("3D medical image segmentation with labeled and unlabeled data using
autoencoders at the example of liver segmentation in CT images"): fine-tune a segmentation network whose encoder
comes from :class:`~nnunet_semisup.trainers.wta.pretrain.WTAPretrainTrainer`, loaded with stock ``-pretrained_weights``."""

from __future__ import annotations

import os

import torch

from nnunet_semisup.errors import TrainingInputError
from nnunet_semisup.nnunet_commands import pretrained_weights_argument
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.wta.autoencoder import encoder_conv_parameters, weight_norm_phi
from nnunet_semisup.trainers.wta.poly_lr import PerGroupPolyLRScheduler

# what must match between the pretraining plans and these plans for the encoder to mean the same thing
_PLANS_FIELDS_THAT_MUST_MATCH = ("architecture", "spacing", "normalization_schemes", "patch_size")


class WTAFinetuneTrainer(SemiSupervisedTrainer):
    """Segmentation training on top of a WTA-pretrained encoder (labeled data only).

    Run after pretraining, with nnU-Net's own flag::

        nnUNetv2_train D 3d_fullres 0 -tr WTAPretrainTrainer
        nnUNetv2_train D 3d_fullres 0 -tr WTAFinetuneTrainer \\
            -pretrained_weights $nnUNet_results/.../WTAPretrainTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth

    nnU-Net loads the weights after ``initialize()``; at the start of the run (``on_fresh_start``, not on
    ``--c``) this trainer then

    - scales the encoder's convolution weights and biases by ``phi`` (``phi = None``: automatic, the ratio of
      the Frobenius norm of a fresh nnU-Net initialization of those weights to that of the pretrained ones, one
      scalar for the whole encoder; normalization parameters are not scaled);
    - keeps the first ``n_stages - num_finetuned_stages`` encoder stages frozen (no gradient) and fine-tunes the
      last ``num_finetuned_stages`` with ``finetune_lr``; the decoder trains with nnU-Net's ``initial_lr``.
      Both decay with nnU-Net's poly schedule, each from its own initial lr (:class:`PerGroupPolyLRScheduler`).
    - frozen stages are unfrozen (trained with ``finetune_lr``) from epoch ``unfreeze_epoch`` on (None: never,
      as in the paper).

    Without ``-pretrained_weights`` (encoder still at its initialization) the run stops with the command to
    use; a pretrained checkpoint made with other plans stops with an error naming the differing fields.
    """

    uses_unlabeled_data = False
    # Sital et al.: the transferred encoder blocks are fine-tuned with a learning rate of 8e-5
    finetune_lr: float = 8e-5
    # the paper's schemes: 0 = freeze all, 1 = fine-tune the last block, 2 = the last two (default), None = all
    num_finetuned_stages: int | None = 2
    # epoch from which the frozen stages train too (with finetune_lr); None = never (the paper)
    unfreeze_epoch: int | None = None
    # scale of the transferred encoder weights; None = automatic from weight norms (see class docstring)
    phi: float | None = None

    def on_init(self) -> None:
        super().on_init()
        self.phi_applied: float | None = None
        self.pretrained_from: str | None = None
        self._fresh_encoder_weights: dict[str, torch.Tensor] = {}
        self._unfrozen = False

    # ------------------------------------------------------------------ parameter groups
    def encoder_stage_split(self) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
        """(frozen modules, fine-tuned modules) of the encoder; a stem belongs to stage 0."""
        encoder = unwrap_network(self.network).encoder
        stages = list(encoder.stages)
        n_ft = len(stages) if self.num_finetuned_stages is None else int(self.num_finetuned_stages)
        if not 0 <= n_ft <= len(stages):
            raise ValueError(
                f"{self.__class__.__name__}.num_finetuned_stages = {self.num_finetuned_stages}, but the encoder "
                f"has {len(stages)} stages: use 0 to {len(stages)} or None (all)"
            )
        frozen, finetuned = stages[: len(stages) - n_ft], stages[len(stages) - n_ft :]
        stem = getattr(encoder, "stem", None)
        if stem is not None:
            (frozen if frozen else finetuned).insert(0, stem)
        return frozen, finetuned

    def configure_optimizers(self):
        network = unwrap_network(self.network)
        frozen, finetuned = self.encoder_stage_split()
        frozen_params = [p for m in frozen for p in m.parameters()]
        finetuned_params = [p for m in finetuned for p in m.parameters()]
        encoder_ids = {id(p) for p in network.encoder.parameters()}
        decoder_params = [p for p in network.parameters() if id(p) not in encoder_ids]
        for p in frozen_params:
            p.requires_grad_(False)
        groups = [
            {"params": decoder_params, "initial_lr": self.initial_lr, "name": "decoder"},
            {"params": finetuned_params, "lr": self.finetune_lr, "initial_lr": self.finetune_lr,
             "name": "encoder_finetuned"},
            {"params": frozen_params, "lr": self.finetune_lr, "initial_lr": self.finetune_lr,
             "name": "encoder_frozen"},
        ]  # fmt: skip
        optimizer = torch.optim.SGD(
            [g for g in groups if g["params"]],
            self.initial_lr,
            weight_decay=self.weight_decay,
            momentum=0.99,
            nesterov=True,
        )
        return optimizer, PerGroupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def initialize(self) -> None:
        if self.is_ddp and self.unfreeze_epoch is not None:
            raise NotImplementedError(
                "unfreezing encoder stages during training changes the parameters DDP synchronizes: "
                "unfreeze_epoch is not supported with -num_gpus > 1"
            )
        super().initialize()
        # nnU-Net's initialization of the encoder convolutions: the reference for phi and for noticing that no
        # -pretrained_weights were loaded
        self._fresh_encoder_weights = {
            name: p.detach().clone()
            for name, p in encoder_conv_parameters(unwrap_network(self.network).encoder).items()
        }

    # ------------------------------------------------------------------ transfer
    def on_fresh_start(self) -> None:
        super().on_fresh_start()
        encoder = unwrap_network(self.network).encoder
        current = encoder_conv_parameters(encoder)
        if all(torch.equal(current[k].detach(), v) for k, v in self._fresh_encoder_weights.items()):
            raise TrainingInputError(
                f"{self.__class__.__name__} fine-tunes a pretrained encoder, but the encoder still has its "
                f"initial weights: no -pretrained_weights were given. Pretrain first, then fine-tune with the "
                f"pretraining's final checkpoint:\n"
                f"  nnUNetv2_train {self.plans_manager.dataset_name} {self.configuration_name} {self.fold} "
                f"-tr WTAPretrainTrainer -p {self.plans_manager.plans_name}\n"
                f"  nnUNetv2_train {self.plans_manager.dataset_name} {self.configuration_name} {self.fold} "
                f"-tr {self.__class__.__name__} -p {self.plans_manager.plans_name} -pretrained_weights "
                f"$nnUNet_results/{self.plans_manager.dataset_name}/WTAPretrainTrainer__"
                f"{self.plans_manager.plans_name}__{self.configuration_name}/fold_{self.fold}/checkpoint_final.pth"
            )
        self.pretrained_from = pretrained_weights_argument()
        if self.pretrained_from is not None:
            self.check_pretrained_plans(self.pretrained_from)
        weights = {k: v for k, v in current.items() if k.endswith(".weight")}
        fresh = {k: self._fresh_encoder_weights[k] for k in weights}
        phi = float(self.phi) if self.phi is not None else weight_norm_phi(fresh, weights)
        with torch.no_grad():
            for p in current.values():
                p.mul_(phi)
        self.phi_applied = phi
        self._fresh_encoder_weights = {}
        self.print_to_log_file(
            f"pretrained encoder ({self.pretrained_from or 'from -pretrained_weights'}) scaled by phi = {phi:.4g} "
            f"({'automatic: fresh-init norm / pretrained norm' if self.phi is None else 'fixed'})"
        )

    def check_pretrained_plans(self, checkpoint_path: str) -> None:
        """Raise if the pretraining used plans whose encoder means something else (architecture, spacing,
        normalization, patch size), naming the differing fields."""
        if not os.path.isfile(checkpoint_path):
            return
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
        init_args = checkpoint.get("init_args") or {}
        plans, configuration = init_args.get("plans"), init_args.get("configuration")
        if not isinstance(plans, dict) or configuration is None:
            return  # not an nnU-Net trainer checkpoint: nnU-Net's key/shape check is all we can do
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        theirs = PlansManager(plans).get_configuration(configuration).configuration
        ours = self.configuration_manager.configuration
        differing = [f for f in _PLANS_FIELDS_THAT_MUST_MATCH if theirs.get(f) != ours.get(f)]
        if differing:
            raise TrainingInputError(
                f"-pretrained_weights {checkpoint_path} was trained with plans {plans.get('plans_name')!r}, "
                f"configuration {configuration!r}, which differ from this run's ({self.plans_manager.plans_name!r}, "
                f"{self.configuration_name!r}) in {', '.join(differing)}. Pretrain with the same -p and "
                f"configuration as the fine-tuning (nnUNetv2_train ... -tr WTAPretrainTrainer -p "
                f"{self.plans_manager.plans_name})."
            )

    # ------------------------------------------------------------------ schedule
    def on_train_epoch_start(self) -> None:
        if (
            self.unfreeze_epoch is not None
            and self.current_epoch >= self.unfreeze_epoch
            and not self._unfrozen
        ):
            frozen, _ = self.encoder_stage_split()
            for module in frozen:
                module.requires_grad_(True)
            self._unfrozen = True
            self.print_to_log_file(
                f"epoch {self.current_epoch}: {len(frozen)} frozen encoder stage(s) unfrozen (lr {self.finetune_lr})"
            )
        super().on_train_epoch_start()

    # ------------------------------------------------------------------ checkpoints
    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        state["phi"] = self.phi_applied
        state["pretrained_from"] = self.pretrained_from
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        self.phi_applied = state.get("phi")
        self.pretrained_from = state.get("pretrained_from")


class WTAFinetuneTrainer_FreezeAll(WTAFinetuneTrainer):
    """Sital et al.'s scheme with the whole transferred encoder frozen; only the decoder trains."""

    num_finetuned_stages = 0


class WTAFinetuneTrainer_FinetuneLast(WTAFinetuneTrainer):
    """Only the last encoder stage (the bottleneck) is fine-tuned (low lr); the others stay frozen."""

    num_finetuned_stages = 1


class WTAFinetuneTrainer_FinetuneAll(WTAFinetuneTrainer):
    """Every encoder stage is fine-tuned with the low lr; nothing frozen."""

    num_finetuned_stages = None
