"""FixMatch, UniMatch and BCP through the stock console scripts: ``nnUNetv2_train`` on the tiny dataset, then
``nnUNetv2_predict`` with the trainer's name; BCP also from ``-pretrained_weights``. FixMatch runs by default;
UniMatch, BCP and BCP's ``-pretrained_weights`` route are ``slow`` (``pytest -m slow``): their in-process tests,
exact resume and DDP cases run by default."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.e2e

SCHEDULE = "epochs=1,iters=2,val_iters=1"
# per-epoch curves each trainer adds to nnU-Net's log (besides the per-class confident fractions)
CURVES = {
    "FixMatchTrainer": ("loss_sup", "loss_unsup", "unsup_weight", "conf_frac"),
    "UniMatchTrainer": ("loss_sup", "loss_unsup", "loss_s1", "loss_s2", "loss_fp", "conf_frac"),
    "BCPTrainer": ("loss_in", "loss_out", "pretraining"),
}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize(
    "trainer",
    [
        "FixMatchTrainer",
        pytest.param("UniMatchTrainer", marks=pytest.mark.slow),
        pytest.param("BCPTrainer", marks=pytest.mark.slow),
    ],
)
def test_trains_and_predicts_with_stock_console_scripts(tiny_dataset, trainer):
    run = tiny_dataset
    run.train(trainer, "0", SCHEDULE)
    checkpoint = _load(run.output_folder(trainer, "0") / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 1
    state = checkpoint["semisup_state"]
    assert state["global_step"] == 2
    student, teacher = checkpoint["network_weights"], state["teacher"]
    assert teacher.keys() == student.keys()  # a stock nnU-Net network, and its EMA teacher beside it
    assert all(v.dtype == torch.float32 for v in teacher.values() if v.is_floating_point())
    for key in CURVES[trainer]:
        assert len(checkpoint["logging"][key]) == 1, key
    if trainer != "BCPTrainer":
        conf_keys = [k for k in checkpoint["logging"] if k.startswith("conf_") and k != "conf_frac"]
        assert len(conf_keys) == 3  # background and the two foreground labels
    run.predict(trainer, f"pred_{trainer}")


@pytest.mark.slow
def test_bcp_starts_from_pretrained_weights_through_the_console(tiny_dataset):
    run = tiny_dataset
    run.train("LabeledOnlyTrainer", "1", SCHEDULE)
    pretrained = run.output_folder("LabeledOnlyTrainer", "1") / "checkpoint_final.pth"
    proc = run.train("BCPTrainer", "1", SCHEDULE, "-pretrained_weights", str(pretrained))
    assert "no pre-training stage" in proc.stdout
    checkpoint = _load(run.output_folder("BCPTrainer", "1") / "checkpoint_final.pth")
    assert checkpoint["semisup_state"]["pretrained_from"] == str(pretrained)
    assert checkpoint["logging"]["pretraining"] == [0.0]
