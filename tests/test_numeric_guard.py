"""Non-finite losses: the step is skipped (weights, teacher and ramp-up clock untouched) and the run aborts
after ``max_consecutive_nonfinite_steps`` in a row. NaNs are injected into a real MeanTeacherTrainer."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.e2e  # needs the planned tiny dataset


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_steps_are_skipped_then_the_run_aborts_before_weights_change(
    mean_teacher_in_process, random_batch, monkeypatch
):
    trainer = mean_teacher_in_process
    real_compute_loss = trainer.compute_loss
    poisoned = {"on": True}

    def compute_loss(data, target, unlabeled):
        loss, terms = real_compute_loss(data, target, unlabeled)
        if poisoned["on"]:
            return loss * float("nan"), {**terms, "loss_cons": float("nan")}
        return loss, terms

    monkeypatch.setattr(trainer, "compute_loss", compute_loss)
    trainer.max_consecutive_nonfinite_steps = 3
    batch = random_batch(trainer)
    student, teacher = _snapshot(trainer.network), _snapshot(trainer.teacher)

    outputs = [trainer.train_step(batch), trainer.train_step(batch)]
    assert all(o["skipped"] for o in outputs)
    assert _same(student, _snapshot(trainer.network)) and _same(teacher, _snapshot(trainer.teacher))
    assert trainer.global_step == 0 and trainer.nonfinite_steps == 2

    poisoned["on"] = False  # a finite step resets the streak and trains
    outputs.append(trainer.train_step(batch))
    assert "skipped" not in outputs[-1]
    assert trainer.global_step == 1 and trainer.consecutive_nonfinite_steps == 0
    assert not _same(student, _snapshot(trainer.network))
    trained = _snapshot(trainer.network)

    poisoned["on"] = True
    outputs += [trainer.train_step(batch), trainer.train_step(batch)]
    with pytest.raises(RuntimeError, match="3 consecutive training steps had a non-finite loss"):
        trainer.train_step(batch)
    assert _same(trained, _snapshot(trainer.network))
    assert trainer.nonfinite_steps == 5

    # the epoch's logged losses come from the finite step only
    trainer.on_train_epoch_end(outputs)
    logged = trainer.logger.get_value("train_losses", step=-1)
    assert logged == pytest.approx(float(outputs[2]["loss"]))
    assert trainer.logger.get_value("loss_cons", step=-1) == pytest.approx(outputs[2]["loss_cons"])
    assert trainer.get_semisup_state()["nonfinite_steps"] == 5
