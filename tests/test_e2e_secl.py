"""End to end through the stock console scripts: SECLTrainer (AACS) trains and predicts, SECLTrainer_RACS
trains and resumes with ``--c`` restoring teacher and projectors exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import load_checkpoint_file

pytestmark = pytest.mark.e2e


def _check_secl_state(ckpt, steps):
    state = ckpt["semisup_state"]
    assert state["global_step"] == steps
    student, teacher, projector = ckpt["network_weights"], state["teacher"], state["projector"]
    encoder_keys = {k.removeprefix("encoder.") for k in student if k.startswith("encoder.")}
    assert {k.removeprefix("encoder.") for k in teacher if k.startswith("encoder.")} == encoder_keys
    assert {k.removeprefix("projector.") for k in teacher if k.startswith("projector.")} == set(projector)
    assert not any(k.startswith("decoder.") for k in teacher)  # forward through encoder + projector only
    # after the EMA steps the teacher is a blend of past students: not the current student
    assert any(not torch.equal(teacher[f"encoder.{k}"], student[f"encoder.{k}"]) for k in encoder_keys)
    assert any(not torch.equal(teacher[f"projector.{k}"], v) for k, v in projector.items())


def test_secl_trains_and_predicts_with_stock_console_scripts(tiny_dataset):
    run = tiny_dataset
    run.train("SECLTrainer", "0", "epochs=1,iters=2,val_iters=1")
    out = run.output_folder("SECLTrainer", "0")
    ckpt = load_checkpoint_file(out / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "SECLTrainer"
    _check_secl_state(ckpt, 2)
    for key in ("loss_sup", "loss_contrast", "contrast_weight", "cubes_anchored"):
        assert len(ckpt["logging"][key]) == 1
    assert ckpt["logging"]["loss_contrast"][0] > 0 and 0 <= ckpt["logging"]["cubes_anchored"][0] <= 1
    log_text = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
    assert "SECL AACS: cubes" in log_text

    run.predict("SECLTrainer", "pred_secl")  # checks one segmentation per test case


def test_secl_racs_resume_restores_teacher_and_projectors_exactly(tiny_dataset, monkeypatch):
    run = tiny_dataset
    run.train("SECLTrainer_RACS", "2", "epochs=1,iters=2,val_iters=1")
    out = run.output_folder("SECLTrainer_RACS", "2")
    first = load_checkpoint_file(out / "checkpoint_final.pth")
    _check_secl_state(first, 2)
    assert "SECL RACS: region grid" in "".join(p.read_text() for p in out.glob("training_log_*.txt"))

    # a fresh trainer built the way nnUNetv2_train builds it restores the extra state bit for bit
    trainer = run.build_trainer("SECLTrainer_RACS", 2, monkeypatch, "epochs=2,iters=2,val_iters=1")
    trainer.load_checkpoint(str(out / "checkpoint_final.pth"))
    assert trainer.global_step == 2 and trainer._semisup_state_restored
    for name, module in (("teacher", trainer.teacher), ("projector", trainer.projector)):
        restored = module.state_dict()
        assert restored.keys() == first["semisup_state"][name].keys()
        for key, value in first["semisup_state"][name].items():
            assert torch.equal(restored[key], value), (name, key)
    # the projector is in the optimizer (its momentum was restored with it)
    projector_params = {id(p) for p in trainer.projector.parameters()}
    assert projector_params <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}

    # one objective evaluation on random patches per sampling strategy: the teacher gets no gradient
    patch = trainer.configuration_manager.patch_size
    data, unlabeled = torch.randn(2, 1, *patch), torch.randn(2, 1, *patch)
    target = [
        torch.zeros(2, 1, *[round(p * s) for p, s in zip(patch, scale)])
        for scale in trainer._get_deep_supervision_scales()
    ]
    for sampling in ("region", "anatomical"):
        trainer.sampling = sampling
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, terms = trainer.compute_loss(data, target, unlabeled)
        loss.backward()
        assert terms["loss_contrast"] > 0
        assert all(p.grad is None for p in trainer.teacher.parameters())
        # the projector only sees the contrastive path: its gradient comes through the student's encoder
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.projector.parameters())

    # continue through the console script
    run.train("SECLTrainer_RACS", "2", "epochs=2,iters=2,val_iters=1", "--c")
    second = load_checkpoint_file(out / "checkpoint_final.pth")
    assert second["current_epoch"] == 2
    _check_secl_state(second, 4)
    assert second["logging"]["loss_contrast"][0] == first["logging"]["loss_contrast"][0]
    assert len(second["logging"]["loss_contrast"]) == 2
