"""The rest of nnU-Net's submission flow with our trainers, through the stock console scripts:
``nnUNetv2_find_best_configuration`` (cross-validation summary, ensembling of a semi-supervised and the labeled-only
model, postprocessing choice), ``nnUNetv2_predict --save_probabilities``, ``nnUNetv2_ensemble`` and
``nnUNetv2_apply_postprocessing``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.e2e

TINY_DATASET_ID, TINY_DATASET_NAME = 501, "Dataset501_Tiny"  # conftest's tiny dataset
FOLD = "2"  # the other end-to-end tests train folds 0 and 1; this one keeps its own folders
TRAINERS = ("LabeledOnlyTrainer", "MeanTeacherTrainer")


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_find_best_configuration_ensemble_and_postprocessing_accept_our_trainers(tiny_dataset):
    run = tiny_dataset
    for trainer in TRAINERS:  # --npz: nnU-Net keeps the validation probabilities that ensembling needs
        run.train(trainer, FOLD, "epochs=1,iters=2,val_iters=1", "--npz")
        assert (run.output_folder(trainer, FOLD) / "validation" / "summary.json").is_file()

    run(
        "nnUNetv2_find_best_configuration", str(TINY_DATASET_ID), "-c", "3d_fullres", "-tr", *TRAINERS,
        "-f", FOLD, "-np", "1",
    )  # fmt: skip
    dataset_results = run.results / TINY_DATASET_NAME
    info = json.loads((dataset_results / "inference_information.json").read_text())
    evaluated = set(info["all_results"])
    for trainer in TRAINERS:
        assert any(key.startswith(f"{trainer}__nnUNetPlans__3d_fullres") for key in evaluated), evaluated
    assert any(key.startswith("ensemble___") for key in evaluated), evaluated  # the two models were ensembled
    pp_pkl = dataset_results / info["best_model_or_ensemble"]["postprocessing_file"]
    assert pp_pkl.is_file()
    assert (dataset_results / "inference_instructions.txt").is_file()

    # the instructions' flow: predict with probabilities, ensemble, apply the chosen postprocessing
    preds = []
    for trainer in TRAINERS:
        out = run.root / f"tools_pred_{trainer}"
        run(
            "nnUNetv2_predict", "-i", str(run.raw / TINY_DATASET_NAME / "imagesTs"), "-o", str(out),
            "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-tr", trainer, "-f", FOLD, "-device", "cpu",
            "--disable_tta", "-npp", "1", "-nps", "1", "--save_probabilities",
        )  # fmt: skip
        assert sorted(out.glob("*.npz")), f"{trainer}: no probabilities written"
        preds.append(out)
    ensemble = run.root / "tools_ensemble"
    run("nnUNetv2_ensemble", "-i", *map(str, preds), "-o", str(ensemble), "-np", "1")
    processed = run.root / "tools_postprocessed"
    run(
        "nnUNetv2_apply_postprocessing", "-i", str(ensemble), "-o", str(processed), "-pp_pkl_file", str(pp_pkl),
        "-np", "1", "-plans_json", info["best_model_or_ensemble"]["some_plans_file"],
    )  # fmt: skip

    labels = sorted((run.raw / TINY_DATASET_NAME / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in processed.glob("*.nii.gz")) == [p.name for p in labels]
    label_values = set(
        json.loads((run.raw / TINY_DATASET_NAME / "dataset.json").read_text())["labels"].values()
    )
    for ref in labels:
        seg = _read(processed / ref.name)
        assert seg.shape == _read(ref).shape
        assert set(np.unique(seg).tolist()) <= label_values
