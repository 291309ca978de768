"""``nnunet-semisup sparsify``: exactly the planned slices keep their labels, the rest is nnU-Net's ignore label;
the source is never modified; nnU-Net plans, preprocesses and trains on the result and masks its loss there."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_semisup.trainers.sparsification.sparsify import SparsifyError, sparsify_dataset

TINY = "Dataset501_Tiny"


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _asymmetric_plan(cases: list[str]) -> dict:
    # different slices per plane and case, so a swapped axis or case cannot pass
    return {
        "format": 1,
        "dataset": TINY,
        "strategy": "ra",
        "budget": 8,
        "plane_axis": {"xy": 0, "xz": 1, "yz": 2},
        "cases": {
            c: {"shape": [32, 32, 32], "xy": [3 + i, 20], "xz": [7], "yz": [30 - i, 1, 12]}
            for i, c in enumerate(cases)
        },
    }


def test_sparsify_keeps_exactly_the_planned_slices_and_never_touches_the_source(tiny_dataset, tmp_path):
    source = tiny_dataset.raw / TINY
    before = _tree_digest(source)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").iterdir())
    plan = _asymmetric_plan(cases)
    raw = tmp_path / "raw"
    raw.mkdir()
    out = sparsify_dataset(str(source), plan, str(raw), 530, "S", progress=False)
    assert out == str(raw / "Dataset530_S")

    dataset_json = json.loads((raw / "Dataset530_S" / "dataset.json").read_text())
    source_json = json.loads((source / "dataset.json").read_text())
    assert dataset_json["labels"] == {**source_json["labels"], "ignore": 3}
    assert json.loads((raw / "Dataset530_S" / "annotation_plan.json").read_text()) == plan
    for i, case in enumerate(cases):
        dense = _read(source / "labelsTr" / f"{case}.nii.gz")
        sparse = _read(raw / "Dataset530_S" / "labelsTr" / f"{case}.nii.gz")
        expected = np.full_like(dense, 3)
        for z in (3 + i, 20):
            expected[z] = dense[z]
        expected[:, 7] = dense[:, 7]
        for x in (30 - i, 1, 12):
            expected[:, :, x] = dense[:, :, x]
        assert np.array_equal(sparse, expected), case
        # geometry unchanged
        a = sitk.ReadImage(str(source / "labelsTr" / f"{case}.nii.gz"))
        b = sitk.ReadImage(str(raw / "Dataset530_S" / "labelsTr" / f"{case}.nii.gz"))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        image = f"{case}_0000.nii.gz"
        assert (raw / "Dataset530_S" / "imagesTr" / image).read_bytes() == (
            source / "imagesTr" / image
        ).read_bytes()
    for folder in ("imagesTs", "labelsTs", "imagesUnlabeled"):
        assert sorted(p.name for p in (raw / "Dataset530_S" / folder).iterdir()) == sorted(
            p.name for p in (source / folder).iterdir()
        )

    # an existing target is refused and left alone; the source is unchanged throughout
    target_digest = _tree_digest(raw / "Dataset530_S")
    with pytest.raises(SparsifyError, match=r"dataset id 530 is taken by .*Dataset530_S: choose another"):
        sparsify_dataset(str(source), plan, str(raw), 530, "Other", progress=False)
    assert _tree_digest(raw / "Dataset530_S") == target_digest
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset530_S"]
    assert _tree_digest(source) == before


def test_sparsify_refuses_a_plan_of_other_cases_or_shapes(tiny_dataset, tmp_path):
    source = tiny_dataset.raw / TINY
    cases = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").iterdir())
    raw = tmp_path / "raw"
    raw.mkdir()
    plan = _asymmetric_plan(cases[1:])
    with pytest.raises(SparsifyError, match=rf"no slices for training case\(s\) \['{cases[0]}'\]"):
        sparsify_dataset(str(source), plan, str(raw), 531, "S", progress=False)
    plan = _asymmetric_plan(cases)
    plan["cases"][cases[2]]["shape"] = [32, 32, 40]
    with pytest.raises(SparsifyError, match=f"case {cases[2]}: the plan was made for an image of shape"):
        sparsify_dataset(str(source), plan, str(raw), 531, "S", progress=False)
    assert list(raw.iterdir()) == []


def test_nnunet_masks_loss_and_gradient_on_ignore_voxels(sparse_tiny_dataset, monkeypatch):
    """Eq. 2: the stock trainer's loss (Dice + CE with deep supervision) built for the sparse dataset neither
    sees nor back-propagates into voxels labeled ignore."""
    from nnunetv2.run.run_training import get_trainer_from_args

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, sparse_tiny_dataset.env[key])
    trainer = get_trainer_from_args("520", "3d_fullres", 0, "LabeledOnlyTrainer", device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.label_manager.ignore_label == 3

    patch = list(trainer.configuration_manager.patch_size)
    generator = torch.Generator().manual_seed(0)
    targets, logits = [], []
    for scale in trainer._get_deep_supervision_scales():
        shape = [round(p * s) for p, s in zip(patch, scale)]
        target = torch.randint(0, 3, (2, 1, *shape), generator=generator).float()
        target[:, :, : shape[0] // 2] = 3  # first half of every patch unannotated
        targets.append(target)
        logits.append(torch.randn(2, 3, *shape, generator=generator, requires_grad=True))
    loss = trainer.loss(logits, targets)
    loss.backward()
    weights = trainer.loss.weight_factors
    assert sum(w > 0 for w in weights) >= 2
    for weight, target, logit in zip(weights, targets, logits):
        if weight == 0:  # nnU-Net gives the lowest resolution no weight: no gradient at all
            assert logit.grad is None or logit.grad.abs().max() == 0
            continue
        ignored = (target == 3).expand_as(logit)
        assert logit.grad[ignored].abs().max() == 0
        assert logit.grad[~ignored].abs().max() > 0

    # the loss does not change when the logits of ignore voxels change
    with torch.no_grad():
        changed = [
            torch.where((t == 3).expand_as(x), torch.randn_like(x) * 10, x) for t, x in zip(targets, logits)
        ]
        assert torch.equal(trainer.loss(changed, targets), loss.detach())


@pytest.mark.e2e
def test_nnunet_plans_preprocesses_and_trains_on_sparse_labels(sparse_tiny_dataset):
    run = sparse_tiny_dataset
    preprocessed = run.preprocessed / "Dataset520_TinySparse"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert "3d_fullres" in plans["configurations"]
    run("nnUNetv2_train", "520", "3d_fullres", "0", "-tr", "LabeledOnlyTrainer", "-device", "cpu",
        extra_env={"nnUNet_semisup_schedule": "epochs=1,iters=2,val_iters=1"})  # fmt: skip
    fold = run.results / "Dataset520_TinySparse" / "LabeledOnlyTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 1
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    # validation Dice is computed on the annotated voxels only: finite despite the ignore label
    assert np.isfinite(summary["foreground_mean"]["Dice"])
