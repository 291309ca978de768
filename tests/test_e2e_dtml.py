"""DTMLTrainer end to end through the stock console scripts: train, predict (M_s with ``nnUNetv2_predict``),
and resume with ``--c`` restoring both networks and both parameter groups' optimizer state exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, load_checkpoint_file

pytestmark = pytest.mark.e2e


def test_dtml_trains_and_predicts_with_stock_console_scripts(tiny_dataset):
    run = tiny_dataset
    run.train("DTMLTrainer", "0", "epochs=1,iters=2,val_iters=1")
    out = run.output_folder("DTMLTrainer", "0")

    ckpt = load_checkpoint_file(out / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "DTMLTrainer"
    assert ckpt["current_epoch"] == 1
    state = ckpt["semisup_state"]
    assert state["global_step"] == 2
    assert state["sdm_k"] == 1500.0
    # network_weights is M_s (stock keys, 3 output channels: background + 2 classes); M_d is beside it with
    # one tanh channel per foreground class
    seg, dist = ckpt["network_weights"], state["dist_network"]
    assert seg["decoder.seg_layers.0.weight"].shape[0] == 3
    assert dist["backbone.decoder.seg_layers.0.weight"].shape[0] == 2
    assert all(k.startswith("backbone.") for k in dist)
    # one optimizer, one parameter group per network, momentum kept for both
    groups = ckpt["optimizer_state"]["param_groups"]
    assert len(groups) == 2
    # same planned architecture; M_d's unused lower-resolution seg layers (no deep supervision) are frozen
    assert 0 < len(groups[1]["params"]) < len(groups[0]["params"])
    assert all(i in ckpt["optimizer_state"]["state"] for i in groups[1]["params"])
    for key in ("loss_sup", "loss_dist", "loss_cons", "cons_weight"):
        assert len(ckpt["logging"][key]) == 1
    assert 0 < ckpt["logging"]["loss_dist"][0] <= 1  # soft Dice of M_d's mask

    pred = run.predict("DTMLTrainer", "pred_dtml")
    labels_ts = sorted(p.name for p in (run.raw / "Dataset501_Tiny" / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == labels_ts

    # the average of M_s and M_d through nnU-Net's predictor (M_d alone: same route, unit-tested)
    pred_avg = run.root / "pred_dtml_average"
    run(
        "nnunet-semisup",
        "predict-dtml",
        "-i",
        str(run.raw / "Dataset501_Tiny" / "imagesTs"),
        "-o",
        str(pred_avg),
        "-d",
        "501",
        "-c",
        "3d_fullres",
        "-f",
        "0",
        "--source",
        "average",
        "-device",
        "cpu",
        "--disable_tta",
        "-npp",
        "1",
        "-nps",
        "1",
    )
    assert sorted(p.name for p in pred_avg.glob("*.nii.gz")) == labels_ts
    import SimpleITK as sitk

    for name in labels_ts:
        values = set(sitk.GetArrayFromImage(sitk.ReadImage(str(pred_avg / name))).ravel().tolist())
        assert values <= {0, 1, 2}


def test_dtml_resume_restores_both_networks_and_optimizer_exactly(tiny_dataset, monkeypatch):
    run = tiny_dataset
    run.train("DTMLTrainer", "2", "epochs=1,iters=2,val_iters=1")
    out = run.output_folder("DTMLTrainer", "2")
    first = load_checkpoint_file(out / "checkpoint_final.pth")

    trainer = run.build_trainer("DTMLTrainer", 2, monkeypatch, "epochs=2,iters=2,val_iters=1")
    trainer.load_checkpoint(str(out / "checkpoint_final.pth"))
    assert trainer.global_step == 2 and trainer._semisup_state_restored
    for name, module, saved in (
        ("M_s", trainer.network, first["network_weights"]),
        ("M_d", trainer.dist_network, first["semisup_state"]["dist_network"]),
    ):
        assert_same(saved, module.state_dict(), name)
    # the restored optimizer steps M_d's parameters with M_d's saved momentum
    optimizer_state = trainer.optimizer.state_dict()
    dist_params = [p for p in trainer.dist_network.parameters() if p.requires_grad]
    assert [id(p) for p in trainer.optimizer.param_groups[1]["params"]] == [id(p) for p in dist_params]
    for index in optimizer_state["param_groups"][1]["params"]:
        assert torch.equal(
            optimizer_state["state"][index]["momentum_buffer"],
            first["optimizer_state"]["state"][index]["momentum_buffer"],
        )

    # the consistency term trains both networks (nothing detached on either side)
    torch.manual_seed(0)
    images = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    seg_logits = trainer.network(images)[0]
    loss = trainer.consistency_loss(
        trainer.foreground_probabilities(seg_logits), trainer.dist_network(images)
    )
    loss.backward()
    for name, module in (("M_s", trainer.network), ("M_d", trainer.dist_network)):
        assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0, name

    run.train("DTMLTrainer", "2", "epochs=2,iters=2,val_iters=1", "--c")
    second = load_checkpoint_file(out / "checkpoint_final.pth")
    assert second["current_epoch"] == 2
    assert second["semisup_state"]["global_step"] == 4
    assert second["logging"]["loss_cons"][0] == first["logging"]["loss_cons"][0]
    assert len(second["logging"]["loss_cons"]) == 2
    # M_d kept training from its restored weights
    changed = second["semisup_state"]["dist_network"]
    assert any(not torch.equal(changed[k], v) for k, v in first["semisup_state"]["dist_network"].items())
