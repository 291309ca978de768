"""nnU-Net's other GPU default, ``torch.compile`` of the network (``nnUNetTrainer._do_i_compile``, on for CUDA),
forced on for CPU: ``self.network`` is then an ``OptimizedModule``. A few real training steps per trainer check
that everything that runs beside the compiled network (teachers, heads on forward hooks, second networks,
feature taps, encoder-only passes) works with it, that checkpoints carry no ``_orig_mod.`` prefix and load into
nnU-Net's own (uncompiled) predictor.

By default one trainer per method family, compiled with dynamo's ``eager`` backend (graph capture, guards and
the ``OptimizedModule`` wrapper, without code generation, which would take minutes per network on CPU); every
trainer of ``nnunet_semisup.trainers.__all__`` with nnU-Net's own backend (inductor) under ``pytest -m slow``."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

import nnunet_semisup.trainers as trainers
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network

pytestmark = pytest.mark.e2e

STEPS = 2
# one trainer per method package (trainers/<method>/, found from the classes' modules, so a new method cannot
# skip the default run): the package's shortest class name (its main trainer), plus the trainers that run the
# most beside the compiled network: WTAMultiTaskTrainer (the whole network and the WTA decoders in one step
# module) and SparseMultiPlane2DTrainer (the sparsification package's 2D trainer)
EXTRA_REPRESENTATIVES = {"WTAMultiTaskTrainer", "SparseMultiPlane2DTrainer"}


def _representatives() -> list[str]:
    return sorted({"LabeledOnlyTrainer", *trainers.main_trainers(), *EXTRA_REPRESENTATIVES})


REPRESENTATIVES = _representatives()
CASES = [pytest.param(name, "eager", id=f"{name}-eager") for name in REPRESENTATIVES] + [
    pytest.param(name, "inductor", id=f"{name}-inductor", marks=pytest.mark.slow)
    for name in sorted(trainers.__all__)
]


def _state_keys(obj, prefix: str = ""):
    """Every key of every (nested) dict in a checkpoint, with its path."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{prefix}{key}"
            yield from _state_keys(value, f"{prefix}{key}.")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _state_keys(value, f"{prefix}{i}.")


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_compiled_training_steps(name, backend, tiny_network_trainer, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch._dynamo.reset()  # no compiled graphs or cache entries of an earlier test
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    trainer = tiny_network_trainer(name)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    assert isinstance(trainer.network, OptimizedModule)

    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(STEPS)]
    for out in outputs:
        assert "skipped" not in out
        assert all(np.isfinite(np.asarray(v, dtype=float)).all() for v in out.values()), out
    if isinstance(trainer, SemiSupervisedTrainer):
        assert trainer.global_step == STEPS
    if getattr(trainer, "feature_taps", None):  # forward hooks on the compiled network's decoder fed the loss
        assert all(out["loss_contrast"] > 0 for out in outputs)
    trainer.on_validation_epoch_start()
    assert np.isfinite(trainer.validation_step(next(trainer.dataloader_val))["loss"])
    trainer.on_train_end()  # checkpoint_final.pth

    checkpoint = torch.load(
        Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    prefixed = [k for k in _state_keys(checkpoint) if "_orig_mod" in k.split(".") or k.startswith("module.")]
    assert not prefixed, prefixed[:5]

    # nnU-Net's predictor, uncompiled, loads the checkpoint strictly and predicts a case
    monkeypatch.setenv("nnUNet_compile", "f")
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        trainer.output_folder_base, use_folds=(0,), checkpoint_name="checkpoint_final.pth"
    )
    assert not isinstance(predictor.network, OptimizedModule)
    # what the checkpoint holds as network_weights (the EMA teacher for MeanTeacherTrainer_PredictTeacher)
    saved = (
        trainer.checkpoint_network_weights()
        if isinstance(trainer, SemiSupervisedTrainer)
        else unwrap_network(trainer.network).state_dict()
    )
    torch.testing.assert_close(predictor.network.state_dict(), saved, rtol=0, atol=0)
    image = torch.randn(trainer.num_input_channels, 20, 20, 20, generator=torch.Generator().manual_seed(0))
    segmentation = predictor.predict_single_npy_array(image.numpy(), {"spacing": [1.0, 1.0, 1.0]})
    assert segmentation.shape == (20, 20, 20)
