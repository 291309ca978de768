"""End to end through the stock console scripts: plan, train (MeanTeacherTrainer, LabeledOnlyTrainer),
predict, evaluate, and resume with ``--c``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import load_checkpoint_file

pytestmark = pytest.mark.e2e


def test_mean_teacher_trains_predicts_and_evaluates_with_stock_console_scripts(tiny_dataset):
    run = tiny_dataset
    # other tests of the session may have preprocessed the unlabeled cases already: start without them
    unlabeled = run.preprocessed / "Dataset501_Tiny" / "nnUNetPlans_3d_fullres_unlabeled"
    shutil.rmtree(unlabeled, ignore_errors=True)
    proc = run.train("MeanTeacherTrainer", "0", "epochs=1,iters=2,val_iters=1")
    out = run.output_folder("MeanTeacherTrainer", "0")

    # unlabeled cases were preprocessed on demand, with nnU-Net's own preprocessing and a manifest
    assert "preprocessing them" in proc.stdout
    assert "Unlabeled training cases: 3" in proc.stdout
    assert sorted(p.name for p in unlabeled.glob("*.pkl")) == sorted(
        p.name.replace("_0000.nii.gz", ".pkl")
        for p in (run.raw / "Dataset501_Tiny" / "imagesUnlabeled").iterdir()
    )
    assert (unlabeled / "semisup_unlabeled_manifest.json").is_file()

    ckpt = load_checkpoint_file(out / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "MeanTeacherTrainer"
    assert ckpt["current_epoch"] == 1
    state = ckpt["semisup_state"]
    assert state["global_step"] == 2
    teacher, student = state["teacher"], ckpt["network_weights"]
    assert teacher.keys() == student.keys()
    # after two EMA steps the teacher is a blend: equal to neither the student nor anything untrained
    assert any(not torch.equal(teacher[k], student[k]) for k in student if student[k].is_floating_point())

    # the schedule variable reached nnU-Net (debug.json records the trainer's attributes)
    debug = json.loads((out.parent / "fold_0" / "debug.json").read_text())
    assert int(debug["num_epochs"]) == 1 and int(debug["num_iterations_per_epoch"]) == 2

    # extra curves: in the checkpoint's log, the text log and below nnU-Net's panels in progress.png
    for key in ("loss_sup", "loss_cons", "cons_weight"):
        assert len(ckpt["logging"][key]) == 1
    assert ckpt["logging"]["cons_weight"][0] > 0
    log_text = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
    assert "semi-supervised terms: loss_sup" in log_text
    from PIL import Image

    with Image.open(out / "progress.png") as im:
        assert im.height > 5400  # nnU-Net's three panels are 5400 px high at its default size

    # stock prediction with our trainer name, then our evaluation
    pred = run.predict("MeanTeacherTrainer", "pred_mt")
    run(
        "nnunet-semisup",
        "evaluate",
        "--ref",
        str(run.raw / "Dataset501_Tiny" / "labelsTs"),
        "--pred",
        str(pred),
        "--labels-json",
        str(run.raw / "Dataset501_Tiny" / "dataset.json"),
    )
    summary = json.loads((pred / "semisup_summary.json").read_text())
    assert len(summary["per_case"]) == 2
    dataset_json = json.loads((run.raw / "Dataset501_Tiny" / "dataset.json").read_text())
    assert set(summary["mean"]) == {k for k, v in dataset_json["labels"].items() if v != 0}
    assert all(0.0 <= m["dice"] <= 1.0 for m in summary["mean"].values())


def test_labeled_only_trainer_is_nnunet_on_the_same_schedule(tiny_dataset):
    run = tiny_dataset
    run.train("LabeledOnlyTrainer", "0", "epochs=1,iters=2,val_iters=1")
    ckpt = load_checkpoint_file(run.output_folder("LabeledOnlyTrainer", "0") / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "LabeledOnlyTrainer"
    assert ckpt["current_epoch"] == 1
    assert "semisup_state" not in ckpt
    debug = json.loads((run.output_folder("LabeledOnlyTrainer", "0") / "debug.json").read_text())
    assert int(debug["num_iterations_per_epoch"]) == 2


def test_resume_restores_teacher_and_rampup_clock_exactly(tiny_dataset, monkeypatch):
    run = tiny_dataset
    run.train("MeanTeacherTrainer", "1", "epochs=1,iters=2,val_iters=1")
    out = run.output_folder("MeanTeacherTrainer", "1")
    first = load_checkpoint_file(out / "checkpoint_final.pth")

    # a fresh trainer built the way nnUNetv2_train builds it restores the extra state bit for bit
    trainer = run.build_trainer("MeanTeacherTrainer", 1, monkeypatch, "epochs=2,iters=2,val_iters=1")
    trainer.load_checkpoint(str(out / "checkpoint_final.pth"))
    assert trainer.global_step == 2
    assert trainer._semisup_state_restored
    restored = trainer.teacher.state_dict()
    for key, value in first["semisup_state"]["teacher"].items():
        assert torch.equal(restored[key], value), key
    # the ramp-up continues from where it stopped (T = 2 epochs x 2 iterations now)
    assert trainer.rampup_weight(1.0) == pytest.approx(float(torch.exp(torch.tensor(-5 * 0.5**2))))

    # continue through the console script
    run.train("MeanTeacherTrainer", "1", "epochs=2,iters=2,val_iters=1", "--c")
    second = load_checkpoint_file(out / "checkpoint_final.pth")
    assert second["current_epoch"] == 2
    assert second["semisup_state"]["global_step"] == 4
    assert second["logging"]["loss_cons"][0] == first["logging"]["loss_cons"][0]
    assert len(second["logging"]["loss_cons"]) == 2
