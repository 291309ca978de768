"""S-MTL of Sital et al. ("3D medical image segmentation with labeled and unlabeled data using autoencoders at the
example of liver segmentation in CT images"): segmentation and winner-take-all reconstruction share one encoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_semisup.trainers.base import unwrap_network
from nnunet_semisup.trainers.wta.autoencoder import WTAAutoencoderHeads, encoder_level_features
from nnunet_semisup.trainers.wta.pretrain import WTATrainerBase


class WTAMultiTaskStep(nn.Module):
    """The whole segmentation network and the WTA decoders of one multi-task step as one module (one DDP wrap
    covers every trained parameter). Holds references to the network and the heads, no copies.

    ``forward(data (B, C, *patch), unlabeled (B_u, C, *patch) or None)`` -> (segmentation output as the network
    returns it, mean WTA loss over the levels of labeled + unlabeled images, [loss per level]).
    """

    def __init__(self, network: nn.Module, heads: WTAAutoencoderHeads):
        super().__init__()
        self.network = network
        self.heads = heads

    def forward(self, data: torch.Tensor, unlabeled: torch.Tensor | None = None):
        levels = self.heads.num_levels
        skips = self.network.encoder(data)
        segmentation = self.network.decoder(skips)
        inputs = [data, *skips[: levels - 1]]
        outputs = list(skips[:levels])
        if unlabeled is not None:
            u_inputs, u_outputs = encoder_level_features(self.network.encoder, unlabeled, levels, False)
            inputs = [torch.cat([a, b]) for a, b in zip(inputs, u_inputs)]
            outputs = [torch.cat([a, b]) for a, b in zip(outputs, u_outputs)]
        loss_wta, per_level = self.heads(inputs, outputs)
        return segmentation, loss_wta, per_level


class WTAMultiTaskTrainer(WTATrainerBase):
    """One network (nnU-Net's planned U-Net); its encoder also feeds WTA autoencoder decoders on the first
    ``wta_num_levels`` encoder levels (default 2, the paper's best, Table 5):

    ``L = L_seg(labeled) + gamma * mean_levels L_WTA(labeled + unlabeled)``

    with nnU-Net's Dice+CE (deep supervision) as ``L_seg`` and the Huber WTA reconstruction loss (see
    :mod:`nnunet_semisup.trainers.wta.autoencoder`; level 0 reconstructs the image, level 1 the features entering stage 1). The
    encoder is shared: the labeled batch runs through the whole network once and its stage outputs feed the WTA
    decoders; the unlabeled batch only runs through the first levels. Level inputs are not detached here (the
    reconstruction gradient of level 1 reaches stage 0 as well: one jointly trained encoder); targets are.

    gamma (the paper: "so that both terms have the same order of magnitude"): ``gamma = None`` calibrates it as
    ``mean |L_seg| / mean L_WTA`` over the first ``gamma_calibration_iterations`` iterations (the running ratio
    is used during them), then keeps it fixed; it is saved in ``semisup_state`` and restored by ``--c``. A
    float fixes it.
    """

    wta_num_levels = 2  # Sital et al., Table 5: WTA on the first two resolution levels was best
    gamma: float | None = None
    gamma_calibration_iterations: int = 25
    semisup_log_keys = ("loss_sup", "loss_wta", "wta_weight")

    def on_init(self) -> None:
        super().on_init()
        if self.gamma_calibration_iterations < 1:
            raise ValueError(
                f"gamma_calibration_iterations must be >= 1, got {self.gamma_calibration_iterations}"
            )
        self.gamma_value: float | None = None if self.gamma is None else float(self.gamma)
        self.gamma_seg_sum = 0.0
        self.gamma_wta_sum = 0.0
        self.gamma_count = 0

    def current_gamma(self, loss_sup: float, loss_wta: float) -> float:
        """gamma for this iteration; while calibrating, first adds this iteration's (detached) losses to the
        running sums, and fixes gamma after ``gamma_calibration_iterations`` of them."""
        if self.gamma_value is not None:
            return self.gamma_value
        if not (math.isfinite(loss_sup) and math.isfinite(loss_wta)):  # a skipped step: keep the sums clean
            return self.gamma_seg_sum / max(self.gamma_wta_sum, 1e-8) if self.gamma_count else 1.0
        self.gamma_seg_sum += abs(loss_sup)
        self.gamma_wta_sum += loss_wta
        self.gamma_count += 1
        ratio = self.gamma_seg_sum / max(self.gamma_wta_sum, 1e-8)
        if self.gamma_count >= self.gamma_calibration_iterations:
            self.gamma_value = ratio
            self.print_to_log_file(
                f"gamma fixed at {ratio:.4g} (mean |L_seg| / mean L_WTA over {self.gamma_count} iterations)"
            )
        return ratio

    def build_wta_step(self) -> nn.Module:
        return WTAMultiTaskStep(unwrap_network(self.network), self.wta_heads)

    def wta_step_has_unused_parameters(self, n_stages: int) -> bool:
        return False  # the whole network and every decoder get gradients

    def compute_loss(self, data, target, unlabeled):
        segmentation, loss_wta, per_level = self.wta_step(data, unlabeled)
        loss_sup = self.loss(segmentation, target)
        gamma = self.current_gamma(float(loss_sup.detach()), float(loss_wta.detach()))
        terms = {"loss_sup": loss_sup, "loss_wta": loss_wta, "wta_weight": gamma}
        terms.update(self.level_terms(per_level))
        return loss_sup + gamma * loss_wta, terms

    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        state["gamma"] = {
            "value": self.gamma_value,
            "seg_sum": self.gamma_seg_sum,
            "wta_sum": self.gamma_wta_sum,
            "count": self.gamma_count,
        }
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        gamma = state["gamma"]
        self.gamma_value = gamma["value"] if self.gamma is None else float(self.gamma)
        self.gamma_seg_sum, self.gamma_wta_sum = float(gamma["seg_sum"]), float(gamma["wta_sum"])
        self.gamma_count = int(gamma["count"])


class WTAMultiTaskTrainer_OneLevel(WTAMultiTaskTrainer):
    """WTA on the first (full-resolution) encoder level only (Sital et al., Table 5)."""

    wta_num_levels = 1
