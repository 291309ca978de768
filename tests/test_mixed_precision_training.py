"""nnU-Net's GPU training path, mixed precision (autocast + GradScaler), run on CPU for every trainer of the
package: ``cpu_mixed_precision`` sends a CPU run through the same code as CUDA AMP, with bfloat16 autocast and
``torch.amp.GradScaler("cpu")``. Real training steps in this process on nnU-Net batches of the tiny datasets
(tiny-network plans); the trainers are enumerated from ``nnunet_semisup.trainers.__all__``, so a new trainer is
covered without being listed here. Also: an out-of-memory error in a step names the batch sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nnunet_semisup.trainers as trainers
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network

pytestmark = pytest.mark.e2e  # planned tiny datasets

STEPS = 2
TRAINER_NAMES = sorted(trainers.__all__)
# modules a trainer builds but, by design, never trains or updates: {trainer: {attribute: why}}
NOT_UPDATED = {
    "SECLTrainer_NoContrast": {
        "projector": "contrastive weight 0: no loss reaches the projector",
        "projector_for_training": "the same projector",
        "teacher": "no unlabeled data, no EMA update",
    },
}


def _modules(trainer) -> dict[str, torch.nn.Module]:
    """The trainer's modules that hold parameters (network, teachers, heads, second networks), unwrapped, each
    once (first attribute name wins)."""
    found, seen = {}, set()
    for name, value in vars(trainer).items():
        if isinstance(value, torch.nn.Module):
            module = unwrap_network(value)
            if id(module) not in seen and any(True for _ in module.parameters()):
                seen.add(id(module))
                found[name] = module
    return found


def _snapshot(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def _assert_equal_states(saved, restored, where: str) -> None:
    if torch.is_tensor(saved):
        assert torch.equal(saved.cpu(), restored.cpu()), where
    elif isinstance(saved, dict):
        assert saved.keys() == restored.keys(), where
        for key in saved:
            _assert_equal_states(saved[key], restored[key], f"{where}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(restored), where
        for i, (a, b) in enumerate(zip(saved, restored)):
            _assert_equal_states(a, b, f"{where}[{i}]")
    elif isinstance(saved, float) and math.isnan(saved):
        assert math.isnan(restored), where
    else:
        assert saved == restored, where


def _count_calls(monkeypatch, obj, method: str) -> list[int]:
    calls = [0]
    original = getattr(obj, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, method, counted)
    return calls


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_mixed_precision_training_steps(name, tiny_network_trainer, monkeypatch, tmp_path):
    cls = getattr(trainers, name)
    monkeypatch.setattr(cls, "cpu_mixed_precision", True)
    trainer = tiny_network_trainer(name)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler) and trainer.grad_scaler.is_enabled()

    # autocast is on: the network's convolutions run in bfloat16
    conv_dtypes = []
    network = unwrap_network(trainer.network)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            module.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    modules = _modules(trainer)
    before = _snapshot(modules)
    scaler_updates = _count_calls(monkeypatch, trainer.grad_scaler, "update")
    optimizer_steps = _count_calls(monkeypatch, trainer.optimizer, "step")

    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(STEPS)]

    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}, set(conv_dtypes)
    for out in outputs:
        assert "skipped" not in out
        bad = {k: v for k, v in out.items() if not np.isfinite(np.asarray(v, dtype=float)).all()}
        assert not bad, f"non-finite terms {bad}"
    # one scaler update and one optimizer step per iteration (no step skipped for inf/NaN gradients)
    assert scaler_updates[0] == STEPS and optimizer_steps[0] == STEPS
    assert trainer.grad_scaler.get_scale() > 0
    if isinstance(trainer, SemiSupervisedTrainer):
        assert trainer.global_step == STEPS

    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"] if p.requires_grad}
    exempt = NOT_UPDATED.get(name, {})
    for attribute, module in modules.items():
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                assert value.dtype == torch.float32, f"{attribute}.{key} is {value.dtype} after AMP steps"
        if attribute in exempt:
            assert not _changed(before[attribute], module), f"{attribute}: {exempt[attribute]}"
            continue
        is_trained = any(id(p) in trained for p in module.parameters())
        is_frozen_copy = not any(p.requires_grad for p in module.parameters())  # EMA teacher
        if is_trained or is_frozen_copy:
            assert _changed(before[attribute], module), f"{attribute} did not change in {STEPS} AMP steps"

    trainer.on_validation_epoch_start()
    validation = trainer.validation_step(next(trainer.dataloader_val))
    assert np.isfinite(validation["loss"])

    # checkpoint round trip, grad scaler state included
    path = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(path))
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["grad_scaler_state"] is not None
    restored = tiny_network_trainer(name)
    restored.load_checkpoint(str(path))
    # what a checkpoint holds as network_weights (the EMA teacher for MeanTeacherTrainer_PredictTeacher)
    restored_weights = (
        restored.checkpoint_network_weights()
        if isinstance(restored, SemiSupervisedTrainer)
        else unwrap_network(restored.network).state_dict()
    )
    _assert_equal_states(saved["network_weights"], restored_weights, "network")
    _assert_equal_states(saved["grad_scaler_state"], restored.grad_scaler.state_dict(), "grad_scaler")
    _assert_equal_states(saved["optimizer_state"], restored.optimizer.state_dict(), "optimizer")
    if isinstance(trainer, SemiSupervisedTrainer):
        _assert_equal_states(saved["semisup_state"], restored.get_semisup_state(), "semisup_state")
    trainer.on_train_end()


def test_out_of_memory_in_a_step_names_the_batch_sizes(tiny_network_trainer, monkeypatch):
    trainer = tiny_network_trainer("MeanTeacherTrainer")
    trainer.on_train_start()
    trainer.on_train_epoch_start()

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 80 GiB total)")

    monkeypatch.setattr(trainer, "compute_loss", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError) as raised:
        trainer.train_step(next(trainer.dataloader_train))
    message = str(raised.value)
    assert "MeanTeacherTrainer" in message
    assert f"labeled batch {trainer.batch_size}" in message
    assert f"unlabeled batch {trainer.batch_size} (the labeled batch size)" in message
    assert "nnUNetPlansTinyNet.json" in message and "unlabeled_batch_size" in message
    assert "Tried to allocate 2.00 GiB" in message  # the original figures are kept
    assert raised.value.__suppress_context__  # no second traceback of the bare error

    trainer.unlabeled_batch_size = 1
    with pytest.raises(torch.OutOfMemoryError, match=r"unlabeled batch 1 \(unlabeled_batch_size\)"):
        trainer.train_step(next(trainer.dataloader_train))
    trainer.on_train_end()


def test_out_of_memory_of_the_2d_slice_trainer_names_its_batch_attribute(tiny_network_trainer, monkeypatch):
    trainer = tiny_network_trainer("SparseMultiPlane2DTrainer")
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    monkeypatch.setattr(trainer, "compute_loss", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("")))
    with pytest.raises(torch.OutOfMemoryError) as raised:
        trainer.train_step(next(trainer.dataloader_train))
    message = str(raised.value)
    assert f"labeled batch {trainer.batch_size_2d}" in message and "batch_size_2d" in message
    assert "no unlabeled batch" in message
    trainer.on_train_end()
