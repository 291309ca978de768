"""Every trainer on every kind of nnU-Net configuration: ``2d``, ``3d_fullres`` and ``3d_lowres`` of a 3D dataset,
and ``2d`` of a native 2D dataset (``.png`` images read by nnU-Net's ``NaturalImage2DIO``, unlabeled images
included), each with nnU-Net's default network (``PlainConvUNet``) and with the ResEnc presets' one
(``ResidualEncoderUNet``). Real training steps in this process on the tiny datasets' tiny-network plans (see ``conftest.py``):
initialization, two optimizer steps, a validation step, the end of training (``checkpoint_final.pth``) and a
trainer's own final validation where it has one. A method that is 3D by definition must refuse a 2D configuration
at construction, with its reason; every other one must train. The tiny 3D images are too small for nnU-Net's
planner to make a ``3d_lowres``: the tiny-network plans add one (spacing x2, with nnU-Net's ``next_stage``).

By default one trainer per method family on every configuration kind; every trainer of
``nnunet_semisup.trainers.__all__`` under ``pytest -m slow``. The table in docs/user_guide.md ("Supported
configurations") is what these tests measure."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import method_package, method_packages
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_semisup.trainers as trainers
from nnunet_semisup.trainers.base import SemiSupervisedTrainer

pytestmark = pytest.mark.e2e

STEPS = 2
# (configuration, dataset): None = the trainer's own test dataset (dataset_of_trainer), 3D
NATIVE_2D = ("tiny_2d_dataset", "Dataset530_Tiny2D")
# kind: (configuration, dataset, residual encoder: the ResEnc presets' ResidualEncoderUNet instead of nnU-Net's
# default PlainConvUNet)
KINDS = {
    "2d": ("2d", None, False),
    "3d_fullres": ("3d_fullres", None, False),
    "3d_lowres": ("3d_lowres", None, False),
    "native2d": ("2d", NATIVE_2D, False),
    "resenc-2d": ("2d", None, True),
    "resenc-3d_fullres": ("3d_fullres", None, True),
    "resenc-3d_lowres": ("3d_lowres", None, True),
    "resenc-native2d": ("2d", NATIVE_2D, True),
}
REPRESENTATIVES = [
    "LabeledOnlyTrainer",
    "MeanTeacherTrainer",
    "SECLTrainer",
    "DTMLTrainer",
    "DualSubnetContrastTrainer",
    "WTAPretrainTrainer",
    "WTAMultiTaskTrainer",
    "FixMatchTrainer",
    "UniMatchTrainer",
    "BCPTrainer",
    "SparseMultiPlane2DTrainer",
    "SelfTrainingMetaTrainer",
]
TRAINER_NAMES = sorted(n for n in trainers.__all__ if n != "SemiSupervisedTrainer")


def _default_run(name: str, kind: str) -> bool:
    """The default run: the representatives on 2d, 3d_lowres and the 2D dataset (3d_fullres is trained by every
    trainer in test_mixed_precision_training.py) and ResEnc's 3d_fullres; the 3D-only trainers' refusals, not
    their 3D runs."""
    if name not in REPRESENTATIVES or kind not in ("2d", "3d_lowres", "native2d", "resenc-3d_fullres"):
        return False
    if getattr(getattr(trainers, name), "requires_3d_volumes", ""):
        return kind in ("2d", "native2d")  # their 3D runs need their own datasets, minutes to make
    return True


CASES = [
    pytest.param(name, kind, id=f"{name}-{kind}", marks=() if _default_run(name, kind) else pytest.mark.slow)
    for name in TRAINER_NAMES
    for kind in KINDS
]


def _is_2d(kind: str) -> bool:
    return KINDS[kind][0] == "2d"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_trainer_runs_or_refuses_on_configuration(name, kind, tiny_network_trainer):
    cls = getattr(trainers, name)
    configuration, dataset, residual_encoder = KINDS[kind]
    if _is_2d(kind) and getattr(cls, "requires_3d_volumes", ""):
        # refused at construction, before any data is read: the plain tiny dataset stands in for the trainer's
        # own (sparse-label and meta) datasets, which take minutes to make
        dataset = dataset or ("tiny_dataset", "Dataset501_Tiny")
        with pytest.raises(RuntimeError, match="3D volumes") as refused:
            tiny_network_trainer(name, configuration, dataset, residual_encoder)
        assert name in str(refused.value) and "3d_fullres" in str(refused.value)
        return
    trainer = tiny_network_trainer(name, configuration, dataset, residual_encoder)
    trainer.on_train_start()
    assert len(trainer.configuration_manager.patch_size) == (2 if _is_2d(kind) else 3)
    network_class = "ResidualEncoderUNet" if residual_encoder else "PlainConvUNet"
    assert trainer.configuration_manager.network_arch_class_name.endswith(network_class)
    trainer.on_train_epoch_start()
    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(STEPS)]
    # per-class confident fractions (FixMatch family) are NaN, by definition, for a class absent from the batch
    may_be_nan = set(getattr(trainer, "confidence_log_keys", ()))
    for out in outputs:
        assert "skipped" not in out
        bad = {
            k: v
            for k, v in out.items()
            if k not in may_be_nan and not np.isfinite(np.asarray(v, dtype=float)).all()
        }
        assert not bad, f"non-finite terms {bad}"
    if isinstance(trainer, SemiSupervisedTrainer):
        assert trainer.global_step == STEPS
        if trainer.uses_unlabeled_data:
            assert trainer.unlabeled_case_ids
    trainer.on_train_epoch_end(outputs)
    trainer.on_validation_epoch_start()
    validation = [trainer.validation_step(next(trainer.dataloader_val))]
    assert np.isfinite(validation[0]["loss"])
    trainer.on_validation_epoch_end(validation)
    trainer.on_train_end()
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    if type(trainer).perform_actual_validation is not nnUNetTrainer.perform_actual_validation:
        # the trainer's own final validation (also what --val runs)
        trainer.perform_actual_validation()


def test_every_method_package_has_a_representative():
    assert method_packages() <= {method_package(n) for n in REPRESENTATIVES}
