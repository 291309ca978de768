"""Training-schedule helpers shared by every trainer: ramp-up weights, EMA updates, and the
``nnUNet_semisup_schedule`` environment variable that shortens any run without code changes."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

SCHEDULE_ENV_VAR = "nnUNet_semisup_schedule"
_SCHEDULE_KEYS = {
    "epochs": "num_epochs",
    "iters": "num_iterations_per_epoch",
    "val_iters": "num_val_iterations_per_epoch",
    "save_every": "save_every",
}


@dataclass(frozen=True)
class Schedule:
    """Overrides read from ``nnUNet_semisup_schedule``; ``None`` keeps the trainer's own value."""

    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None
    save_every: int | None = None


def parse_schedule(text: str | None) -> Schedule:
    """Parse ``"epochs=E,iters=I,val_iters=V,save_every=S"`` (any subset, any order; empty or None = no
    override). ``save_every``: write ``checkpoint_latest.pth`` every S epochs (nnU-Net's default is 50).

    Raises ``ValueError`` naming the bad token and the accepted keys.
    """
    if text is None or not text.strip():
        return Schedule()
    values: dict[str, int] = {}
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        key, sep, raw = token.partition("=")
        key = key.strip()
        if not sep or key not in _SCHEDULE_KEYS:
            raise ValueError(
                f"{SCHEDULE_ENV_VAR}: cannot parse {token!r}; expected comma-separated KEY=INT with KEY in "
                f"{sorted(_SCHEDULE_KEYS)}, e.g. 'epochs=10,iters=20,val_iters=2'"
            )
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{SCHEDULE_ENV_VAR}: {key} must be an integer, got {raw!r}") from None
        minimum = 0 if key == "val_iters" else 1
        if value < minimum:
            raise ValueError(f"{SCHEDULE_ENV_VAR}: {key} must be >= {minimum}, got {value}")
        values[_SCHEDULE_KEYS[key]] = value
    return Schedule(**values)


def apply_schedule(trainer: object, environ: Mapping[str, str] = os.environ) -> Schedule:
    """Apply the ``nnUNet_semisup_schedule`` overrides to a trainer's epoch/iteration attributes.

    Call at the end of the trainer's ``__init__`` so nnU-Net's debug.json records the values used.
    """
    schedule = parse_schedule(environ.get(SCHEDULE_ENV_VAR))
    for attribute in _SCHEDULE_KEYS.values():
        value = getattr(schedule, attribute)
        if value is not None:
            setattr(trainer, attribute, value)
    return schedule


def sigmoid_rampup(step: float, rampup_length: float) -> float:
    """Sigmoid ramp-up ``exp(-5 (1 - t/T)^2)`` from 0 to 1 (Laine & Aila 2017; Tarvainen & Valpola 2017).

    ``t`` is clipped to ``[0, T]``; ``T <= 0`` means no ramp-up (returns 1).
    """
    if rampup_length <= 0:
        return 1.0
    phase = 1.0 - min(max(step, 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * phase * phase))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """In-place ``teacher = decay * teacher + (1 - decay) * student`` for parameters; buffers are copied.

    Both modules must have the same structure (the teacher is a deep copy of the student).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher and student differ in structure ({len(teacher_params)} vs {len(student_params)} parameters)"
        )
    torch._foreach_mul_(teacher_params, decay)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)


def ema_decay_with_warmup(step: int, decay: float) -> float:
    """``min(1 - 1/(step + 1), decay)``: the teacher follows the student closely in the first steps
    (Tarvainen & Valpola's reference code; also UA-MT's), then settles at ``decay``."""
    return min(1.0 - 1.0 / (step + 1), decay)
