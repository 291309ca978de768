"""Multi-view pseudo-labels and the meta-model: nearest-neighbour fit, average A(Y^), the Y-shaped network, and
the whole cascade end to end on the tiny sparse dataset (2D + 3D base models -> pseudo-labels -> meta dataset ->
SelfTrainingMetaTrainer -> predict-sparse)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_semisup.trainers.sparsification.multiview_pseudo_labels import (
    SOURCES,
    average_probabilities,
    meta_plans,
    nearest_pseudo_label_set,
)


def test_nearest_neighbour_fit_picks_the_set_with_the_lowest_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 4, 5, 6, generator=generator) * 3
    prediction = logits.argmax(1)
    sets = torch.randint(0, 3, (3, 4, 4, 5, 6), generator=generator)
    # sample 0: set 2 is the prediction itself; sample 1: set 0 agrees except in a corner; sample 2: set 3
    sets[0, 2] = prediction[0]
    sets[1, 0] = prediction[1]
    sets[1, 0, :2, :2, :2] = (prediction[1, :2, :2, :2] + 1) % 3
    sets[2, 3] = prediction[2]
    chosen = nearest_pseudo_label_set(logits, sets.float())
    assert chosen.tolist() == [2, 0, 3]
    # and it is the argmin of the definition
    ce = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits, sets[:, s], reduction="none").flatten(1).mean(1)
            for s in range(4)
        ],
        1,
    )
    assert torch.equal(chosen, ce.argmin(1))
    with pytest.raises(ValueError, match="differ"):
        nearest_pseudo_label_set(logits, sets[:, :, :3].float())


def test_average_of_pseudo_label_probabilities():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(3), size=(2, 3, 4)).transpose(3, 0, 1, 2) for _ in range(4)]
    mean = average_probabilities(probs)
    assert mean.shape == (3, 2, 3, 4) and np.allclose(mean.sum(0), 1)
    assert np.allclose(mean, sum(probs) / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        average_probabilities([probs[0], probs[1][:, :1]])


def test_meta_plans_add_unnormalized_channels():
    plans = {
        "dataset_name": "A",
        "configurations": {
            "3d_fullres": {"normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False]}
        },
        "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0}},
    }
    out = meta_plans(plans, "B", 7)
    assert out["dataset_name"] == "B"
    assert (
        out["configurations"]["3d_fullres"]["normalization_schemes"]
        == ["ZScoreNormalization"] + ["NoNormalization"] * 7
    )
    assert len(out["configurations"]["3d_fullres"]["use_mask_for_norm"]) == 8
    assert len(out["foreground_intensity_properties_per_channel"]) == 8
    assert plans["dataset_name"] == "A"  # not modified


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.e2e
def test_cascade_end_to_end_on_tiny_sparse_data(meta_tiny_dataset):
    # the fixture trained the 2D and 3D base models on fold 0, ran pseudo-labels (root/pseudo, Dataset521 and
    # Dataset522) and preprocessed Dataset522
    run = meta_tiny_dataset
    sparse = run.raw / "Dataset520_TinySparse"
    # nnUNetv2_train's final validation predicted the 2D model's validation case through nnU-Net's predictor
    fold2d = (
        run.results
        / "Dataset520_TinySparse"
        / "SparseMultiPlane2DTrainer__nnUNetPlans__3d_fullres"
        / "fold_0"
    )
    assert len(list((fold2d / "validation").glob("*.nii.gz"))) == 1
    out = run.root / "pseudo"

    manifest = json.loads((out / "pseudo_labels.json").read_text())
    train = sorted(p.name[: -len(".nii.gz")] for p in (sparse / "labelsTr").iterdir())
    unlabeled = sorted(p.name[: -len("_0000.nii.gz")] for p in (sparse / "imagesUnlabeled").iterdir())
    assert manifest["cases"] == sorted(train + unlabeled) and len(unlabeled) == 3
    for case in manifest["cases"]:
        probs = []
        for source in SOURCES:
            with np.load(out / source / f"{case}.npz") as npz:
                probs.append(npz["probabilities"])
            assert probs[-1].shape == (3, 32, 32, 32)
            assert np.array_equal(_read(out / source / f"{case}.nii.gz"), probs[-1].argmax(0))
        with np.load(out / "average" / f"{case}.npz") as npz:
            assert np.allclose(npz["probabilities"], np.mean(probs, 0), atol=1e-6)
            fused = npz["probabilities"].argmax(0)
        assert np.array_equal(_read(out / "average" / f"{case}.nii.gz"), fused)
        # the simple variant's labels: fused pseudo-label, annotated voxels kept
        fused_label = _read(run.raw / "Dataset521_TinySparseFused" / "labelsTr" / f"{case}.nii.gz")
        if case in train:
            annotation = _read(sparse / "labelsTr" / f"{case}.nii.gz")
            assert np.array_equal(fused_label, np.where(annotation != 3, annotation, fused))
        else:
            assert np.array_equal(fused_label, fused)
    fused_json = json.loads((run.raw / "Dataset521_TinySparseFused" / "dataset.json").read_text())
    assert "ignore" not in fused_json["labels"] and fused_json["numTraining"] == 8

    # meta dataset: image + 3 A(Y^) + 4 set channels; then the meta-model and the cascade
    meta = run.raw / "Dataset522_TinySparseMeta"
    assert len(json.loads((meta / "dataset.json").read_text())["channel_names"]) == 8
    case = train[0]
    assert np.array_equal(
        _read(meta / "imagesTr" / f"{case}_0005.nii.gz"), _read(out / "xy" / f"{case}.nii.gz")
    )
    run("nnUNetv2_train", "522", "3d_fullres", "0", "-tr", "SelfTrainingMetaTrainer", "-device", "cpu",
        extra_env={"nnUNet_semisup_schedule": "epochs=2,iters=2,val_iters=1"})  # fmt: skip
    fold = (
        run.results
        / "Dataset522_TinySparseMeta"
        / "SelfTrainingMetaTrainer__nnUNetPlans__3d_fullres"
        / "fold_0"
    )
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["semisup_state"]["stage"] == 2  # 4 iterations, stage 1 = the first 2
    assert checkpoint["semisup_state"]["global_step"] == 4
    assert any(k.startswith("aux_encoder.") for k in checkpoint["network_weights"])
    log = (fold / next(p.name for p in fold.iterdir() if p.name.startswith("training_log"))).read_text()
    assert "stage 1" in log and "stage 2" in log

    pred = run.root / "pred_cascade"
    run("nnunet-semisup", "predict-sparse", "-i", str(sparse / "imagesTs"), "-o", str(pred), "-d", "520",
        "--meta-dataset", "522", "-f", "0", "-device", "cpu", "--disable_tta", "--no-progress")  # fmt: skip
    test_cases = sorted(p.name for p in (sparse / "labelsTs").iterdir())
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == test_cases
    for name in test_cases:
        seg = _read(pred / name)
        assert seg.shape == (32, 32, 32) and set(np.unique(seg)) <= {0, 1, 2}
