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
    ``semisup_state['teacher']``; ``MeanTeacherTrainer_PredictTeacher`` puts the teacher into the final
    checkpoint instead.
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
    """Mean teacher whose final checkpoint (and final validation) uses the EMA teacher's weights, the
    variant Tarvainen & Valpola report. The student is kept in ``semisup_state['student']``."""

    def on_train_end(self) -> None:
        self._student_weights = {k: v.clone() for k, v in unwrap_network(self.network).state_dict().items()}
        unwrap_network(self.network).load_state_dict(self.teacher.state_dict())
        super().on_train_end()

    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        if getattr(self, "_student_weights", None) is not None:
            state["student"] = self._student_weights
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        if "student" in state:  # resuming from the final checkpoint: continue training the student
            unwrap_network(self.network).load_state_dict(state["student"])
