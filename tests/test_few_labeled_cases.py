"""Datasets with fewer than 5 labeled cases through the real ``nnUNetv2_train``: a leave-one-out split for 2 to 4
cases, a clear stop (no traceback, the message in the training log) for 1 case or a fold the split does not
have. The 3-case run trains ``MeanTeacherTrainer_PredictTeacher``, whose checkpoints are checked here too (every
checkpoint holds the teacher as ``network_weights``). One console run per test at most (the 3-case run is shared
by the tests of this module)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_DATASET_ID, TINY_DATASET_NAME, ConsoleRunner
from helpers import load_checkpoint_file

pytestmark = pytest.mark.e2e

NAME = TINY_DATASET_NAME
DATA = "nnUNetPlans_3d_fullres"


def few_case_copy(tiny: ConsoleRunner, root: Path, n_labeled: int) -> ConsoleRunner:
    """A copy of Dataset501_Tiny in ``root`` that keeps only its first ``n_labeled`` labeled cases (raw folder
    copied whole, unlabeled images included; the kept cases' preprocessed files linked, nothing of the session's
    dataset is written), and a runner whose nnU-Net folders point at it."""
    raw, pre = root / "raw" / NAME, root / "preprocessed" / NAME
    shutil.copytree(tiny.raw / NAME, raw)
    source = tiny.preprocessed / NAME
    cases = sorted(p.name[: -len(".pkl")] for p in (source / DATA).glob("*.pkl"))[:n_labeled]
    (pre / DATA).mkdir(parents=True)
    (pre / "gt_segmentations").mkdir()
    for name in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, pre / name)
    for case in cases:
        for p in (source / DATA).glob(f"{case}[._]*"):
            if p.name.startswith(f"{case}.") or p.name.startswith(f"{case}_seg."):
                (pre / DATA / p.name).symlink_to(p)
        for p in (source / "gt_segmentations").glob(f"{case}.*"):
            (pre / "gt_segmentations" / p.name).symlink_to(p)
    env = dict(tiny.env, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"))
    env["nnUNet_results"] = str(root / "results")
    return ConsoleRunner(env, root)


def training_log(run: ConsoleRunner, trainer: str, fold: str = "0") -> str:
    return "".join(p.read_text() for p in run.output_folder(trainer, fold).glob("training_log_*.txt"))


@pytest.fixture(scope="module")
def three_cases(tiny_dataset, tmp_path_factory):
    """3 labeled cases, ``nnUNetv2_train 501 3d_fullres 0 -tr MeanTeacherTrainer_PredictTeacher`` (1 epoch)."""
    run = few_case_copy(tiny_dataset, tmp_path_factory.mktemp("three_cases"), 3)
    proc = run.train("MeanTeacherTrainer_PredictTeacher", "0", "epochs=1,iters=2,val_iters=1")
    return run, proc


def test_three_labeled_cases_train_fold_0_of_a_leave_one_out_split(three_cases):
    run, proc = three_cases
    cases = sorted(p.name[: -len(".pkl")] for p in (run.preprocessed / NAME / DATA).glob("*.pkl"))
    assert len(cases) == 3
    splits = json.loads((run.preprocessed / NAME / "splits_final.json").read_text())
    assert splits == [{"train": [c for c in cases if c != v], "val": [v]} for v in cases]
    # said on stdout and in the training log
    log = training_log(run, "MeanTeacherTrainer_PredictTeacher")
    for text in (proc.stdout, log):
        assert "Only 3 labeled training cases" in text and "leave-one-out split" in text
        assert "3 folds, 0 to 2" in text
    # nnU-Net then uses the file as any existing split: fold 0 trains on 2 cases and validates on the first
    assert "This split has 2 training and 1 validation cases." in log
    out = run.output_folder("MeanTeacherTrainer_PredictTeacher")
    assert (out / "checkpoint_final.pth").is_file()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert [c["prediction_file"].rsplit("/", 1)[-1] for c in summary["metric_per_case"]] == [
        f"{cases[0]}.nii.gz"
    ]


def test_predict_teacher_saves_the_teacher_in_best_and_final_checkpoints(three_cases, monkeypatch):
    run, _ = three_cases
    out = run.output_folder("MeanTeacherTrainer_PredictTeacher")
    best = load_checkpoint_file(out / "checkpoint_best.pth")
    final = load_checkpoint_file(out / "checkpoint_final.pth")
    for checkpoint in (best, final):
        state = checkpoint["semisup_state"]
        # network_weights is the teacher, the student is kept aside: the same kind of network in both files
        assert "student" in state and "teacher" not in state
        weights, student = checkpoint["network_weights"], state["student"]
        assert weights.keys() == student.keys()
        assert any(not torch.equal(weights[k], student[k]) for k in weights if weights[k].is_floating_point())

    # --val_best / --val load a checkpoint into a trainer: the teacher comes from network_weights, the network
    # keeps training the student, and validation runs the teacher
    from nnunet_semisup.trainers.base import unwrap_network

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = run.build_trainer("MeanTeacherTrainer_PredictTeacher", 0, monkeypatch)
    trainer.load_checkpoint(str(out / "checkpoint_best.pth"))
    teacher, network = trainer.teacher.state_dict(), unwrap_network(trainer.network).state_dict()
    assert all(torch.equal(teacher[k], best["network_weights"][k]) for k in teacher)
    assert all(torch.equal(network[k], best["semisup_state"]["student"][k]) for k in network)
    calls = {"teacher": 0, "student": 0}
    trainer.teacher.register_forward_hook(lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    unwrap_network(trainer.network).register_forward_hook(
        lambda *_: calls.__setitem__("student", calls["student"] + 1)
    )
    _, dataloader_val = trainer.get_dataloaders()
    trainer.network.eval()
    with torch.no_grad():
        result = trainer.validation_step(next(dataloader_val))
    assert calls == {"teacher": 1, "student": 0}
    assert "tp_hard" in result
    assert trainer.teacher.decoder.deep_supervision is False  # back to the teacher's training setting


def test_a_fold_that_the_leave_one_out_split_does_not_have_is_refused(tiny_dataset, tmp_path, monkeypatch):
    from nnunet_semisup.errors import TrainingInputError

    run = few_case_copy(tiny_dataset, tmp_path, 3)
    trainer = run.build_trainer("LabeledOnlyTrainer", 4, monkeypatch)
    with pytest.raises(TrainingInputError) as excinfo:
        trainer.do_split()
    message = str(excinfo.value)
    assert "Fold 4 does not exist" in message and "3 fold(s) (0 to 2)" in message
    assert "fold all" in message and "splits_final.json" in message
    # the leave-one-out file was written first (it is what fold 0 to 2 train on)
    assert len(json.loads((run.preprocessed / NAME / "splits_final.json").read_text())) == 3

    # a splits_final.json of the user's is honoured as written, with any number of folds
    own = [{"train": ["a"], "val": ["b"]}] * 2
    (run.preprocessed / NAME / "splits_final.json").write_text(json.dumps(own))
    assert run.build_trainer("LabeledOnlyTrainer", 1, monkeypatch).do_split() == (["a"], ["b"])
    with pytest.raises(TrainingInputError, match="Fold 2 does not exist"):
        run.build_trainer("LabeledOnlyTrainer", 2, monkeypatch).do_split()


def test_one_labeled_case_stops_with_the_fix_and_no_traceback(tiny_dataset, tmp_path):
    run = few_case_copy(tiny_dataset, tmp_path, 1)
    proc = run(
        "nnUNetv2_train", str(TINY_DATASET_ID), "3d_fullres", "0", "-tr", "LabeledOnlyTrainer", "-device", "cpu",
        check=False, extra_env={"nnUNet_semisup_schedule": "epochs=1,iters=2,val_iters=1"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in (proc.stderr, training_log(run, "LabeledOnlyTrainer")):
        assert "ERROR: Dataset Dataset501_Tiny has 1 labeled training case" in text, text
        assert f"nnUNetv2_train {NAME} 3d_fullres all -tr LabeledOnlyTrainer" in text
        assert "splits_final.json" in text
    assert not (run.preprocessed / NAME / "splits_final.json").exists()
