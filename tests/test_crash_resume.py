"""A training job killed with SIGKILL (mid-epoch, or in the middle of writing a checkpoint) resumes with
``nnUNetv2_train ... --c`` from its last complete checkpoint, for every trainer of the package: real
``nnUNetv2_train`` processes, killed for real."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    DATASETS,
    RESUME_FOLD,
    assert_finetuning_unfreezes_on_schedule,
    build_trainer_as_nnunet_train_does,
    load_and_assert_everything_restored,
    load_checkpoint_file,
)

pytestmark = pytest.mark.e2e

FOLD = RESUME_FOLD
EPOCHS, ITERS = 3, 3
SCHEDULE = f"epochs={EPOCHS},iters={ITERS},val_iters=1,save_every=1"
# with SEMISUP_TEST_ALL_KILLS=1 every trainer is killed; by default (CI time) the trainers added last whose resume
# has nothing process-specific are covered by test_exact_resume.py only (they passed the kill test too).
# WTAFinetuneTrainer is always killed: its resume (nnUNetv2_train --c without -pretrained_weights) must not
# transfer the pretrained encoder a second time, which only the real command line shows.
ALL_KILLS = os.environ.get("SEMISUP_TEST_ALL_KILLS") == "1"
_ONLY_WITH_ALL_KILLS = pytest.mark.skipif(
    not ALL_KILLS, reason="covered by test_exact_resume.py; SEMISUP_TEST_ALL_KILLS=1 kills it too"
)
TRAINERS = [
    "LabeledOnlyTrainer",
    "MeanTeacherTrainer",
    "SECLTrainer",
    "DTMLTrainer",
    "DualSubnetContrastTrainer",
    pytest.param("WTAPretrainTrainer", marks=_ONLY_WITH_ALL_KILLS),
    # -pretrained_weights (fixture wta_pretrained); --c must not transfer (scale by phi) a second time
    "WTAFinetuneTrainer",
    pytest.param("WTAMultiTaskTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("SparseMultiPlane2DTrainer", marks=_ONLY_WITH_ALL_KILLS),
    # the stage (random set / nearest-neighbour fit) follows the restored clock
    pytest.param("SelfTrainingMetaTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("FixMatchTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("UniMatchTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("BCPTrainer", marks=_ONLY_WITH_ALL_KILLS),
]
NEW_TRAINERS = [
    "WTAPretrainTrainer",
    "WTAFinetuneTrainer",
    "WTAMultiTaskTrainer",
    "SparseMultiPlane2DTrainer",
    "SelfTrainingMetaTrainer",
    "FixMatchTrainer",
    "UniMatchTrainer",
    "BCPTrainer",
]
# these trainers' processes load data in the main process (nnUNet_n_proc_DA=0), which saves CI time (every
# augmentation worker is a Python start-up); LabeledOnlyTrainer and MeanTeacherTrainer run with workers, so the
# kill of a process group with its workers is tested with them
NO_DA_WORKERS = {"SECLTrainer", "DTMLTrainer", "DualSubnetContrastTrainer", *NEW_TRAINERS}
# injected into the training process through PYTHONPATH: hang between writing a checkpoint and renaming it
SITECUSTOMIZE = """
import os, time
_marker = os.environ.get("SEMISUP_TEST_HANG_BEFORE_RENAME")
if _marker:
    _replace = os.replace
    def _hanging_replace(src, dst, *args, **kwargs):
        # the new checkpoint is completely written to its temporary file; hang before it replaces the old one
        if os.path.basename(str(dst)) == "checkpoint_latest.pth" and os.path.exists(dst):
            open(_marker, "w").close()
            time.sleep(3600)
        return _replace(src, dst, *args, **kwargs)
    os.replace = _hanging_replace
"""


def _train_process(
    run, trainer: str, fold: str, extra_env: dict | None = None, dataset: str = "501", extra: tuple = ()
) -> subprocess.Popen:
    """``nnUNetv2_train`` in its own process group (so the kill also takes its data-augmentation workers)."""
    env = dict(run.env, nnUNet_semisup_schedule=SCHEDULE, **(extra_env or {}))
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "nnUNetv2_train"), dataset, "3d_fullres", fold, "-tr", trainer,
         "-device", "cpu", *extra],
        env=env, cwd=run.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data-augmentation workers
    proc.wait(timeout=60)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}")
        if time.time() > deadline:
            _kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _global_step(checkpoint: dict) -> int | None:
    state = checkpoint.get("semisup_state")
    return None if state is None else state["global_step"]


def _finish_with_resume(
    run,
    trainer: str,
    folder: Path,
    resumed_from_epoch: int,
    dataset: str = "501",
    extra_env: dict | None = None,
) -> None:
    logs_before = set(folder.glob("training_log_*.txt"))
    run("nnUNetv2_train", dataset, "3d_fullres", FOLD, "-tr", trainer, "-device", "cpu", "--c",
        extra_env={"nnUNet_semisup_schedule": SCHEDULE, **(extra_env or {})})  # fmt: skip
    final = load_checkpoint_file(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == EPOCHS
    # the clock continued instead of restarting: EPOCHS * ITERS steps in all, whatever epoch the kill hit
    if _global_step(final) is not None:
        assert _global_step(final) == EPOCHS * ITERS
    (new_log,) = set(folder.glob("training_log_*.txt")) - logs_before
    epochs_run = [int(m) for m in re.findall(r": Epoch (\d+)\s*$", new_log.read_text(), flags=re.MULTILINE)]
    assert epochs_run == list(range(resumed_from_epoch, EPOCHS)), epochs_run
    assert not [p.name for p in folder.iterdir() if ".pth.tmp" in p.name]


def _assert_finetune_kept_the_transfer(folder: Path, wta_pretrained, phi_before_kill: float) -> None:
    """The resumed fine-tuning did not transfer again: same phi, frozen stages exactly pretrained * phi."""
    path, pretrained = wta_pretrained
    final = load_checkpoint_file(folder / "checkpoint_final.pth")
    state = final["semisup_state"]
    assert state["phi"] == phi_before_kill and state["pretrained_from"] == str(path)
    weights = final["network_weights"]
    stages = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.stages.")})
    frozen = [k for k in weights if k.startswith("encoder.stages.") and int(k.split(".")[2]) < stages[-2]]
    assert any(".conv." in k for k in frozen)
    for key in frozen:  # convolutions (also named all_modules.0) scaled by phi, normalization as transferred
        scaled = ".conv." in key or ".all_modules.0." in key
        expected = pretrained[key] * phi_before_kill if scaled else pretrained[key]
        torch.testing.assert_close(weights[key], expected, rtol=0, atol=0)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_sigkill_mid_epoch_resumes_from_last_checkpoint(
    request, tiny_dataset, trainer, monkeypatch, tmp_path
):
    fixture, dataset_name = DATASETS.get(trainer, ("tiny_dataset", "Dataset501_Tiny"))
    run = request.getfixturevalue(fixture)
    dataset = dataset_name[len("Dataset") : len("Dataset") + 3]
    extra = ()
    if trainer == "WTAFinetuneTrainer":
        pretrained = request.getfixturevalue("wta_pretrained")
        extra = ("-pretrained_weights", str(pretrained[0]))
    folder = run.results / dataset_name / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{FOLD}"
    shutil.rmtree(folder, ignore_errors=True)  # a run of another test on this fold would fake the checkpoint
    latest = folder / "checkpoint_latest.pth"
    workers = {"nnUNet_n_proc_DA": "0"} if trainer in NO_DA_WORKERS else {}
    proc = _train_process(run, trainer, FOLD, workers, dataset=dataset, extra=extra)
    # the first checkpoint_latest is written after epoch 0; kill while epoch 1 trains
    _wait_for(latest.is_file, proc, "the first checkpoint")
    _wait_for(
        lambda: any("Epoch 1" in p.read_text() for p in folder.glob("training_log_*.txt")), proc, "epoch 1"
    )
    _kill(proc)
    assert not (folder / "checkpoint_final.pth").exists()

    checkpoint = load_checkpoint_file(latest)  # complete and readable, whatever the kill interrupted
    epoch = checkpoint["current_epoch"]
    assert epoch in range(1, EPOCHS), epoch
    if trainer != "LabeledOnlyTrainer":
        assert _global_step(checkpoint) == epoch * ITERS
    resumed = build_trainer_as_nnunet_train_does(
        run, dataset, trainer, monkeypatch, tmp_path / "results", SCHEDULE
    )
    load_and_assert_everything_restored(resumed, latest)
    if trainer == "WTAFinetuneTrainer":
        assert_finetuning_unfreezes_on_schedule(resumed)
    _finish_with_resume(run, trainer, folder, resumed_from_epoch=epoch, dataset=dataset, extra_env=workers)
    if trainer == "WTAFinetuneTrainer":
        _assert_finetune_kept_the_transfer(folder, pretrained, checkpoint["semisup_state"]["phi"])
    if trainer == "SelfTrainingMetaTrainer":  # 9 iterations: stage 1 for the first 4, stage 2 at the end
        assert load_checkpoint_file(folder / "checkpoint_final.pth")["semisup_state"]["stage"] == 2


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tiny_dataset, tmp_path):
    run = tiny_dataset
    trainer = "MeanTeacherTrainer"
    folder = run.output_folder(trainer, "2")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "hanging"
    proc = _train_process(
        run, trainer, "2", {"PYTHONPATH": str(hooks), "SEMISUP_TEST_HANG_BEFORE_RENAME": str(marker)}
    )
    # epoch 0's checkpoint_latest exists; epoch 1's is fully written to a temporary file when the kill comes
    _wait_for(marker.exists, proc, "the second checkpoint write")
    _kill(proc)
    leftovers = [p for p in folder.iterdir() if ".pth.tmp" in p.name]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0

    checkpoint = load_checkpoint_file(folder / "checkpoint_latest.pth")
    assert checkpoint["current_epoch"] == 1 and _global_step(checkpoint) == ITERS
    logs_before = set(folder.glob("training_log_*.txt"))
    run.train(trainer, "2", SCHEDULE, "--c")
    final = load_checkpoint_file(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == EPOCHS and _global_step(final) == EPOCHS * ITERS
    assert not leftovers[0].exists(), "the killed write's temporary file was not cleaned up"
    (new_log,) = set(folder.glob("training_log_*.txt")) - logs_before
    assert "unfinished checkpoint write" in new_log.read_text()
