"""Non-finite losses: the step is skipped (weights, teacher and ramp-up clock untouched) and the run aborts
after ``max_consecutive_nonfinite_steps`` in a row. NaNs are injected into a real MeanTeacherTrainer."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.e2e  # needs the planned tiny dataset


@pytest.fixture
def trainer(tiny_dataset, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, tiny_dataset.env[key])
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args("501", "3d_fullres", 3, "MeanTeacherTrainer", device=torch.device("cpu"))
    trainer.initialize()
    trainer.on_fresh_start()
    patch = list(trainer.configuration_manager.patch_size)
    unlabeled = torch.randn(2, 1, *patch)
    trainer.next_unlabeled_batch = lambda: unlabeled
    return trainer


def _batch(trainer) -> dict:
    patch = list(trainer.configuration_manager.patch_size)
    generator = torch.Generator().manual_seed(0)
    targets = [
        torch.randint(
            0, 3, (2, 1, *[round(p * s) for p, s in zip(patch, scale)]), generator=generator
        ).float()
        for scale in trainer._get_deep_supervision_scales()
    ]
    return {"data": torch.randn(2, 1, *patch, generator=generator), "target": targets}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_steps_are_skipped_then_the_run_aborts_before_weights_change(trainer, monkeypatch):
    real_compute_loss = trainer.compute_loss
    poisoned = {"on": True}

    def compute_loss(data, target, unlabeled):
        loss, terms = real_compute_loss(data, target, unlabeled)
        if poisoned["on"]:
            return loss * float("nan"), {**terms, "loss_cons": float("nan")}
        return loss, terms

    monkeypatch.setattr(trainer, "compute_loss", compute_loss)
    trainer.max_consecutive_nonfinite_steps = 3
    batch = _batch(trainer)
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
