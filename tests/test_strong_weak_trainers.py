"""FixMatch, UniMatch and BCP trainers in process on the planned tiny dataset: one real training step each, the
teacher gets no gradient, every deep-supervision level is trained, region-based targets and nnU-Net's ignore
label work."""

from __future__ import annotations

import pytest
import torch

from nnunet_semisup.trainers.base import unwrap_network

pytestmark = pytest.mark.e2e  # needs the planned tiny dataset


def _build(tiny_dataset, monkeypatch, name: str, fold: int = 3):
    """``name`` on the tiny dataset's plans, initialized as for a fresh ``nnUNetv2_train`` run (constructed
    directly: nnU-Net's trainer search is covered by the console-script tests), with a fixed unlabeled batch."""
    return _trainer_with_labels(tiny_dataset, monkeypatch, name, regions=False, ignore=False, fold=fold)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _trainer_with_labels(
    tiny_dataset, monkeypatch, name: str, regions: bool, ignore: bool, fold: int = 3, fresh_start: bool = True
):
    """``name`` built directly on the tiny dataset's plans, dataset.json changed to region-based (regions {1, 2}
    and {2}) and/or with nnU-Net's ignore label 3 if asked, with a fixed unlabeled batch."""
    import json

    import nnunet_semisup.trainers as trainers

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, tiny_dataset.env[key])
    folder = tiny_dataset.preprocessed / "Dataset501_Tiny"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnUNetv2_train's entry point adds this key before building a trainer
    dataset_json = json.loads((folder / "dataset.json").read_text())
    if regions:
        dataset_json["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
        dataset_json["regions_class_order"] = [1, 2]
    if ignore:
        dataset_json["labels"]["ignore"] = 3
    trainer = getattr(trainers, name)(plans, "3d_fullres", fold, dataset_json, torch.device("cpu"))
    trainer.initialize()
    if fresh_start:
        trainer.on_fresh_start()
    generator = torch.Generator().manual_seed(5)
    unlabeled = torch.randn(2, 1, *trainer.configuration_manager.patch_size, generator=generator)
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
    assert {"loss_sup", "loss_unsup", "unsup_weight", "conf_frac"} <= out.keys()
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

    # the per-class curves on a hand-made map: background 1 of 2 confident, class 1 1 of 1, class 2 none of 1
    trainer.confidence_threshold = 0.95
    labels = torch.tensor([0.0, 0.0, 1.0, 2.0]).reshape(1, 1, 4, 1, 1)
    confidence = torch.tensor([0.99, 0.5, 0.96, 0.1]).reshape(1, 1, 4, 1, 1)
    terms = trainer.confidence_terms(labels, confidence)
    background, first, second = trainer.confidence_log_keys
    assert [float(terms[k]) for k in ("conf_frac", background, first, second)] == [0.5, 0.5, 1.0, 0.0]


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


def test_fixmatch_region_based_step_with_ignore_label(tiny_dataset, monkeypatch):
    trainer = _trainer_with_labels(tiny_dataset, monkeypatch, "FixMatchTrainer", regions=True, ignore=True)
    assert trainer.label_manager.has_regions
    assert trainer.confidence_log_keys == ["conf_whole", "conf_core"]
    unlabeled = trainer.next_unlabeled_batch()
    labels, confidence = trainer.teacher_pseudo_labels(unlabeled)
    assert labels.shape[1] == 2 and confidence.shape == labels.shape
    assert ((confidence >= 0.5) & (confidence <= 1)).all()
    trainer.confidence_threshold = 0.0
    out = trainer.train_step(_region_batch(trainer, ignore=True))
    assert torch.isfinite(torch.tensor(float(out["loss"]))) and out["loss_unsup"] > 0
    assert 0 <= out["conf_whole"] <= 1


def _label_batch_with_ignore(trainer) -> dict:
    """Label-based targets 0-2 with a slab of nnU-Net's ignore label 3, at every deep-supervision scale."""
    patch = list(trainer.configuration_manager.patch_size)
    generator = torch.Generator().manual_seed(0)
    full = torch.randint(0, 3, (2, 1, *patch), generator=generator).float()
    full[:, :, : patch[0] // 2] = 3
    from nnunet_semisup.segmentation_targets import downsample_for_deep_supervision

    targets = downsample_for_deep_supervision(full, trainer._get_deep_supervision_scales())
    return {"data": torch.randn(2, 1, *patch, generator=generator), "target": targets}


# UniMatch's labeled loss is FixMatch's (nnU-Net's own); BCPTrainer starts in its pre-training stage, the variant
# without it in self-training: both of BCP's paste paths meet ignored voxels
@pytest.mark.parametrize("name", ["FixMatchTrainer", "BCPTrainer", "BCPTrainer_NoPretrain"])
def test_every_trainer_steps_with_an_ignore_label(tiny_dataset, monkeypatch, name):
    trainer = _trainer_with_labels(tiny_dataset, monkeypatch, name, regions=False, ignore=True)
    assert trainer.label_manager.ignore_label == 3
    out = trainer.train_step(_label_batch_with_ignore(trainer))
    assert "skipped" not in out and torch.isfinite(torch.tensor(float(out["loss"])))
    assert trainer.global_step == 1


@pytest.mark.parametrize("name", ["UniMatchTrainer", "BCPTrainer_NoPretrain"])
def test_region_based_step(tiny_dataset, monkeypatch, name):
    trainer = _trainer_with_labels(tiny_dataset, monkeypatch, name, regions=True, ignore=True)
    out = trainer.train_step(_region_batch(trainer, ignore=True))
    assert "skipped" not in out and torch.isfinite(torch.tensor(float(out["loss"])))


# ---------------------------------------------------------------------------------------------- UniMatch
def test_unimatch_perturbs_only_the_weak_rows_and_leaves_the_network_stock(
    tiny_dataset, monkeypatch, random_batch
):
    trainer = _build(tiny_dataset, monkeypatch, "UniMatchTrainer")
    student = unwrap_network(trainer.network)
    images = trainer.next_unlabeled_batch()
    with torch.no_grad():
        clean = student(images)[0]
        trainer.skip_dropout.rows = (2, 4)  # the second copy of the batch is perturbed
        both = student(torch.cat([images, images]))[0]
        trainer.skip_dropout.rows = None
        again = student(images)[0]
        teacher = trainer.teacher(images)
    torch.testing.assert_close(both[:2], clean)
    assert not torch.allclose(both[2:], clean)
    torch.testing.assert_close(again, clean)  # inactive outside the step
    torch.testing.assert_close(teacher, clean)  # the teacher (a copy before the hook) never perturbs
    assert not trainer.teacher.encoder._forward_hooks

    trainer.confidence_threshold = 0.0
    out = trainer.train_step(random_batch(trainer))
    assert trainer.skip_dropout.rows is None
    assert out["loss_fp"] > 0 and out["loss_s1"] > 0 and out["loss_s2"] > 0
    torch.testing.assert_close(
        torch.tensor(out["loss_unsup"]),
        torch.tensor(0.25 * (out["loss_s1"] + out["loss_s2"]) + 0.5 * out["loss_fp"]),
    )
    # the checkpoint's network is nnU-Net's: same keys as a freshly built one
    fresh = trainer.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision,
    )
    assert student.state_dict().keys() == fresh.state_dict().keys()
    assert all(p.grad is None for p in trainer.teacher.parameters())


def test_unimatch_without_fp_has_no_hook(tiny_dataset, monkeypatch, random_batch):
    trainer = _build(tiny_dataset, monkeypatch, "UniMatchTrainer_NoFP")
    assert trainer.skip_dropout is None and not unwrap_network(trainer.network).encoder._forward_hooks
    out = trainer.train_step(random_batch(trainer))
    assert out["loss_fp"] == 0.0


# ---------------------------------------------------------------------------------------------- BCP
def test_bcp_pretraining_stage_in_the_schedule_then_self_training(tiny_dataset, monkeypatch, random_batch):
    trainer = _build(tiny_dataset, monkeypatch, "BCPTrainer")
    total = trainer.num_epochs * trainer.num_iterations_per_epoch
    assert trainer.pretraining_iterations == round(total * 2000 / 17000)
    trainer.pretrain_fraction = 1 / total  # one pre-training iteration
    batch = random_batch(trainer)
    out = trainer.train_step(batch)
    assert out["pretraining"] == 1.0 and trainer.global_step == 1
    student = unwrap_network(trainer.network)
    # the teacher is the student during pre-training: self-training starts with both equal
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, student.state_dict()[key]), key
    teacher_before = _snapshot(trainer.teacher)
    out = trainer.train_step(batch)
    assert out["pretraining"] == 0.0 and out["loss_in"] > 0 and out["loss_out"] > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    decay = trainer.ema_decay
    for key, value in trainer.teacher.state_dict().items():
        if value.is_floating_point():
            expected = decay * teacher_before[key] + (1 - decay) * student.state_dict()[key]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_bcp_pretrained_weights_skip_the_stage_and_load_the_whole_network(
    tiny_dataset, monkeypatch, tmp_path
):
    import sys

    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    source = _build(tiny_dataset, monkeypatch, "BCPTrainer")
    with torch.no_grad():
        for p in unwrap_network(source.network).parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "pretrained.pth"
    source.save_checkpoint(str(path))
    pretrained = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]

    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "-pretrained_weights", str(path)])
    trainer = _trainer_with_labels(
        tiny_dataset, monkeypatch, "BCPTrainer", regions=False, ignore=False, fresh_start=False
    )
    # what nnUNetv2_train does after initialize(), before training starts
    load_pretrained_weights(trainer.network, str(path))  # skips the seg_layers
    trainer.on_fresh_start()
    assert trainer.pretrained_from == str(path) and trainer.pretraining_iterations == 0
    assert not trainer.in_pretraining()
    student = unwrap_network(trainer.network).state_dict()
    for key, value in pretrained.items():  # seg_layers included
        assert torch.equal(student[key], value), key
        assert torch.equal(trainer.teacher.state_dict()[key], value), key
    assert trainer.get_semisup_state()["pretrained_from"] == str(path)
