"""Checks shared by the resume tests (``test_crash_resume.py``, ``test_exact_resume.py``): what a checkpoint must
restore, compared bit for bit; and the method packages that the enumerating tests must each cover."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch


def method_package(trainer_name: str) -> str:
    """The method package under ``nnunet_semisup.trainers`` that exports ``trainer_name`` (``"mean_teacher"``,
    ``"fixmatch"``, ...; ``"shared"`` for ``SemiSupervisedTrainer`` and ``LabeledOnlyTrainer``)."""
    from nnunet_semisup.trainers import METHOD_TRAINERS

    return next((k for k, names in METHOD_TRAINERS.items() if trainer_name in names), "shared")


def method_packages() -> set[str]:
    """Every method package (``trainers/<method>/``) that exports a trainer: a test that picks representatives by
    hand must name one trainer of each, so a new method cannot skip it."""
    from nnunet_semisup.trainers import METHOD_TRAINERS

    return set(METHOD_TRAINERS)


RESUME_FOLD = "3"  # a fold no other test trains through the console scripts

# trainers that need another dataset than Dataset501_Tiny (their subclasses too): (session fixture that builds it,
# dataset)
DATASETS = {
    "SparseMultiPlane2DTrainer": ("sparse_tiny_dataset", "Dataset520_TinySparse"),
    "SelfTrainingMetaTrainer": ("meta_tiny_dataset", "Dataset522_TinySparseMeta"),
}
# entries of semisup_state that a trainer built from scratch does not have: a resumed run must get them from
# the checkpoint (the ramp-up clock global_step is checked for every trainer); a subclass has the entries of its
# nearest listed ancestor
EXTRA_STATE = {
    "MeanTeacherTrainer": ["teacher"],
    # the teacher is the checkpoint's network_weights (checked below), the student is extra state
    "MeanTeacherTrainer_PredictTeacher": ["student"],
    "SECLTrainer": ["projector", "teacher"],
    "DTMLTrainer": ["dist_network"],
    "DualSubnetContrastTrainer": ["subnet_b", "heads"],
    "WTAPretrainTrainer": ["wta_decoders"],
    "WTAFinetuneTrainer": ["phi", "pretrained_from"],
    "WTAMultiTaskTrainer": ["wta_decoders", "gamma"],
    "SparseMultiPlane2DTrainer": [],
    "SelfTrainingMetaTrainer": ["set_generator"],
    # variants without prototype contrast have no projection heads
    "DualSubnetContrastTrainer_NoProto": ["subnet_b"],
    "DualSubnetContrastTrainer_CodeObjective": ["subnet_b"],
}


def _nearest(table: dict, trainer_class: type):
    for cls in trainer_class.__mro__:
        if cls.__name__ in table:
            return table[cls.__name__]
    return None


def dataset_of(trainer_class: type) -> tuple[str, str]:
    """(session fixture, dataset name) a trainer class trains on in the tests."""
    return _nearest(DATASETS, trainer_class) or ("tiny_dataset", "Dataset501_Tiny")


def extra_state_of(trainer_class: type) -> list[str]:
    """The entries of ``semisup_state`` that a resumed trainer of this class must get from its checkpoint."""
    return list(_nearest(EXTRA_STATE, trainer_class) or [])


def load_checkpoint_file(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same(saved, restored, where: str) -> None:
    """``restored`` equals ``saved`` exactly (tensors bit for bit, nested dicts and lists, NaN == NaN)."""
    if torch.is_tensor(saved):
        assert torch.is_tensor(restored) and saved.shape == restored.shape, where
        assert torch.equal(saved.cpu(), restored.cpu()), f"{where} differs from the checkpoint"
    elif isinstance(saved, dict):
        assert isinstance(restored, dict) and saved.keys() == restored.keys(), where
        for key in saved:
            assert_same(saved[key], restored[key], f"{where}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert isinstance(restored, (list, tuple)) and len(saved) == len(restored), where
        for i, (a, b) in enumerate(zip(saved, restored)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(saved, float) and math.isnan(saved):
        assert isinstance(restored, float) and math.isnan(restored), where
    else:
        assert saved == restored, f"{where}: {restored!r} != checkpoint's {saved!r}"


def differs(a, b) -> bool:
    try:
        assert_same(a, b, "")
    except AssertionError:
        return True
    return False


def build_trainer_as_nnunet_train_does(
    run, dataset: str, trainer_name: str, monkeypatch, results: Path, schedule: str
):
    """The trainer ``nnUNetv2_train DATASET 3d_fullres RESUME_FOLD -tr TRAINER`` builds (on CPU, with the tiny
    dataset's folders, results under ``results``)."""
    from nnunetv2.run.run_training import get_trainer_from_args

    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, run.env[key])
    monkeypatch.setenv("nnUNet_results", str(results))  # its log goes there, not into the killed run's folder
    monkeypatch.setenv("nnUNet_semisup_schedule", schedule)
    return get_trainer_from_args(
        dataset, "3d_fullres", int(RESUME_FOLD), trainer_name, device=torch.device("cpu")
    )


def load_and_assert_everything_restored(trainer, path: Path) -> None:
    """Load ``path`` into a newly built ``trainer`` as ``--c`` does: network, optimizer (momentum, per-group lr),
    epoch and every entry of ``semisup_state`` come back exactly as saved, and the method's extra state
    (``EXTRA_STATE``) is one a fresh trainer does not have."""
    from nnunet_semisup.trainers.base import SemiSupervisedTrainer

    if not isinstance(trainer, SemiSupervisedTrainer):
        trainer.load_checkpoint(str(path))  # LabeledOnlyTrainer: nnU-Net's own checkpoint, nothing of ours
        return
    trainer_name = type(trainer).__name__
    saved = load_checkpoint_file(path)
    trainer.initialize()
    fresh = copy.deepcopy(trainer.get_semisup_state())  # state_dicts share storage with the modules
    trainer.load_checkpoint(str(path))  # what --c does (nnU-Net's maybe_load_checkpoint)
    assert trainer.current_epoch == saved["current_epoch"]
    # network_weights: the trained network, or what a variant predicts with (checkpoint_network_weights)
    assert_same(saved["network_weights"], trainer.checkpoint_network_weights(), "network_weights")
    assert_same(saved["optimizer_state"], trainer.optimizer.state_dict(), "optimizer_state")
    assert_same(saved["semisup_state"], trainer.get_semisup_state(), "semisup_state")
    for key in ["global_step", *extra_state_of(type(trainer))]:
        assert key in saved["semisup_state"], key
        assert differs(saved["semisup_state"][key], fresh[key]), f"{key}: a fresh trainer has the same value"
    if trainer_name == "WTAFinetuneTrainer":
        # the frozen encoder stages stay frozen after --c (no gradient, whatever the checkpoint's epoch)
        frozen, finetuned = trainer.encoder_stage_split()
        assert frozen and finetuned
        assert not any(p.requires_grad for m in frozen for p in m.parameters())
        assert all(p.requires_grad for m in finetuned for p in m.parameters())
    if trainer_name == "WTAMultiTaskTrainer":
        # calibration (25 iterations) continues from the restored sums: one per step so far
        assert trainer.gamma_count == saved["semisup_state"]["global_step"]
    if trainer_name == "SelfTrainingMetaTrainer":
        assert trainer.stage == saved["semisup_state"]["stage"]


def assert_finetuning_unfreezes_on_schedule(trainer) -> None:
    """A resumed WTAFinetuneTrainer still unfreezes its frozen encoder stages at ``unfreeze_epoch`` (this changes
    the trainer: call it last)."""
    frozen, _ = trainer.encoder_stage_split()
    trainer.unfreeze_epoch = trainer.current_epoch
    trainer.on_train_epoch_start()
    assert all(p.requires_grad for m in frozen for p in m.parameters())


def module_states(trainer) -> dict:
    """Every module of the trainer (network, teachers, heads, ...), its optimizer and its semisup_state."""
    from nnunet_semisup.trainers.base import unwrap_network

    modules = {
        name: unwrap_network(module).state_dict()
        for name, module in vars(trainer).items()
        if isinstance(module, torch.nn.Module) and any(True for _ in module.state_dict())
    }
    return copy.deepcopy(
        {
            "modules": modules,
            "optimizer": trainer.optimizer.state_dict(),
            "semisup": trainer.get_semisup_state() if hasattr(trainer, "get_semisup_state") else {},
        }
    )
