"""Exact resume of every trainer class the package registers (``nnunet_semisup.trainers.__all__``, so a new
trainer cannot skip it): train two steps, save a checkpoint, build a new trainer and load it as ``--c`` does;
every state is restored (:func:`helpers.load_and_assert_everything_restored`), and the next step of the
resumed trainer is bit for bit the next step of the uninterrupted one (same batch, same random numbers): nothing
a step depends on was left out of the checkpoint. In-process, on the tiny datasets, on CPU. Variants that only set
class attributes are marked ``slow`` (``pytest -m slow``)."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
from helpers import (
    RESUME_FOLD,
    assert_finetuning_unfreezes_on_schedule,
    assert_same,
    dataset_of,
    load_and_assert_everything_restored,
    module_states,
)

import nnunet_semisup.trainers as registered

pytestmark = pytest.mark.e2e  # the tiny datasets are planned through nnU-Net's console scripts

SCHEDULE = "epochs=3,iters=3,val_iters=1,save_every=1"


def _defines_code(trainer_class: type) -> bool:
    return any(
        inspect.isfunction(v) or isinstance(v, (property, staticmethod, classmethod))
        for v in vars(trainer_class).values()
    )


# every registered trainer; a variant that only sets class attributes runs its parent's code, so it is marked
# slow (CI time: `pytest -m slow` runs them)
TRAINERS = [
    pytest.param(name, marks=() if _defines_code(getattr(registered, name)) else (pytest.mark.slow,))
    for name in registered.__all__
]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_next_step_after_resume_is_bit_identical(request, trainer, monkeypatch, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_semisup.trainers.wta.finetune import WTAFinetuneTrainer

    trainer_class = getattr(registered, trainer)
    fixture, dataset_name = dataset_of(trainer_class)
    run = request.getfixturevalue(fixture)
    dataset = dataset_name[len("Dataset") : len("Dataset") + 3]
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, run.env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_semisup_schedule", SCHEDULE)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # loaders in this process

    def build():
        return get_trainer_from_args(
            dataset, "3d_fullres", int(RESUME_FOLD), trainer, device=torch.device("cpu")
        )

    torch.manual_seed(0)
    first = build()
    if issubclass(trainer_class, WTAFinetuneTrainer):  # nnUNetv2_train ... -pretrained_weights PATH
        path, _ = request.getfixturevalue("wta_pretrained")
        monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "-pretrained_weights", str(path)])
        first.initialize()
        load_pretrained_weights(first.network, str(path))
    first.on_train_start()
    first.on_train_epoch_start()
    for _ in range(2):
        first.train_step(next(first.dataloader_train))
    checkpoint = tmp_path / "checkpoint_latest.pth"
    first.save_checkpoint(str(checkpoint))

    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "--c"])
    torch.manual_seed(1)  # other random initial weights: only the checkpoint can make them equal
    resumed = build()
    load_and_assert_everything_restored(resumed, checkpoint)
    resumed.on_train_start()  # as nnUNetv2_train --c: no fresh start (WTA fine-tuning: no second transfer)
    # (no on_train_epoch_start: the checkpoint was taken mid-epoch, with that epoch's learning rate)
    # both trainers get the same batches: the loaders are not part of the state
    batch = next(first.dataloader_train)
    if getattr(first, "uses_unlabeled_data", False):
        unlabeled = first.next_unlabeled_batch()
        first.next_unlabeled_batch = resumed.next_unlabeled_batch = lambda: unlabeled
    # WTA pretraining's centre-biased images of the labeled cases
    if getattr(first, "dataloader_labeled_images", None) is not None:
        images = next(first.dataloader_labeled_images)
        first.dataloader_labeled_images = resumed.dataloader_labeled_images = iter(lambda: images, None)
    # the same random numbers in both steps (augmented views, teacher noise, voxel samples)
    for t in (first, resumed):
        torch.manual_seed(2)
        t.train_step(batch)
    if hasattr(first, "global_step"):
        assert resumed.global_step == first.global_step == 3
    assert_same(module_states(first), module_states(resumed), trainer)
    if trainer == "WTAFinetuneTrainer":
        assert_finetuning_unfreezes_on_schedule(resumed)
