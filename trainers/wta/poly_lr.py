"""nnU-Net's polynomial learning-rate decay, applied to each parameter group relative to its own initial lr."""

from __future__ import annotations

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


class PerGroupPolyLRScheduler(PolyLRScheduler):
    """``lr_g(t) = initial_lr_g * (1 - t / max_steps) ** exponent`` for every parameter group ``g``.

    nnU-Net's ``PolyLRScheduler`` sets every group to ``initial_lr * (1 - t/T)^0.9``, which would lift a group
    with a deliberately low learning rate (e.g. fine-tuned pretrained blocks) to the network's lr on the first
    step. Here each group decays from the ``initial_lr`` stored in the group (``optimizer.add_param_group({...,
    "initial_lr": 8e-5})``); groups without one use the scheduler's ``initial_lr``. Same signature and
    ``step(current_step)`` semantics as nnU-Net's, so nnU-Net's training loop drives it unchanged.
    """

    def __init__(
        self, optimizer, initial_lr: float, max_steps: int, exponent: float = 0.9, current_step=None
    ):
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", initial_lr)
        super().__init__(optimizer, initial_lr, max_steps, exponent, current_step)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", self.initial_lr) * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
