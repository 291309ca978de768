"""One real MeanTeacherTrainer step, in process: the consistency term trains the student (softmax over the
class channel, with gradient), never the teacher, and the EMA update follows."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.e2e  # needs the planned tiny dataset


def test_consistency_gradient_reaches_the_student_and_not_the_teacher(mean_teacher_in_process):
    trainer = mean_teacher_in_process
    patch = list(trainer.configuration_manager.patch_size)
    images = torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(1))
    trainer.network.zero_grad(set_to_none=True)
    student_logits = trainer.network(images)[0]
    teacher_logits = trainer.teacher(images + 0.5)
    loss = trainer.consistency_loss(student_logits, teacher_logits)

    naive = ((torch.softmax(student_logits, 1) - torch.softmax(teacher_logits, 1)) ** 2).mean()
    torch.testing.assert_close(loss, naive)
    assert loss.requires_grad and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in trainer.network.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


def test_train_step_moves_the_teacher_by_the_ema_rule(mean_teacher_in_process, random_batch):
    trainer = mean_teacher_in_process
    batch = random_batch(trainer)
    trainer.global_step = 10  # EMA decay min(1 - 1/12, 0.99) = 11/12 for the step below
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    out = trainer.train_step(batch)
    assert trainer.global_step == 11 and out["cons_weight"] > 0
    student_after = trainer.network.state_dict()
    decay = 1 - 1 / 12
    for key, value in trainer.teacher.state_dict().items():
        if value.is_floating_point():
            expected = decay * teacher_before[key] + (1 - decay) * student_after[key]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
