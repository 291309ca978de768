"""``MeanTeacherTrainer``: Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017."""

from __future__ import annotations

import torch

from nnunet_semisup.losses.consistency import ProbabilityMSELoss
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.ema_teacher import EMATeacherMixin


class MeanTeacherTrainer(EMATeacherMixin, SemiSupervisedTrainer):
    """Student trained with nnU-Net's loss on labeled patches plus a ramped-up consistency term
    ``MSE(softmax(student(x)), softmax(teacher(x + noise)))`` on labeled and unlabeled patches; the teacher is
    an exponential moving average of the student.

    Both views share nnU-Net's augmentation of the patch; the teacher's view differs by Gaussian noise
    (std 0.1, clipped to +-0.2) as in the 3D reference implementation (UA-MT, Yu et al., MICCAI 2019).

    ``network_weights`` in the checkpoint is the *student*: it is what nnU-Net validates during and after
    training, and what ``nnUNetv2_predict -tr MeanTeacherTrainer`` uses. The EMA teacher is saved under
    ``semisup_state['teacher']``; ``MeanTeacherTrainer_PredictTeacher`` validates with the teacher and saves it
    as ``network_weights`` instead.
    """

    ema_decay: float = 0.99  # EMA decay used by the common 3D implementations (UA-MT, SSL4MIS)
    consistency_weight: float = 0.1  # w_max of the ramp-up (UA-MT / SSL4MIS 3D mean teacher)
    teacher_noise_std: float = 0.1  # UA-MT: clamp(randn * 0.1, -0.2, 0.2)
    teacher_noise_clip: float = 0.2
    semisup_log_keys = ("loss_sup", "loss_cons", "cons_weight")

    def initialize(self) -> None:
        super().initialize()  # also the EMA teacher (EMATeacherMixin)
        self.consistency_loss = ProbabilityMSELoss("sigmoid" if self.label_manager.has_regions else "softmax")

    def compute_loss(self, data, target, unlabeled):
        images = self.joint_batch(data, unlabeled)
        loss_sup, student_logits = self.labeled_loss_and_logits(self.network(images), target, data.shape[0])
        with torch.no_grad():
            noise = torch.randn_like(images) * self.teacher_noise_std
            teacher_logits = self.teacher(
                images + noise.clamp(-self.teacher_noise_clip, self.teacher_noise_clip)
            )
        loss_cons = self.consistency_loss(student_logits, teacher_logits)
        return self.with_ramped_term(loss_sup, "cons", loss_cons, self.consistency_weight)


class MeanTeacherTrainer_PredictTeacher(MeanTeacherTrainer):
    """Mean teacher that validates and predicts with the EMA teacher, the variant Tarvainen & Valpola report.

    Every checkpoint (``checkpoint_latest``, ``checkpoint_best``, ``checkpoint_final``) holds the *teacher* as
    ``network_weights``, so ``nnUNetv2_predict`` with any ``-chk``, ``nnUNetv2_train --val`` / ``--val_best`` and
    ``nnUNetv2_find_best_configuration`` all use the teacher. The pseudo Dice nnU-Net computes after each epoch,
    which picks ``checkpoint_best``, is the teacher's, and so is the final validation. The student, the network
    that is trained, stays ``self.network`` and is saved in ``semisup_state['student']``; ``--c`` restores it
    and continues training it (and the teacher from ``network_weights``).
    """

    def checkpoint_network_weights(self) -> dict[str, torch.Tensor]:
        return self.teacher.state_dict()

    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        # the teacher is network_weights already: store it once
        del state["teacher"]
        state["student"] = unwrap_network(self.network).state_dict()
        return state

    def set_semisup_state(self, state: dict) -> None:
        if "student" not in state:  # a checkpoint whose network_weights are the student (MeanTeacherTrainer)
            super().set_semisup_state(state)
            return
        network = unwrap_network(self.network)
        if "teacher" not in state:  # nnU-Net's load_checkpoint has put network_weights, the teacher, there
            state = {**state, "teacher": {k: v.clone() for k, v in network.state_dict().items()}}
        super().set_semisup_state(state)
        network.load_state_dict(state["student"])

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's validation step on the teacher: the per-epoch pseudo Dice, and so checkpoint_best, are the
        # teacher's. The teacher runs with the student's deep supervision setting here (nnU-Net's validation
        # loss expects it) and without it in training (make_teacher).
        student, self.network = self.network, self.teacher
        decoder = getattr(self.teacher, "decoder", None)
        deep_supervision = getattr(decoder, "deep_supervision", None)
        if deep_supervision is not None:
            decoder.deep_supervision = self.enable_deep_supervision
        try:
            return super().validation_step(batch)
        finally:
            self.network = student
            if deep_supervision is not None:
                decoder.deep_supervision = deep_supervision

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        # the final validation (after training, --val, --val_best) predicts with the teacher: its weights go into
        # the network for the validation, the student's come back afterwards
        network = unwrap_network(self.network)
        student = {k: v.detach().clone() for k, v in network.state_dict().items()}
        network.load_state_dict(self.teacher.state_dict())
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            network.load_state_dict(student)
