"""FixMatch, UniMatch and BCP trainers in process on the planned tiny dataset: one real training step each, the
teacher gets no gradient, every deep-supervision level is trained, region-based targets and nnU-Net's ignore
label work."""

from __future__ import annotations

import pytest
import torch

from nnunet_semisup.trainers.base import unwrap_network

pytestmark = pytest.mark.e2e  # needs the planned tiny dataset


def _build(tiny_dataset, monkeypatch, name: str, fold: int = 3):
    trainer = tiny_dataset.build_trainer(name, fold, monkeypatch)
    trainer.initialize()
    trainer.on_fresh_start()
    unlabeled = torch.randn(
        2, 1, *trainer.configuration_manager.patch_size, generator=torch.Generator().manual_seed(5)
    )
    trainer.next_unlabeled_batch = lambda: unlabeled
    return trainer


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _region_trainer(tiny_dataset, monkeypatch, name: str, ignore: bool = False):
    """``name`` built directly with a region-based dataset.json (regions {1, 2} and {2}; optional ignore 3), on
    the tiny dataset's plans."""
    import json

    import nnunet_semisup.trainers as trainers

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, tiny_dataset.env[key])
    folder = tiny_dataset.preprocessed / "Dataset501_Tiny"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    if ignore:
        dataset_json["labels"]["ignore"] = 3
    dataset_json["regions_class_order"] = [1, 2]
    trainer = getattr(trainers, name)(plans, "3d_fullres", 3, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.on_fresh_start()
    unlabeled = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    trainer.next_unlabeled_batch = lambda: unlabeled
    return trainer


def _region_batch(trainer, ignore: bool) -> dict:
    """Region targets as nnU-Net's loader makes them: (B, R [+1 ignore], *scale) 0/1 masks per scale."""
    patch = list(trainer.configuration_manager.patch_size)
    generator = torch.Generator().manual_seed(0)
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        seg = torch.randint(0, 4 if ignore else 3, (2, 1, *[round(p * s) for p, s in zip(patch, scale)]),
                            generator=generator)  # fmt: skip
        channels = [(seg == 1) | (seg == 2), seg == 2] + ([seg == 3] if ignore else [])
        targets.append(torch.cat(channels, 1).float())
    return {"data": torch.randn(2, 1, *patch, generator=generator), "target": targets}


# ---------------------------------------------------------------------------------------------- FixMatch
def test_fixmatch_step_trains_the_student_at_every_level_and_moves_the_teacher_by_ema(
    tiny_dataset, monkeypatch, random_batch
):
    trainer = _build(tiny_dataset, monkeypatch, "FixMatchTrainer")
    trainer.confidence_threshold = 0.0  # an untrained teacher is rarely 95 % sure: count every voxel here
    batch = random_batch(trainer)
    unlabeled = trainer.next_unlabeled_batch()

    # the unlabeled loss alone reaches the student at every deep-supervision level used, never the teacher
    labels, confidence = trainer.teacher_pseudo_labels(unlabeled)
    strong, labels_s, confidence_s = trainer.strong_view(unlabeled, labels, confidence)
    assert strong.shape == unlabeled.shape and labels_s.shape == labels.shape
    trainer.network.zero_grad(set_to_none=True)
    output = trainer.network(strong)
    loss_u = trainer.unlabeled_loss(output, labels_s, confidence_s)
    assert loss_u.item() > 0
    loss_u.backward()
    student = unwrap_network(trainer.network)
    seg_layers = student.decoder.seg_layers
    used = [i for i, w in enumerate(trainer.loss.weight_factors) if w != 0]
    assert len(used) >= 2
    for i in used:  # seg_layers run from the lowest resolution up; outputs from full resolution down
        grad = seg_layers[len(seg_layers) - 1 - i].weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())

    # a full step: EMA rule for the teacher, terms for the log
    trainer.global_step = 10  # EMA decay min(1 - 1/12, 0.99)
    teacher_before = _snapshot(trainer.teacher)
    out = trainer.train_step(batch)
    assert trainer.global_step == 11
    assert {"loss_sup", "loss_u", "u_weight", "conf_frac"} <= out.keys()
    # one curve per class of dataset.json (background, two foreground labels)
    assert len(trainer.confidence_log_keys) == 3 and trainer.confidence_log_keys[0] == "conf_background"
    assert set(trainer.confidence_log_keys) <= out.keys()
    assert out["conf_frac"] == 1.0  # tau = 0
    decay = 1 - 1 / 12
    student_after = student.state_dict()
    for key, value in trainer.teacher.state_dict().items():
        if value.is_floating_point():
            expected = decay * teacher_before[key] + (1 - decay) * student_after[key]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_fixmatch_threshold_masks_the_unlabeled_loss(tiny_dataset, monkeypatch):
    trainer = _build(tiny_dataset, monkeypatch, "FixMatchTrainer")
    unlabeled = trainer.next_unlabeled_batch()
    labels, confidence = trainer.teacher_pseudo_labels(unlabeled)
    output = trainer.network(unlabeled)
    trainer.confidence_threshold = 1.01  # nothing is confident: no unlabeled loss at all
    assert trainer.unlabeled_loss(output, labels, confidence).item() == 0.0
    trainer.confidence_threshold = 0.0
    everything = trainer.unlabeled_loss(output, labels, confidence)
    trainer.confidence_threshold = float(confidence.median())  # about half of the voxels
    half = trainer.unlabeled_loss(output, labels, confidence)
    assert 0 < half.item() < everything.item()
    terms = trainer.confidence_terms(labels, confidence)
    assert 0.3 < float(terms["conf_frac"]) < 0.7


def test_fixmatch_self_teacher_labels_with_the_student(tiny_dataset, monkeypatch, random_batch):
    trainer = _build(tiny_dataset, monkeypatch, "FixMatchTrainer_SelfTeacher")
    assert trainer.teacher is None
    unlabeled = trainer.next_unlabeled_batch()
    labels, confidence = trainer.teacher_pseudo_labels(unlabeled)
    with torch.no_grad():
        logits = trainer.network(unlabeled)[0]
    assert torch.equal(labels[:, 0], logits.argmax(1).float())
    assert not labels.requires_grad and not confidence.requires_grad
    out = trainer.train_step(random_batch(trainer))
    assert trainer.global_step == 1 and "teacher" not in trainer.get_semisup_state()
    assert torch.isfinite(torch.tensor(float(out["loss"])))


@pytest.mark.parametrize("ignore", [False, True])
def test_fixmatch_region_based_step(tiny_dataset, monkeypatch, ignore):
    trainer = _region_trainer(tiny_dataset, monkeypatch, "FixMatchTrainer", ignore)
    assert trainer.label_manager.has_regions
    assert trainer.confidence_log_keys == ["conf_whole", "conf_core"]
    unlabeled = trainer.next_unlabeled_batch()
    labels, confidence = trainer.teacher_pseudo_labels(unlabeled)
    assert labels.shape[1] == 2 and confidence.shape == labels.shape
    assert ((confidence >= 0.5) & (confidence <= 1)).all()
    trainer.confidence_threshold = 0.0
    out = trainer.train_step(_region_batch(trainer, ignore))
    assert torch.isfinite(torch.tensor(float(out["loss"]))) and out["loss_u"] > 0
    assert 0 <= out["conf_whole"] <= 1
