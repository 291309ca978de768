"""DualSubnetContrastTrainer end to end through the stock console scripts (train, ``nnUNetv2_predict`` with
subnet A, ``predict-dual-subnet`` with B and with both), resume with ``--c`` restoring both subnets, the heads and
the optimizer exactly, and in-process checks of the pseudo-label source and of the ablations."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, load_checkpoint_file

import nnunet_semisup.trainers.dual_subnet.trainer as dual_subnet_module

pytestmark = pytest.mark.e2e

SCHEDULE = "epochs=1,iters=2,val_iters=1"


def test_dual_subnet_trains_and_predicts_with_stock_console_scripts(tiny_dataset):
    run = tiny_dataset
    proc = run.train("DualSubnetContrastTrainer", "0", SCHEDULE)
    assert "subnet B dynamic_network_architectures.architectures.unet.ResidualEncoderUNet" in proc.stdout
    out = run.output_folder("DualSubnetContrastTrainer", "0")

    ckpt = load_checkpoint_file(out / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "DualSubnetContrastTrainer"
    state = ckpt["semisup_state"]
    assert state["global_step"] == 2
    # network_weights is subnet A, nnU-Net's planned plain U-Net (3 outputs: background + 2 classes); subnet B is
    # the residual-encoder U-Net beside it
    weights_a, weights_b = ckpt["network_weights"], state["subnet_b"]
    assert weights_a["decoder.seg_layers.0.weight"].shape[0] == 3
    assert weights_b["decoder.seg_layers.0.weight"].shape[0] == 3
    assert any(k.startswith("encoder.stem.") for k in weights_b)
    assert not any(k.startswith("encoder.stem.") for k in weights_a)
    assert state["subnet_b_architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert {k.split(".")[0] for k in state["heads"]} == {"a", "b"}
    # one optimizer: subnet A, subnet B, the two heads; momentum kept for every parameter
    groups = ckpt["optimizer_state"]["param_groups"]
    assert len(groups) == 3
    assert all(len(g["params"]) > 0 for g in groups)
    momentum = ckpt["optimizer_state"]["state"]
    assert all(i in momentum for i in groups[2]["params"])  # heads
    # every subnet parameter but each subnet's lowest-resolution seg layer (weight 0 in nnU-Net's deep
    # supervision, so never a gradient) has momentum
    assert sum(i not in momentum for g in groups[:2] for i in g["params"]) == 4
    for key in ("loss_sup_a", "loss_sup_b", "loss_unsup", "loss_reg", "loss_contrast", "source_b"):
        assert len(ckpt["logging"][key]) == 1
    assert 0.0 <= ckpt["logging"]["source_b"][0] <= 1.0
    assert ckpt["logging"]["loss_contrast"][0] > 0

    # subnet A through nnUNetv2_predict; B and the mean of both through predict-dual-subnet
    run.predict("DualSubnetContrastTrainer", "pred_dsc")
    labels_ts = sorted(p.name for p in (run.raw / "Dataset501_Tiny" / "labelsTs").glob("*.nii.gz"))
    import SimpleITK as sitk

    for source in ("b", "average"):
        pred = run.root / f"pred_dsc_{source}"
        run(
            "nnunet-semisup", "predict-dual-subnet", "-i", str(run.raw / "Dataset501_Tiny" / "imagesTs"),
            "-o", str(pred), "-d", "501", "-c", "3d_fullres", "-f", "0", "--source", source, "-device", "cpu",
            "--disable_tta", "-npp", "1", "-nps", "1",
        )  # fmt: skip
        assert sorted(p.name for p in pred.glob("*.nii.gz")) == labels_ts
        for name in labels_ts:
            values = set(sitk.GetArrayFromImage(sitk.ReadImage(str(pred / name))).ravel().tolist())
            assert values <= {0, 1, 2}

    # a model without subnet B is refused with a clear message (a copy of this model without semisup_state)
    import shutil

    stripped = out.parent.parent / "DualSubnetContrastTrainer_NoReg__nnUNetPlans__3d_fullres"
    shutil.copytree(out.parent, stripped, dirs_exist_ok=True)
    checkpoint = load_checkpoint_file(stripped / "fold_0" / "checkpoint_final.pth")
    del checkpoint["semisup_state"]
    torch.save(checkpoint, stripped / "fold_0" / "checkpoint_final.pth")
    refused = run(
        "nnunet-semisup", "predict-dual-subnet", "-i", str(run.raw / "Dataset501_Tiny" / "imagesTs"),
        "-o", str(run.root / "pred_refused"), "-d", "501", "-c", "3d_fullres", "-tr",
        "DualSubnetContrastTrainer_NoReg", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "has no subnet B" in refused.stderr and "Traceback" not in refused.stderr
    assert not (run.root / "pred_refused").exists() or not any((run.root / "pred_refused").glob("*.nii.gz"))
    shutil.rmtree(stripped)


def test_dual_subnet_resume_restores_both_subnets_heads_and_optimizer_exactly(tiny_dataset, monkeypatch):
    run = tiny_dataset
    run.train("DualSubnetContrastTrainer", "2", SCHEDULE)
    out = run.output_folder("DualSubnetContrastTrainer", "2")
    first = load_checkpoint_file(out / "checkpoint_final.pth")

    trainer = run.build_trainer("DualSubnetContrastTrainer", 2, monkeypatch, "epochs=2,iters=2,val_iters=1")
    trainer.load_checkpoint(str(out / "checkpoint_final.pth"))
    assert trainer.global_step == 2 and trainer._semisup_state_restored
    for name, module, saved in (
        ("A", trainer.network, first["network_weights"]),
        ("B", trainer.subnet_b, first["semisup_state"]["subnet_b"]),
        ("heads", trainer.heads, first["semisup_state"]["heads"]),
    ):
        assert_same(saved, module.state_dict(), name)
    # the restored optimizer steps subnet B's parameters with B's saved momentum
    assert [id(p) for p in trainer.optimizer.param_groups[1]["params"]] == [
        id(p) for p in trainer.subnet_b.parameters()
    ]
    optimizer_state = trainer.optimizer.state_dict()
    saved = first["optimizer_state"]["state"]
    for group in (1, 2):
        indices = [i for i in optimizer_state["param_groups"][group]["params"] if i in saved]
        assert len(indices) >= len(optimizer_state["param_groups"][group]["params"]) - 2
        for index in indices:
            assert torch.equal(
                optimizer_state["state"][index]["momentum_buffer"], saved[index]["momentum_buffer"]
            )

    run.train("DualSubnetContrastTrainer", "2", "epochs=2,iters=2,val_iters=1", "--c")
    second = load_checkpoint_file(out / "checkpoint_final.pth")
    assert second["current_epoch"] == 2
    assert second["semisup_state"]["global_step"] == 4
    assert second["logging"]["loss_sup_b"][0] == first["logging"]["loss_sup_b"][0]
    assert len(second["logging"]["loss_sup_b"]) == 2
    changed = second["semisup_state"]["subnet_b"]
    assert any(not torch.equal(changed[k], v) for k, v in first["semisup_state"]["subnet_b"].items())


def _in_process(run, name, monkeypatch, fold=3):
    trainer = run.build_trainer(name, fold, monkeypatch)
    trainer.initialize()
    unlabeled = torch.randn(
        2, 1, *trainer.configuration_manager.patch_size, generator=torch.Generator().manual_seed(1)
    )
    trainer.next_unlabeled_batch = lambda: unlabeled
    trainer.network.train()
    trainer.subnet_b.train()
    return trainer, unlabeled


@pytest.mark.parametrize("lower", ["a", "b"])
def test_pseudo_labels_come_from_the_subnet_with_the_lower_supervised_loss(
    tiny_dataset, monkeypatch, random_batch, lower
):
    trainer, unlabeled = _in_process(tiny_dataset, "DualSubnetContrastTrainer", monkeypatch)
    batch = random_batch(trainer)
    # nnU-Net's loss as built, scaled so that the chosen subnet has the lower L_s (A is evaluated first)
    loss, calls = trainer.loss, []

    def scaled_loss(output, target):
        calls.append(len(calls))
        factor = 0.1 if "ab"[len(calls) - 1] == lower else 10.0
        return factor * loss(output, target)

    trainer.loss = scaled_loss
    seen = []
    original = dual_subnet_module.filtered_pseudo_labels

    def spy(probabilities, *args):
        seen.append(probabilities.clone())
        return original(probabilities, *args)

    monkeypatch.setattr(dual_subnet_module, "filtered_pseudo_labels", spy)
    _, terms = trainer.compute_loss(batch["data"], batch["target"], unlabeled)
    assert terms["source_b"] == float(lower == "b")
    labelling = trainer.network if lower == "a" else trainer.subnet_b
    with torch.no_grad():
        expected = torch.softmax(labelling(unlabeled)[0].float(), 1)
    assert torch.allclose(seen[0], expected, atol=1e-5)


def test_ablations_switch_off_their_term_and_still_train(tiny_dataset, monkeypatch, random_batch):
    for name, groups in (("DualSubnetContrastTrainer_NoReg", 3), ("DualSubnetContrastTrainer_NoProto", 2)):
        trainer, _ = _in_process(tiny_dataset, name, monkeypatch)
        assert len(trainer.optimizer.param_groups) == groups
        before = [p.detach().clone() for p in trainer.subnet_b.parameters()]
        result = trainer.train_step(random_batch(trainer))
        assert torch.isfinite(torch.as_tensor(result["loss"]))
        if name.endswith("NoReg"):
            assert result["loss_reg"] == 0.0 and result["loss_contrast"] > 0
        else:
            assert trainer.heads is None and result["loss_contrast"] == 0.0
            assert "heads" not in trainer.get_semisup_state()
        assert any(not torch.equal(b, p) for b, p in zip(before, trainer.subnet_b.parameters())), name


@pytest.mark.parametrize(
    "name", ["DualSubnetContrastTrainer_CodeObjective", "DualSubnetContrastTrainer_TwoSupervised"]
)
def test_code_objective_trains_both_subnets_on_labeled_patches_only(
    tiny_dataset, monkeypatch, random_batch, name
):
    trainer, _ = _in_process(tiny_dataset, name, monkeypatch)
    assert trainer.mistake_weight == (0.0 if name.endswith("TwoSupervised") else 0.5)
    assert len(trainer.optimizer.param_groups) == 2 and trainer.heads is None
    trainer.next_unlabeled_batch = lambda: pytest.fail("the code objective must not draw unlabeled patches")
    before = [[p.detach().clone() for p in net.parameters()] for net in (trainer.network, trainer.subnet_b)]
    result = trainer.train_step(random_batch(trainer))
    assert set(trainer.semisup_log_keys) <= set(result)
    assert 0.0 <= result["m_diff_fraction"] <= 1.0
    assert result["loss_mistake_a"] >= 0.0 and result["loss_mistake_b"] >= 0.0
    for old, net in zip(before, (trainer.network, trainer.subnet_b)):
        assert any(not torch.equal(b, p) for b, p in zip(old, net.parameters()))
