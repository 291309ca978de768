"""``UniMatchTrainer``: Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023, for nnU-Net's patches."""

from __future__ import annotations

import torch

from nnunet_semisup.segmentation_targets import split_outputs
from nnunet_semisup.trainers.base import unwrap_network
from nnunet_semisup.trainers.fixmatch.trainer import FixMatchTrainer
from nnunet_semisup.trainers.unimatch.feature_perturbation import SkipFeatureDropout


class UniMatchTrainer(FixMatchTrainer):
    """FixMatch with UniMatch's two perturbation streams: two independent strong views of every unlabeled patch
    (dual-stream image perturbation) and a feature-perturbed prediction of the weak view (channel dropout on the
    encoder features the decoder receives), all trained on the weak view's pseudo-labels.

    ``L = L_sup + lambda_u * (lambda * (L_s1 + L_s2) / 2 + mu * L_fp)``, ``lambda = mu = 0.5`` (Yang et al.,
    CVPR 2023, Sec. 3, final objective: ``L_s : L_s1 : L_s2 : L_fp = 1 : 0.25 : 0.25 : 0.5``). Each term is FixMatch's
    confidence-masked loss (:meth:`FixMatchTrainer.unlabeled_loss`, tau = 0.95); the paper's overall factor
    ``1/2`` on ``L_s + L_u`` is left out (it only halves the learning rate under SGD, and nnU-Net's learning rate
    is tuned for ``L_sup`` at weight 1).

    - Strong views: :class:`StrongIntensityAugmentation` and CutMix, drawn independently for each view (UniMatch
      gives each view its own colour jitter, blur and CutMix box). UniMatch pastes boxes from a second unlabeled
      batch; here they come from the previous patch of the same batch (no second unlabeled loader).
    - Feature perturbation: ``Dropout(p=0.5)`` of whole channels on every skip feature (bottleneck included), as
      UniMatch's U-Net does with ``Dropout2d(0.5)``, through a forward hook on ``network.encoder`` that
      perturbs only the weak-view rows of one batched forward of the student (labeled, strong 1, strong 2, weak):
      one (DDP-wrapped) forward, nnU-Net's network class and checkpoint unchanged.
    - Pseudo-labels: from FixMatchTrainer's teacher (EMA by default). UniMatch labels with the model itself,
      from the clean half of the same forward that gives the perturbed half; with an EMA teacher the clean
      weak prediction comes from the teacher instead (same count of forward passes).
    """

    strong_view_weight: float = 0.5  # lambda (Yang et al. 2023, Sec. 3): 0.25 per strong view
    feature_perturbation_weight: float = 0.5  # mu (Yang et al. 2023, Sec. 3)
    feature_dropout: float = 0.5  # UniMatch's Dropout2d(0.5) on the encoder features
    semisup_log_keys = (
        "loss_sup",
        "loss_unsup",
        "loss_s1",
        "loss_s2",
        "loss_fp",
        "unsup_weight",
        "conf_frac",
    )

    def initialize(self) -> None:
        super().initialize()  # the teacher is copied before the hook exists, so it never perturbs
        self.skip_dropout = None
        if self.feature_perturbation_weight > 0:
            self.skip_dropout = SkipFeatureDropout(self.feature_dropout)
            unwrap_network(self.network).encoder.register_forward_hook(self.skip_dropout)

    def compute_loss(self, data, target, unlabeled):
        n_labeled, n_unlabeled = data.shape[0], unlabeled.shape[0]
        labels, confidence = self.teacher_pseudo_labels(unlabeled)
        terms = self.confidence_terms(labels, confidence)
        view1 = self.strong_view(unlabeled, labels, confidence)
        view2 = self.strong_view(unlabeled, labels, confidence)
        parts = [data, view1[0], view2[0]]
        if self.skip_dropout is not None:
            parts.append(unlabeled)
            start = n_labeled + 2 * n_unlabeled
            self.skip_dropout.rows = (start, start + n_unlabeled)
        try:
            output = self.network(torch.cat(parts))
        finally:
            if self.skip_dropout is not None:
                self.skip_dropout.rows = None
        outputs = split_outputs(output, [p.shape[0] for p in parts])
        loss_sup = self.loss(outputs[0], target)
        loss_s1 = self.unlabeled_loss(outputs[1], view1[1], view1[2])
        loss_s2 = self.unlabeled_loss(outputs[2], view2[1], view2[2])
        loss_u = self.strong_view_weight * (loss_s1 + loss_s2) / 2
        loss_fp = torch.zeros((), device=data.device)
        if self.skip_dropout is not None:
            loss_fp = self.unlabeled_loss(outputs[3], labels, confidence)
            loss_u = loss_u + self.feature_perturbation_weight * loss_fp
        weight = self.unlabeled_weight()
        return loss_sup + weight * loss_u, {
            "loss_sup": loss_sup,
            "loss_unsup": loss_u,
            "loss_s1": loss_s1,
            "loss_s2": loss_s2,
            "loss_fp": loss_fp,
            "unsup_weight": weight,
            **terms,
        }


class UniMatchTrainer_NoFP(UniMatchTrainer):
    """Image-level perturbation only: the two strong views, each at weight 1/2 (UniMatch's dual-stream image
    perturbation on its own, Yang et al. 2023, Sec. 3), no feature-perturbed stream."""

    strong_view_weight = 1.0
    feature_perturbation_weight = 0.0
