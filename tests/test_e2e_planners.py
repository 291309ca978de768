"""Semi-supervised plans through nnU-Net's own console scripts: ``nnunet-semisup plan-and-preprocess``, then
``nnUNetv2_train -p``, ``nnUNetv2_predict -p --save_probabilities`` and ``nnUNetv2_ensemble``."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

TINY_DATASET_ID, TINY_DATASET_NAME = (
    501,
    "Dataset501_Tiny",
)  # conftest's tiny dataset (5 labeled, 3 unlabeled)
FOLD = "4"  # other end-to-end tests train folds 0-2 with nnUNetPlans; these folders are nnUNetSemiSupPlans'
PLANS = "nnUNetSemiSupPlans"
TRAINERS = ("LabeledOnlyTrainer", "MeanTeacherTrainer")


def test_semisup_plans_train_predict_and_ensemble_with_stock_commands(tiny_dataset):
    run = tiny_dataset
    out = run("nnunet-semisup", "plan-and-preprocess", "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-np", "1",
              "-npfp", "1", "--no_pbar").stdout  # fmt: skip
    assert "from 5 labeled + 3 unlabeled cases" in out
    preprocessed = run.preprocessed / TINY_DATASET_NAME
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == f"{PLANS}_3d_fullres"
    assert len(list((preprocessed / f"{PLANS}_3d_fullres").glob("*.b2nd"))) == 2 * 5  # images + labels
    assert len(list((preprocessed / f"{PLANS}_3d_fullres_unlabeled").glob("*.b2nd"))) == 2 * 3

    schedule = {"nnUNet_semisup_schedule": "epochs=1,iters=2,val_iters=1"}
    predictions = []
    for trainer in TRAINERS:
        run("nnUNetv2_train", str(TINY_DATASET_ID), "3d_fullres", FOLD, "-tr", trainer, "-p", PLANS, "-device", "cpu",
            extra_env=schedule)  # fmt: skip
        model = run.results / TINY_DATASET_NAME / f"{trainer}__{PLANS}__3d_fullres"
        assert (model / f"fold_{FOLD}" / "checkpoint_final.pth").is_file()
        assert json.loads((model / "plans.json").read_text())["plans_name"] == PLANS
        pred = run.root / f"planners_pred_{trainer}"
        run(
            "nnUNetv2_predict", "-i", str(run.raw / TINY_DATASET_NAME / "imagesTs"), "-o", str(pred),
            "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-tr", trainer, "-p", PLANS, "-f", FOLD,
            "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1", "--save_probabilities",
        )  # fmt: skip
        assert len(list(pred.glob("*.npz"))) == 2  # the two test cases
        predictions.append(pred)
    ensemble = run.root / "planners_ensemble"
    run("nnUNetv2_ensemble", "-i", *map(str, predictions), "-o", str(ensemble), "-np", "1")
    test_labels = sorted(p.name for p in (run.raw / TINY_DATASET_NAME / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in ensemble.glob("*.nii.gz")) == test_labels
