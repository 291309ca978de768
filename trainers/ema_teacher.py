"""The EMA teacher shared by the teacher-student methods (mean teacher, FixMatch, UniMatch, BCP).

The teacher is an exponential moving average of the student's weights (Tarvainen & Valpola, "Mean teachers are
better role models", NeurIPS 2017, Sec. 2): ``theta'_t = alpha theta'_{t-1} + (1 - alpha) theta_t`` after every
optimizer step. Here it is made once, in ``initialize``, from the student as nnU-Net's DDP wrap left it (rank 0's
weights, broadcast), as a float32 copy that is never wrapped (DDP, torch.compile) and never gets gradients;
synced to the student at a fresh start (after ``-pretrained_weights``), and saved in ``semisup_state['teacher']``
so that ``--c`` resumes it exactly.
"""

from __future__ import annotations

import torch

from nnunet_semisup.networks import make_teacher
from nnunet_semisup.schedules import ema_decay_with_warmup, ema_update
from nnunet_semisup.trainers.base import unwrap_network


class EMATeacherMixin:
    """Adds ``self.teacher``, the EMA of ``self.network``, to a :class:`SemiSupervisedTrainer` subclass (list it
    first among the bases). ``self.teacher`` is None when :attr:`uses_ema_teacher` is False (e.g. FixMatch's
    self-teaching variant).

    Hooks: :meth:`teacher_ema_decay` (default: ``min(1 - 1/(t + 1), ema_decay)``, the warm-up of Tarvainen &
    Valpola's code) and :attr:`uses_ema_teacher`.
    """

    ema_decay: float = 0.99  # alpha; the common 3D implementations (UA-MT, SSL4MIS) use 0.99

    @property
    def uses_ema_teacher(self) -> bool:
        """Whether this trainer keeps an EMA teacher (True here; a subclass may decide from its attributes)."""
        return True

    def initialize(self) -> None:
        super().initialize()
        # made from the unwrapped student after nnU-Net's DDP wrap (DDP broadcast rank 0's weights), never wrapped
        self.teacher: torch.nn.Module | None = (
            make_teacher(unwrap_network(self.network)) if self.uses_ema_teacher else None
        )

    def on_fresh_start(self) -> None:
        super().on_fresh_start()
        # after -pretrained_weights were loaded into the student
        if self.teacher is not None:
            self.teacher.load_state_dict(unwrap_network(self.network).state_dict())

    def teacher_ema_decay(self) -> float:
        """The EMA decay alpha of the update after optimizer step ``self.global_step`` (in [0, 1])."""
        return ema_decay_with_warmup(self.global_step, self.ema_decay)

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.teacher is not None:
            ema_update(self.teacher, unwrap_network(self.network), self.teacher_ema_decay())

    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
