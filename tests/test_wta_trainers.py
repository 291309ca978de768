"""WTA trainers in-process on the tiny dataset: pretraining lowers the reconstruction loss, the fine-tuning
trainer receives the pretrained encoder scaled by phi and freezes/unfreezes stages on schedule, and the
multi-task trainer balances its two terms with gamma."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunet_semisup.trainers.wta.autoencoder import encoder_conv_parameters


def _image_patches(trainer, n: int = 2) -> torch.Tensor:
    """(n, C, *patch) centre patches of the first preprocessed labeled cases."""
    dataset = nnUNetDatasetBlosc2(trainer.preprocessed_dataset_folder)
    keys = sorted(dataset.identifiers)[:n]
    return torch.stack(
        [torch.from_numpy(trainer._centre_patch(np.asarray(dataset.load_case(k)[0]))) for k in keys]
    )


@pytest.fixture
def pretrained_checkpoint(tiny_dataset, monkeypatch, tmp_path):
    """A WTAPretrainTrainer (fold 1) trained 30 steps in-process on fixed real patches; returns (checkpoint path,
    the losses of every step)."""
    torch.manual_seed(0)
    trainer = tiny_dataset.build_trainer("WTAPretrainTrainer", 1, monkeypatch)
    trainer.initialize()
    patches = _image_patches(trainer, 4)
    trainer.next_unlabeled_batch = lambda: patches[2:]
    batch = {"data": patches[:2], "target": torch.zeros(2, 1, *patches.shape[2:])}  # never read
    trainer.network.train()
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(30)]
    path = tmp_path / "pretrained.pth"
    trainer.save_checkpoint(str(path))
    return path, losses, trainer


def test_pretraining_lowers_reconstruction_loss(pretrained_checkpoint):
    path, losses, trainer = pretrained_checkpoint
    assert all(np.isfinite(losses))
    # nnU-Net's SGD (lr 1e-2) on a mean over all voxels of which few are painted by winners: slow but steady
    assert np.mean(losses[-5:]) < 0.99 * np.mean(losses[:3]), losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 25, losses
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    # the whole planned segmentation network (what -pretrained_weights requires) + the WTA decoders beside it
    assert ckpt["network_weights"].keys() == trainer.network.state_dict().keys()
    state = ckpt["semisup_state"]
    assert state["wta_k"] == 5 and state["wta_num_levels"] == len(trainer.network.encoder.stages)
    assert len([k for k in state["wta_decoders"] if k.endswith("conv.weight")]) == state["wta_num_levels"]


def test_finetune_gets_pretrained_encoder_scaled_by_phi_and_freezes(
    tiny_dataset, monkeypatch, pretrained_checkpoint, random_batch
):
    path, _, _ = pretrained_checkpoint
    pretrained = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
    trainer = tiny_dataset.build_trainer("WTAFinetuneTrainer", 1, monkeypatch)
    trainer.initialize()
    fresh = {k: v.detach().clone() for k, v in encoder_conv_parameters(trainer.network.encoder).items()}
    load_pretrained_weights(trainer.network, str(path))  # what nnUNetv2_train -pretrained_weights does
    trainer.on_fresh_start()

    weights = [k for k in fresh if k.endswith(".weight")]
    fresh_norm = torch.sqrt(sum(fresh[k].double().pow(2).sum() for k in weights))
    pre_norm = torch.sqrt(sum(pretrained[f"encoder.{k}"].double().pow(2).sum() for k in weights))
    phi = float(fresh_norm / pre_norm)
    assert trainer.phi_applied == pytest.approx(phi, rel=1e-6)
    assert phi != pytest.approx(1.0, abs=1e-4)  # 30 pretraining steps moved the weights
    state = trainer.network.state_dict()
    for key in fresh:  # conv weights and biases scaled by phi
        torch.testing.assert_close(state[f"encoder.{key}"], pretrained[f"encoder.{key}"] * phi)
    norm_keys = [k for k in pretrained if k.startswith("encoder.") and ".norm." in k]
    assert norm_keys
    for key in norm_keys:  # normalization parameters transferred as they are
        assert torch.equal(state[key], pretrained[key])

    # low-lr group for the last two stages, frozen stages without gradient, decoder at nnU-Net's lr
    stages = trainer.network.encoder.stages
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names == ["decoder", "encoder_finetuned", "encoder_frozen"]
    trainer.on_train_epoch_start()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"decoder": 1e-2, "encoder_finetuned": 8e-5, "encoder_frozen": 8e-5}
    frozen_before = [p.detach().clone() for p in stages[0].parameters()]
    trainer.train_step(random_batch(trainer))
    assert all(p.grad is None for s in stages[:-2] for p in s.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stages[-1].parameters() if p.ndim > 1)
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, stages[0].parameters()))

    # unfreeze as scheduled: from epoch unfreeze_epoch on, the frozen stages train with the low lr
    trainer.unfreeze_epoch = 1
    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    trainer.train_step(random_batch(trainer))
    assert all(p.grad is not None for s in stages[:-2] for p in s.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(frozen_before, stages[0].parameters()))
    assert trainer.get_semisup_state()["phi"] == trainer.phi_applied


def test_finetune_refuses_missing_or_mismatching_pretrained_weights(
    tiny_dataset, monkeypatch, pretrained_checkpoint, tmp_path
):
    trainer = tiny_dataset.build_trainer("WTAFinetuneTrainer", 1, monkeypatch)
    trainer.initialize()
    with pytest.raises(RuntimeError, match=r"-pretrained_weights .*checkpoint_final\.pth"):
        trainer.on_fresh_start()

    path, _, _ = pretrained_checkpoint
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["spacing"] = [9.0, 9.0, 9.0]
    other = tmp_path / "other_plans.pth"
    torch.save(ckpt, other)
    with pytest.raises(RuntimeError, match=r"differ from this run's .* in spacing"):
        trainer.check_pretrained_plans(str(other))
    trainer.check_pretrained_plans(str(path))  # same plans: fine


@pytest.mark.parametrize(
    ("trainer_name", "n_finetuned"),
    [("WTAFinetuneTrainer_FreezeAll", 0), ("WTAFinetuneTrainer_FinetuneLast", 1),
     ("WTAFinetuneTrainer_FinetuneAll", "all")],
)  # fmt: skip
def test_freeze_scheme_variants(tiny_dataset, monkeypatch, trainer_name, n_finetuned):
    trainer = tiny_dataset.build_trainer(trainer_name, 1, monkeypatch)
    trainer.initialize()
    stages = list(trainer.network.encoder.stages)
    n_frozen = 0 if n_finetuned == "all" else len(stages) - n_finetuned
    for i, stage in enumerate(stages):
        assert all(p.requires_grad == (i >= n_frozen) for p in stage.parameters()), (trainer_name, i)


def test_multitask_gamma_balances_the_two_terms(tiny_dataset, monkeypatch, random_batch):
    torch.manual_seed(0)
    trainer = tiny_dataset.build_trainer("WTAMultiTaskTrainer", 1, monkeypatch)
    trainer.gamma_calibration_iterations = 3
    trainer.initialize()
    unlabeled = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    trainer.next_unlabeled_batch = lambda: unlabeled
    batch = random_batch(trainer)
    outputs = [trainer.train_step(batch) for _ in range(4)]
    seg = [abs(o["loss_sup"]) for o in outputs[:3]]
    wta = [o["loss_wta"] for o in outputs[:3]]
    # running ratio of the means while calibrating, then fixed at the ratio over the first 3 iterations
    assert outputs[0]["wta_weight"] == pytest.approx(seg[0] / wta[0], rel=1e-5)
    assert outputs[1]["wta_weight"] == pytest.approx(sum(seg[:2]) / sum(wta[:2]), rel=1e-5)
    assert trainer.gamma_value == pytest.approx(sum(seg) / sum(wta), rel=1e-5)
    assert outputs[3]["wta_weight"] == trainer.gamma_value
    # the balanced terms are of the same order of magnitude, and the loss is their weighted sum
    gamma_wta = outputs[3]["wta_weight"] * outputs[3]["loss_wta"]
    assert 0.1 < gamma_wta / abs(outputs[3]["loss_sup"]) < 10
    assert float(outputs[3]["loss"]) == pytest.approx(outputs[3]["loss_sup"] + gamma_wta, rel=1e-4)
    # WTA on the first two levels; the state for --c carries gamma
    assert trainer.wta_heads.num_levels == 2
    state = trainer.get_semisup_state()
    assert state["gamma"]["value"] == trainer.gamma_value and state["gamma"]["count"] == 3

    # a fixed gamma (class attribute) wins over calibration, also over a restored state
    trainer.gamma = 0.5
    trainer.set_semisup_state(state)
    assert trainer.current_gamma(3.0, 1.0) == 0.5 and trainer.gamma_count == 3


def test_centre_gaussian_pretraining_draws_labeled_images_with_the_biased_loader(tiny_dataset, monkeypatch):
    from nnunet_semisup.data.loader import CentreGaussianDataLoader, UnlabeledDataLoader

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # single-threaded loaders in this process
    trainer = tiny_dataset.build_trainer("WTAPretrainTrainer_CentreGaussian", 1, monkeypatch)
    trainer.initialize()
    assert trainer.unlabeled_loader_class is CentreGaussianDataLoader
    assert tiny_dataset.build_trainer("WTAPretrainTrainer", 1, monkeypatch).unlabeled_loader_class is (
        UnlabeledDataLoader
    )
    trainer.prepare_unlabeled_data()
    trainer.get_dataloaders()
    assert isinstance(trainer.dataloader_labeled_images.data_loader, CentreGaussianDataLoader)
    assert isinstance(trainer.dataloader_unlabeled.data_loader, CentreGaussianDataLoader)
    train_keys, _ = trainer.do_split()
    assert sorted(trainer.dataloader_labeled_images.data_loader._data.identifiers) == sorted(train_keys)
    patch = tuple(trainer.configuration_manager.patch_size)
    loss, terms = trainer.compute_loss(None, None, trainer.next_unlabeled_batch())
    assert torch.isfinite(loss) and set(terms) == {
        f"loss_wta_level{i}" for i in range(trainer.num_wta_levels)
    }
    assert next(trainer.dataloader_labeled_images)["data"].shape[2:] == patch
