"""End to end through the console scripts: ``nnunet-semisup self-train`` with a confidence filter on the tiny
dataset, the resulting dataset and model, ``nnUNetv2_predict`` with the student, and a rerun that skips
every finished step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = pytest.mark.e2e

SCHEDULE = {"nnUNet_semisup_schedule": "epochs=1,iters=2,val_iters=1"}
SELF_TRAIN = ("nnunet-semisup", "self-train", "-d", "501", "-c", "3d_fullres", "-f", "0", "--out-id", "502",
              "--confidence", "0.5", "-device", "cpu", "-np", "1", "--disable_tta")  # fmt: skip


def test_self_train_builds_the_pseudo_labeled_dataset_trains_a_student_and_resumes(tiny_dataset):
    run = tiny_dataset
    source = run.raw / "Dataset501_Tiny"
    proc = run(*SELF_TRAIN, extra_env=SCHEDULE)

    new = run.raw / "Dataset502_TinySelfTrain"
    labeled = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").glob("*.nii.gz"))
    unlabeled = sorted(p.name[: -len("_0000.nii.gz")] for p in (source / "imagesUnlabeled").glob("*.nii.gz"))
    assert len(labeled) == 5 and len(unlabeled) == 3
    assert sorted(p.name for p in (new / "labelsTr").iterdir()) == [
        f"{c}.nii.gz" for c in sorted(labeled + unlabeled)
    ]
    assert len(list((new / "imagesTr").iterdir())) == 8

    dataset_json = json.loads((new / "dataset.json").read_text())
    source_json = json.loads((source / "dataset.json").read_text())
    ignore = max(source_json["labels"].values()) + 1
    assert dataset_json["labels"] == {**source_json["labels"], "ignore": ignore}
    assert dataset_json["numTraining"] == 8

    manifest = json.loads((new / "semisup_self_training.json").read_text())
    assert manifest["pseudo_labeled"] == unlabeled and manifest["labeled"] == labeled
    assert manifest["confidence_threshold"] == 0.5 and manifest["round"] == 1 and manifest["fold"] == "0"
    teacher_checkpoint = run.output_folder("LabeledOnlyTrainer", "0") / "checkpoint_final.pth"
    assert manifest["teacher"]["checkpoint"] == str(teacher_checkpoint)

    # the pseudo-labels are the teacher's predictions, with the ignore label exactly where it was unsure
    predictions = run.results / "Dataset502_TinySelfTrain" / "self_training" / "teacher_predictions"
    for case in unlabeled:
        pseudo = sitk.GetArrayFromImage(sitk.ReadImage(str(new / "labelsTr" / f"{case}.nii.gz")))
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / f"{case}.nii.gz")))
        with np.load(predictions / f"{case}.npz") as npz:
            unsure = npz["probabilities"].max(axis=0) < 0.5
        assert pseudo.shape == predicted.shape == unsure.shape
        assert np.array_equal(pseudo == ignore, unsure)
        assert np.array_equal(pseudo[~unsure], predicted[~unsure])
        assert manifest["ignored_fraction"][case] == pytest.approx(unsure.mean())
    # an untrained teacher is unsure almost everywhere: the filter must have had something to do
    assert sum(manifest["ignored_fraction"].values()) > 0

    # D's plans, D's validation cases; pseudo-labeled cases only ever train
    preprocessed = run.preprocessed / "Dataset502_TinySelfTrain"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    source_plans = json.loads((run.preprocessed / "Dataset501_Tiny" / "nnUNetPlans.json").read_text())
    assert plans["dataset_name"] == "Dataset502_TinySelfTrain"
    assert plans["configurations"] == source_plans["configurations"]
    splits = json.loads((preprocessed / "splits_final.json").read_text())
    source_splits = json.loads((run.preprocessed / "Dataset501_Tiny" / "splits_final.json").read_text())
    assert [s["val"] for s in splits] == [sorted(s["val"]) for s in source_splits]
    assert [s["train"] for s in splits] == [sorted(s["train"]) + unlabeled for s in source_splits]

    student_dir = (
        run.results / "Dataset502_TinySelfTrain" / "LabeledOnlyTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    )
    checkpoint = torch.load(student_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "LabeledOnlyTrainer" and checkpoint["current_epoch"] == 1
    validated = sorted(p.name for p in (student_dir / "validation").glob("*.nii.gz"))
    assert validated == sorted(f"{c}.nii.gz" for c in source_splits[0]["val"])
    assert f"Final model: {student_dir}" in proc.stdout
    assert (
        "-d Dataset502_TinySelfTrain -c 3d_fullres -p nnUNetPlans -tr LabeledOnlyTrainer -f 0" in proc.stdout
    )

    # the student is a normal nnU-Net model
    pred = run.root / "pred_selftrain"
    run("nnUNetv2_predict", "-i", str(source / "imagesTs"), "-o", str(pred), "-d", "502", "-c", "3d_fullres",
        "-tr", "LabeledOnlyTrainer", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta")  # fmt: skip
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == sorted(
        p.name for p in (source / "labelsTs").iterdir()
    )

    # a rerun finds every step done and writes nothing
    mtime = (student_dir / "checkpoint_final.pth").stat().st_mtime_ns
    rerun = run(*SELF_TRAIN, extra_env=SCHEDULE)
    assert "teacher: already trained" in rerun.stdout
    assert "pseudo-labeled dataset: exists" in rerun.stdout
    assert "already preprocessed" in rerun.stdout
    assert "student: already trained" in rerun.stdout
    assert "$ nnUNetv2_" not in rerun.stdout
    assert (student_dir / "checkpoint_final.pth").stat().st_mtime_ns == mtime

    # other settings for the same id are refused, naming the difference; nothing is touched
    other_threshold = ["0.9" if arg == "0.5" else arg for arg in SELF_TRAIN]
    refused = run(*other_threshold, check=False, extra_env=SCHEDULE)
    assert refused.returncode == 2
    assert "confidence_threshold: 0.5 there, 0.9 now" in refused.stderr
    assert "--out-id" in refused.stderr


def test_self_train_refuses_a_dataset_without_unlabeled_images(tiny_dataset, tmp_path):
    run = tiny_dataset
    # the tiny dataset's labeled part only, in a raw folder of its own (the preprocessed data is shared)
    raw = tmp_path / "raw"
    copy = raw / "Dataset501_Tiny"
    copy.mkdir(parents=True)
    for name in ("imagesTr", "labelsTr", "dataset.json"):
        (copy / name).symlink_to(run.raw / "Dataset501_Tiny" / name)
    proc = run("nnunet-semisup", "self-train", "-d", "501", "-c", "3d_fullres", "-f", "0", "--out-id", "510",
               "-device", "cpu", check=False, extra_env={"nnUNet_raw": str(raw)})  # fmt: skip
    assert proc.returncode == 2
    assert f"{copy / 'imagesUnlabeled'} has no images" in proc.stderr
    assert "$ nnUNetv2_train" not in proc.stdout
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_Tiny"]
