"""WTA trainers end to end through the stock console scripts: pretrain -> fine-tune with nnU-Net's own
``-pretrained_weights`` -> ``nnUNetv2_predict``, and multi-task -> predict -> resume with ``--c`` restoring the WTA
decoders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import load_checkpoint_file

pytestmark = pytest.mark.e2e

SCHEDULE = "epochs=1,iters=2,val_iters=1"


def test_wta_pretrain_then_finetune_then_predict(tiny_dataset):
    run = tiny_dataset
    run.train("WTAPretrainTrainer", "0", SCHEDULE)
    pre_dir = run.output_folder("WTAPretrainTrainer", "0")
    pre = load_checkpoint_file(pre_dir / "checkpoint_final.pth")
    assert pre["semisup_state"]["global_step"] == 2
    assert "wta_decoders" in pre["semisup_state"]
    # validation reports the reconstruction loss, no Dice, no checkpoint_best
    assert math.isfinite(pre["logging"]["val_losses"][0]) and pre["logging"]["val_losses"][0] > 0
    assert pre["logging"]["dice_per_class_or_region"] == [[]]
    assert not (pre_dir / "checkpoint_best.pth").exists()
    assert (pre_dir / "reconstructions.png").stat().st_size > 0
    summary = json.loads((pre_dir / "validation" / "reconstruction_summary.json").read_text())
    assert "unlabeled" in summary["source"] and len(summary["cases"]) == 3  # the 3 unlabeled cases

    run.train(
        "WTAFinetuneTrainer", "0", SCHEDULE, "-pretrained_weights", str(pre_dir / "checkpoint_final.pth")
    )
    ft = load_checkpoint_file(run.output_folder("WTAFinetuneTrainer", "0") / "checkpoint_final.pth")
    phi = ft["semisup_state"]["phi"]
    assert ft["semisup_state"]["pretrained_from"].endswith("checkpoint_final.pth")
    assert 0.5 < phi < 2.0
    weights, pretrained = ft["network_weights"], pre["network_weights"]
    stage_ids = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.stages.")})
    frozen = [k for k in weights if k.startswith("encoder.stages.") and int(k.split(".")[2]) < stage_ids[-2]]
    assert any(".conv." in k for k in frozen) and any(".norm." in k for k in frozen)
    for key in frozen:  # frozen: exactly the transferred weights, convolutions scaled by phi
        if ".conv." in key:
            torch.testing.assert_close(weights[key], pretrained[key] * phi)
        elif ".norm." in key:
            assert torch.equal(weights[key], pretrained[key])
    # the fine-tuned last stage moved (low lr), the decoder trained
    last = [
        k for k in weights if k.startswith(f"encoder.stages.{stage_ids[-1]}.") and k.endswith("conv.weight")
    ]
    assert any(not torch.allclose(weights[k], pretrained[k] * phi) for k in last)
    groups = {g["name"]: g for g in ft["optimizer_state"]["param_groups"]}
    assert groups["encoder_finetuned"]["initial_lr"] == 8e-5 and groups["decoder"]["initial_lr"] == 1e-2

    run.predict("WTAFinetuneTrainer", "pred_wta_finetune")


def test_wta_multitask_predicts_and_resume_restores_decoders(tiny_dataset, monkeypatch):
    run = tiny_dataset
    run.train("WTAMultiTaskTrainer", "0", SCHEDULE)
    out = run.output_folder("WTAMultiTaskTrainer", "0")
    first = load_checkpoint_file(out / "checkpoint_final.pth")
    state = first["semisup_state"]
    assert state["wta_num_levels"] == 2 and state["gamma"]["count"] == 2
    for key in ("loss_sup", "loss_wta", "wta_weight", "loss_wta_level0", "loss_wta_level1"):
        assert len(first["logging"][key]) == 1
    run.predict("WTAMultiTaskTrainer", "pred_wta_multitask")

    trainer = run.build_trainer("WTAMultiTaskTrainer", 0, monkeypatch, "epochs=2,iters=2,val_iters=1")
    trainer.load_checkpoint(str(out / "checkpoint_final.pth"))
    restored = trainer.wta_heads.state_dict()
    assert restored.keys() == state["wta_decoders"].keys()
    assert all(torch.equal(restored[k], v) for k, v in state["wta_decoders"].items())
    assert trainer.gamma_count == 2 and trainer.gamma_seg_sum == state["gamma"]["seg_sum"]

    run.train("WTAMultiTaskTrainer", "0", "epochs=2,iters=2,val_iters=1", "--c")
    second = load_checkpoint_file(out / "checkpoint_final.pth")
    assert second["current_epoch"] == 2 and second["semisup_state"]["global_step"] == 4
    assert second["semisup_state"]["gamma"]["count"] == 4  # calibration went on from the restored sums
    assert second["logging"]["loss_wta"][0] == first["logging"]["loss_wta"][0]
    changed = second["semisup_state"]["wta_decoders"]
    assert any(not torch.equal(changed[k], v) for k, v in state["wta_decoders"].items())
