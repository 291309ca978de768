"""Size of what each method adds to nnU-Net's segmentation network (teachers, heads, decoders, second networks),
on plans like nnU-Net's residual-encoder presets (``nnUNetPlannerResEncM/L/XL``: ``ResidualEncoderUNet``, 32 to 320
features, 1, 3, 4, 6, 6, 6 residual blocks per stage). Parameter counts do not depend on the patch size (no trainer
has a fully connected layer whose size does), so the tiny dataset's plans only get the presets' architecture: the
trainers are built and initialized in this process, not trained. Every trainer must also log the count at start
(``extra modules: N parameters (x.x % of the segmentation network ...)``).

The bound per trainer: the network copies the method holds by definition (EMA teachers, second networks) plus
heads of at most a quarter of the network; WTA decoders at most the encoder (each decoder at most the weights of
the encoder stage it decodes, Sital et al. Sec. 3.3-3.4; see trainers/wta/autoencoder.py).

By default one trainer per method family; every trainer of ``nnunet_semisup.trainers.__all__`` under
``pytest -m slow``."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import method_package, method_packages

import nnunet_semisup.trainers as trainers
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network

pytestmark = pytest.mark.e2e  # the planned tiny dataset

RESENC_PLANS = "nnUNetResEncLikePlans"
# the presets' encoder (features capped at 320 in 3D, blocks per stage) at 6 stages, e.g. a 128-192 voxel patch
RESENC_ARCH = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
# network copies each method holds by definition; every other trainer: none
NETWORK_COPIES = {
    "MeanTeacher": 1.0,  # EMA teacher
    "FixMatch": 1.0,  # EMA teacher (the variants without one hold less)
    "BCP": 1.0,  # EMA teacher
    "SECL": 1.0,  # EMA teacher of the encoder (+ decoder with teacher pseudo-labels)
    "DualSubnet": 1.0,  # the second sub-network
    "DTML": 1.0,  # the signed-distance network M_d beside the segmentation network M_s
    "UniMatch": 1.0,  # FixMatch's EMA teacher
}
HEADS = 0.25  # extra heads: at most a quarter of the network
REPRESENTATIVES = [
    "MeanTeacherTrainer",
    "SECLTrainer",
    "DTMLTrainer",
    "DualSubnetContrastTrainer",
    "WTAPretrainTrainer",
    "WTAMultiTaskTrainer",
    "WTAFinetuneTrainer",
    "FixMatchTrainer",
    "UniMatchTrainer",
    "BCPTrainer",
]
CASES = [
    pytest.param(name, marks=() if name in REPRESENTATIVES else pytest.mark.slow)
    for name in sorted(trainers.__all__)
    # the sparsification cascade's trainers replace the network (a 2D one applied slice-wise, the meta model) and
    # add no modules; they train on datasets of their own (sparse labels, pseudo-label channels)
    if name != "SemiSupervisedTrainer" and not name.startswith(("SparseMultiPlane2D", "SelfTrainingMeta"))
]


@pytest.fixture(scope="module")
def resenc_plans(tiny_dataset):
    """Plans ``nnUNetResEncLikePlans`` of Dataset501_Tiny: its 3d_fullres with the presets' architecture (same
    data identifier: the preprocessing is nnU-Net's default in both)."""
    base = tiny_dataset.preprocessed / "Dataset501_Tiny"
    target = base / f"{RESENC_PLANS}.json"
    if not target.is_file():
        plans = json.loads((base / "nnUNetPlans.json").read_text())
        plans["plans_name"] = RESENC_PLANS
        architecture = plans["configurations"]["3d_fullres"]["architecture"]
        architecture["network_class_name"] = (
            "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        )
        architecture["arch_kwargs"] = dict(RESENC_ARCH)
        architecture["_kw_requires_import"] = ["conv_op", "norm_op", "dropout_op", "nonlin"]
        target.write_text(json.dumps(plans, indent=2))
    return tiny_dataset


def _copies(name: str) -> float:
    return next((c for family, c in NETWORK_COPIES.items() if name.startswith(family)), 0.0)


@pytest.mark.parametrize("name", CASES)
def test_extra_parameters_are_bounded_on_resenc_plans(name, resenc_plans, monkeypatch, tmp_path):
    from nnunetv2.run.run_training import get_trainer_from_args

    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, resenc_plans.env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = get_trainer_from_args("501", "3d_fullres", 0, name, RESENC_PLANS, device=torch.device("cpu"))
    trainer.initialize()
    network = unwrap_network(trainer.network)
    assert type(network).__name__ == "ResidualEncoderUNet"
    if not isinstance(trainer, SemiSupervisedTrainer):
        return
    extra, total = trainer.extra_parameter_count()
    assert total == sum(p.numel() for p in network.parameters())
    print(f"{name}: extra {extra:,} = {extra / total:.3f} x the network ({total:,})")
    if name.startswith("WTA"):
        encoder = sum(p.numel() for p in network.encoder.parameters())
        assert extra <= encoder, f"WTA decoders {extra:,} > encoder {encoder:,}"
    else:
        assert extra <= (_copies(name) + HEADS) * total, f"{extra / total:.2f} x the network"
    # the count is logged once at start
    logged = []
    monkeypatch.setattr(
        trainer, "print_to_log_file", lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
    )
    trainer.log_extra_parameters()
    if extra:
        assert any(
            f"extra modules: {extra:,} parameters" in line and "% of the segmentation network" in line
            for line in logged
        ), logged


def test_every_method_package_has_a_representative():
    # the sparsification cascade adds no modules (see CASES)
    assert method_packages() - {"sparsification"} <= {method_package(n) for n in REPRESENTATIVES}
