"""``DTMLTrainer``: Zhang & Zhang, "Dual-Task Mutual Learning for Semi-Supervised Medical Image Segmentation",
PRCV 2021 (public code: github.com/YichiZhang98/DTML, binary V-Net)."""

from __future__ import annotations

import torch

from nnunet_semisup.networks import freeze_deep_supervision_seg_layers
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.dtml.dual_task_consistency_loss import DualTaskConsistencyLoss
from nnunet_semisup.trainers.dtml.sdm_mask_dice_loss import SDMMaskDiceLoss
from nnunet_semisup.trainers.dtml.sdm_network import SDMRegressionNetwork, num_sdm_channels
from nnunet_semisup.trainers.dtml.sdm_regression_loss import SDMRegressionLoss
from nnunet_semisup.trainers.dtml.signed_distance import signed_distance_map


class DTMLTrainer(SemiSupervisedTrainer):
    """Dual-task mutual learning: a segmentation network M_s (``self.network``, nnU-Net's planned network and
    loss) and a distance network M_d (``self.dist_network``: the same planned architecture, deep supervision
    off, one tanh output channel per foreground class or region) that regresses signed distance maps (SDM).

    Objective per iteration (Eq. 5 + Eq. 6 of the paper; both networks trained jointly by one SGD optimizer
    with one parameter group per network, which is the same as two nnU-Net SGD optimizers):

    - M_s: nnU-Net's Dice+CE with deep supervision on labeled patches, ``+ w(t) L_con``;
    - M_d: ``L_mask`` = soft Dice of ``sigmoid(-k * M_d(x))`` against the labels (default, the paper's best,
      Table 1), or ``L_dis`` = MSE against the normalized SDM of the labels, or both; ``+ w(t) L_con``;
    - ``L_con = mean((p_s - sigmoid(-k * M_d(x)))^2)`` over labeled and unlabeled patches, where ``p_s`` are
      M_s's foreground probabilities (softmax channels 1..C, or sigmoid per region). Neither side is detached,
      so L_con appears in both objectives and trains both networks (mutual learning). The authors' code
      back-propagates the two objectives one after the other without detaching; their gradients add up, so
      the loss minimized here is their sum, ``L_seg + L_Md + 2 w(t) L_con``, which gives both networks
      exactly the gradients of that code (each network gets ``2 w(t)`` times the gradient of L_con).

    ``network_weights`` in the checkpoint is M_s (what nnU-Net validates and ``nnUNetv2_predict -tr
    DTMLTrainer`` uses); M_d is saved under ``semisup_state['dist_network']`` (with ``sdm_k``), and the
    optimizer state holds both networks' momentum. ``nnunet-semisup predict-dtml`` predicts with M_d's mask
    or with the average of both networks.
    """

    # f_mask^-1(z) = sigmoid(-k z); k = 1500 in the authors' train_la_dtml.py (`torch.sigmoid(-1500 * ...)`)
    sdm_k: float = 1500.0
    # w_max of the ramp-up: `--consistency 1.0` in train_la_dtml.py (its `--consistency_weight 0.2` is unused)
    consistency_weight: float = 1.0
    # the authors ramp up over 40 "epochs" of 150 iterations = 6000 = max_iterations, i.e. the whole run
    rampup_fraction: float = 1.0
    # M_d's supervision (paper, Table 1): L_mask (default, best), L_dis, or both
    uses_sdm_loss_mask: bool = True
    uses_sdm_loss_dis: bool = False
    # weight of L_dis next to L_mask when both are on; the paper gives none, so the two are simply added
    sdm_dis_weight: float = 1.0
    semisup_log_keys = ("loss_sup", "loss_dist", "loss_cons", "cons_weight")

    def build_dist_network(self) -> torch.nn.Module:
        """M_d: the planned architecture with one output per foreground class or region, deep supervision
        off, tanh on top."""
        backbone = self.build_network_architecture(
            self.plans_manager,
            self.configuration_manager,
            self.num_input_channels,
            num_sdm_channels(self.label_manager),
            enable_deep_supervision=False,
        )
        # with deep supervision off the decoder only runs its last seg layer; freezing the others keeps DDP
        # from waiting for gradients that never come (and the optimizer from carrying dead parameters)
        freeze_deep_supervision_seg_layers(getattr(backbone, "decoder", None))
        return SDMRegressionNetwork(backbone).to(self.device)

    def configure_optimizers(self):
        # nnU-Net calls this inside initialize(), after building self.network and before its DDP wrap: M_d is
        # built here so nnU-Net's optimizer (and any variant's) gets a second parameter group with the same
        # settings, and PolyLR (which sets every group's lr) schedules both.
        self.dist_network = self.build_dist_network()
        if self._do_i_compile():
            self.dist_network = torch.compile(self.dist_network)
        optimizer, lr_scheduler = super().configure_optimizers()
        optimizer.add_param_group({"params": [p for p in self.dist_network.parameters() if p.requires_grad]})
        return optimizer, lr_scheduler

    def initialize(self) -> None:
        super().initialize()
        if self.is_ddp:  # its own wrap, as nnU-Net wraps self.network (broadcasts rank 0's weights)
            self.dist_network = self.wrap_ddp(self.dist_network)
        self.consistency_loss = DualTaskConsistencyLoss(self.sdm_k)
        self.sdm_mask_loss = SDMMaskDiceLoss(self.sdm_k, batch_dice=self.configuration_manager.batch_dice)
        self.sdm_regression_loss = SDMRegressionLoss()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.dist_network.train()

    def gradient_clipping_groups(self):
        # each network clipped to norm 12 on its own, as nnU-Net clips its one network
        return [self.network.parameters(), self.dist_network.parameters()]

    # ------------------------------------------------------------------ losses
    def foreground_targets(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-channel foreground masks of nnU-Net's full-resolution target, and where the label is known.

        Args:
            target: (B, 1, *patch) label map, or (B, R [+1 ignore], *patch) region masks (region-based).

        Returns:
            (B, C_fg, *patch) bool masks (C_fg foreground classes or regions), and a (B, 1, *patch) bool
            mask of annotated voxels (None without an ignore label).
        """
        label_manager = self.label_manager
        if label_manager.has_regions:
            if label_manager.has_ignore_label:  # nnU-Net appends the ignore mask as the last channel
                return target[:, :-1].bool(), ~target[:, -1:].bool()
            return target.bool(), None
        masks = torch.cat([target == label for label in label_manager.foreground_labels], 1)
        valid = target != label_manager.ignore_label if label_manager.has_ignore_label else None
        return masks, valid

    def foreground_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C_fg, *patch) float32 probabilities of M_s, with gradient (not nnU-Net's
        ``apply_inference_nonlin``, which runs without gradient on unbatched logits)."""
        if self.label_manager.has_regions:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), 1)[:, 1:]

    def compute_loss(self, data, target, unlabeled):
        n_labeled = data.shape[0]
        images = self.joint_batch(data, unlabeled)
        loss_sup, seg_logits = self.labeled_loss_and_logits(self.network(images), target, n_labeled)
        sdm_prediction = self.dist_network(images)

        masks, valid = self.foreground_targets(self.full_resolution_target(target))
        loss_dist = torch.zeros((), device=data.device)
        if self.uses_sdm_loss_mask:
            loss_dist = loss_dist + self.sdm_mask_loss(sdm_prediction[:n_labeled], masks, valid)
        if self.uses_sdm_loss_dis:
            # per 2D image on 2D patches (2d configurations: the in-plane spacing), per volume on 3D ones
            spacing = self.configuration_manager.spacing
            sdm_target = signed_distance_map(masks, spatial_dims=len(spacing), spacing=spacing)
            loss_dist = loss_dist + self.sdm_dis_weight * self.sdm_regression_loss(
                sdm_prediction[:n_labeled], sdm_target, valid
            )

        loss_cons = self.consistency_loss(self.foreground_probabilities(seg_logits), sdm_prediction)
        weight = self.rampup_weight(self.consistency_weight)
        objective_seg = loss_sup + weight * loss_cons  # Eq. 5, M_s
        objective_dist = loss_dist + weight * loss_cons  # Eq. 6, M_d
        return objective_seg + objective_dist, {
            "loss_sup": loss_sup,
            "loss_dist": loss_dist,
            "loss_cons": loss_cons,
            "cons_weight": weight,
        }

    # ------------------------------------------------------------------ checkpoints
    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        state["dist_network"] = unwrap_network(self.dist_network).state_dict()
        state["sdm_k"] = self.sdm_k  # for predicting with M_d's mask without the trainer class
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        unwrap_network(self.dist_network).load_state_dict(state["dist_network"])


class DTMLTrainer_Ldis(DTMLTrainer):
    """M_d supervised by ``L_dis`` alone: MSE to the normalized SDM of the labels (paper, Table 1)."""

    uses_sdm_loss_mask = False
    uses_sdm_loss_dis = True


class DTMLTrainer_LdisLmask(DTMLTrainer):
    """M_d supervised by ``L_dis + L_mask`` (paper, Table 1)."""

    uses_sdm_loss_mask = True
    uses_sdm_loss_dis = True


class DTMLTrainer_LabeledOnly(DTMLTrainer):
    """The dual-task ablation of the paper's Table 2: both networks and the mutual consistency, but on labeled
    patches only (no unlabeled images needed)."""

    uses_unlabeled_data = False
